"""The demo under load: the batcher (pure Python), merged requests in process, and concurrent
gradio_client requests against a served app (each gets its own seeds' images; a full queue
refuses at once). Tiny random model; the gradio parts skip without gradio."""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import torch

from demo.batching import Batcher

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported, as demo.app does

from tests.conftest import DEMO_CLASS_NAMES as NAMES  # noqa: E402
R = 16


# ----------------------------------------------------------------------------- the batcher


class Gated:
    """A run_batch that records its batches and holds the first one until ``open()``."""

    def __init__(self):
        self.batches, self.gate, self.started = [], threading.Event(), threading.Event()

    def __call__(self, items):
        self.batches.append(list(items))
        self.started.set()
        self.gate.wait(10)
        return [f"done {i}" for i in items]


def _submit_all(b: Batcher, jobs, results, taken):
    """Submit ``jobs`` [(key, item, size)] from one thread each, in order, each once the
    previous one is waiting or taken into a batch (``taken``: the batches run so far)."""
    threads = []
    for key, item, size in jobs:
        def go(key=key, item=item, size=size):
            try:
                results[item] = b.submit(key, item, size)
            except Exception as e:  # noqa: BLE001 - the test inspects it
                results[item] = e

        t = threading.Thread(target=go)
        t.start()
        threads.append(t)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and item not in results and not (
                any(j.item == item for j in list(b._pending)) or any(item in x for x in list(taken))):
            time.sleep(0.001)
    return threads


def test_batcher_merges_waiting_requests_by_key_oldest_first():
    run = Gated()
    b = Batcher(run, max_requests=3, max_images=100)
    res = {}
    first = _submit_all(b, [("x", "a", 1)], res, run.batches)
    assert run.started.wait(5)  # "a" runs alone: nothing else was waiting
    later = [("x", "b", 1), ("y", "c", 1), ("x", "d", 1), ("x", "e", 1), ("x", "f", 1)]
    rest = _submit_all(b, later, res, run.batches)
    run.gate.set()
    for t in first + rest:
        t.join(10)
    # then the oldest waiting ("b", key x) with the next x's up to 3 requests; "c" (key y) runs
    # apart, before the x that did not fit, because it is older
    assert run.batches == [["a"], ["b", "d", "e"], ["c"], ["f"]]
    assert res["d"][0] == "done d"
    info = res["d"][1]
    assert (info.requests, info.images) == (3, 3) and info.waited >= 0 and info.ran >= 0
    assert res["a"][1].requests == 1 and b.batches == 4


def test_batcher_respects_max_images_and_runs_an_oversized_request_alone():
    run = Gated()
    b = Batcher(run, max_requests=8, max_images=10)
    res = {}
    first = _submit_all(b, [("k", "big", 25)], res, run.batches)  # larger than max_images: runs, alone
    assert run.started.wait(5)
    rest = _submit_all(b, [("k", "p", 4), ("k", "q", 4), ("k", "r", 4), ("k", "s", 2)], res, run.batches)
    run.gate.set()
    for t in first + rest:
        t.join(10)
    assert run.batches == [["big"], ["p", "q"], ["r", "s"]]
    assert res["q"][1].images == 8 and res["s"][1].images == 6


def test_batcher_error_reaches_every_request_of_its_batch_only():
    calls = []

    def run(items):
        calls.append(items)
        if "bad" in items:
            raise ValueError("boom")
        return [i.upper() for i in items]

    b = Batcher(run, max_requests=4, max_images=10, wait=0.3)
    res = {}
    threads = _submit_all(b, [("k", "ok1", 1), ("k", "bad", 1), ("j", "other", 1)], res, calls)
    for t in threads:
        t.join(10)
    assert isinstance(res["ok1"], ValueError) and isinstance(res["bad"], ValueError)
    assert res["other"][0] == "OTHER"  # another key's batch is unaffected
    assert b.submit("k", "later", 1)[0] == "LATER"  # the batcher is still usable
    assert not b._busy and not b._pending


def test_batcher_wait_collects_requests_that_arrive_shortly_after():
    seen = []
    b = Batcher(lambda items: seen.append(list(items)) or list(items), max_requests=4, max_images=10, wait=1.0)
    res = {}
    t = threading.Thread(target=lambda: res.setdefault("a", b.submit("k", "a")))
    t.start()
    time.sleep(0.2)
    res["b"] = b.submit("k", "b")
    t.join(10)
    assert seen == [["a", "b"]] and res["b"][1].requests == 2


def test_batcher_rejects_bad_limits():
    with pytest.raises(ValueError):
        Batcher(lambda x: x, max_requests=0)
    with pytest.raises(ValueError):
        Batcher(lambda x: x, wait=-1)


# ----------------------------------------------------------------------------- the demo model


@pytest.fixture(scope="module")
def model_dir(demo_model_dir):
    return demo_model_dir


@pytest.fixture(scope="module")
def pipeline(model_dir):
    pytest.importorskip("gradio")
    from demo.model import load_pipeline

    return load_pipeline(model_dir)


# (class, cfg, top-k, top-p, temperature, seed, images): three share settings, two others do
REQUESTS = [("shoe", 1.5, 64, 0.96, 1.0, 3, 3), ("bag", 1.5, 64, 0.96, 1.0, 40, 2),
            ("shirt", 2.0, 32, 0.9, 1.0, 5, 2), ("shoe", 1.5, 64, 0.96, 1.0, 100, 1),
            ("bag", 2.0, 32, 0.9, 1.0, 7, 4)]


def _alone(pipeline):
    """Each request run by itself, one at a time."""
    from demo.model import DemoModel

    model = DemoModel(pipeline, max_batch_size=1)
    try:
        return [model.generate(*r) for r in REQUESTS]
    finally:
        model.deadline.remove()


def test_batched_sampling_draws_the_same_ids_as_separate_sampling(pipeline):
    """The engine draws every image from its own seeded generator: exactly the same token ids
    alone or in a batch; pixels agree to the float rounding of batched convolutions."""
    a = pipeline.sample([1, 1, 2], seed=[3, 4, 9], cfg=1.5, top_k=64, top_p=0.96, previews=True)
    parts = [pipeline.sample([1, 1], seed=[3, 4], cfg=1.5, top_k=64, top_p=0.96, previews=True),
             pipeline.sample([2], seed=[9], cfg=1.5, top_k=64, top_p=0.96, previews=True)]
    for k in range(len(a.ids)):
        assert torch.equal(a.ids[k], torch.cat([p.ids[k] for p in parts]))
    torch.testing.assert_close(a.images, torch.cat([p.images for p in parts]), atol=1e-4, rtol=0)
    for k in range(len(a.previews)):
        torch.testing.assert_close(a.previews[k], torch.cat([p.previews[k] for p in parts]), atol=1e-4, rtol=0)


def _pixels(im) -> np.ndarray:
    return np.asarray(im.convert("RGB"), dtype=np.int16)


def _same_image(a, b) -> bool:
    """Equal up to one uint8 level (float rounding of the batched decoder at a .5 boundary);
    another seed or class differs by far more."""
    return a.size == b.size and int(np.abs(_pixels(a) - _pixels(b)).max()) <= 1


def test_concurrent_requests_merge_by_settings_and_each_gets_its_own_images(pipeline):
    from demo.model import DemoModel

    reference = _alone(pipeline)
    model = DemoModel(pipeline, max_batch_size=8, batch_wait=1.0)
    results = [None] * len(REQUESTS)

    def go(i):
        results[i] = model.generate(*REQUESTS[i])

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(REQUESTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    model.deadline.remove()
    assert model.batcher.batches == 2  # one batch per setting
    for req, got, ref in zip(REQUESTS, results, reference):
        same = sum(r[1:5] == req[1:5] for r in REQUESTS)
        assert got.batch.requests == same and got.batch.images == sum(r[6] for r in REQUESTS if r[1:5] == req[1:5])
        assert got.captions == [f"{req[0]}, seed {req[5] + i}" for i in range(req[6])] == ref.captions
        assert len(got.images) == len(ref.images) and all(map(_same_image, got.images, ref.images))
        assert _same_image(got.strip, ref.strip)  # its own strip: its own first rows
        assert f"sampled with {same - 1} other request" in got.timing


def test_a_stopped_batch_tells_each_of_its_requests(pipeline):
    from demo.model import DemoModel
    from hart.common.errors import UserError

    model = DemoModel(pipeline, max_batch_size=4, batch_wait=1.0, time_limit=0.5)
    model.pipeline.sample = lambda *a, **k: (time.sleep(1.0), model.deadline.check())  # too slow
    errors = []

    def go(r):
        try:
            model.generate(*r)
        except UserError as e:
            errors.append(str(e))

    try:
        threads = [threading.Thread(target=go, args=(REQUESTS[i],)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        del model.pipeline.sample  # the instance attribute; the class's method again
        model.deadline.remove()
    assert errors == ["stopped: this request (sampled together with 1 other) ran longer than the 0.5 s limit; "
                      "ask for fewer images"] * 2


# ----------------------------------------------------------------------------- over HTTP


@pytest.fixture
def served(pipeline):
    """Launch ``build_demo(pipeline, **kw)`` on a free loopback port in this process."""
    gradio_client = pytest.importorskip("gradio_client")
    from demo.app import build_demo, launch_options
    from scripts.screenshot import free_port

    apps = []

    def serve(**kw):
        blocks = build_demo(pipeline, **kw)
        port = free_port()
        opts = {**launch_options(), "quiet": True}
        blocks.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, **opts)
        apps.append(blocks)
        url = f"http://127.0.0.1:{port}/"
        return blocks, [gradio_client.Client(url, verbose=False, analytics_enabled=False) for _ in range(len(REQUESTS))]

    yield serve
    for blocks in apps:
        blocks.demo_model.deadline.remove()
        blocks.close()


def _fire(clients, requests):
    """Every request at once, one client each; returns (results or exceptions) in order."""
    out = [None] * len(requests)
    barrier = threading.Barrier(len(requests))

    def go(i):
        barrier.wait()
        try:
            out[i] = clients[i].predict(*requests[i], api_name="/generate")
        except Exception as e:  # noqa: BLE001 - the test inspects it
            out[i] = e

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a request hung"
    return out


def test_gradio_client_concurrent_requests_get_their_own_seeds_images(pipeline, served):
    from PIL import Image

    reference = _alone(pipeline)
    blocks, clients = served(max_batch_size=4, batch_wait=1.0, max_images=8)
    out = _fire(clients, REQUESTS)
    assert blocks.demo_model.batcher.batches == 2  # merged: one batch per setting
    for req, got, ref in zip(REQUESTS, out, reference):
        assert not isinstance(got, Exception), got
        gallery, _strip, timing = got
        assert [g["caption"] for g in gallery] == ref.captions
        for g, want in zip(gallery, ref.images):
            with Image.open(g["image"]) as im:
                assert _same_image(im, want)
        same = sum(r[1:5] == req[1:5] for r in REQUESTS)
        assert f"sampled with {same - 1} other request" in timing


def test_full_queue_refuses_at_once_with_a_message(pipeline, served):
    blocks, clients = served(max_batch_size=1, queue_size=1)
    model = blocks.demo_model
    entered, gate, real = threading.Event(), threading.Event(), model.sample_batch

    def held(jobs):  # the sampler is busy until the test opens the gate
        entered.set()
        gate.wait(30)
        return real(jobs)

    model.batcher.run_batch = held
    out = [None] * 3

    def call(i):
        try:
            out[i] = clients[i].predict(*REQUESTS[0], api_name="/generate")
        except Exception as e:  # noqa: BLE001 - the test inspects it
            out[i] = e

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    threads[0].start()
    assert entered.wait(30)  # request 0 is being sampled
    t0 = time.monotonic()
    for t in threads[1:]:
        t.start()
    deadline = time.monotonic() + 30
    while not any(isinstance(r, Exception) for r in out) and time.monotonic() < deadline:
        time.sleep(0.05)
    refused_after = time.monotonic() - t0
    gate.set()
    for t in threads:
        t.join(60)
    refused = [r for r in out if isinstance(r, Exception)]
    # one waits in the queue of size 1, the other is refused at once with gradio's message
    assert len(refused) == 1 and "Queue is full" in str(refused[0]) and refused_after < 15
    assert sum(isinstance(r, tuple) for r in out) == 2
