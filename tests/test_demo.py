"""Gradio demo: the app in a subprocess driven by gradio_client, bad input, start-up errors,
launch settings, and one click in headless Chromium. Tiny random model; skips without gradio."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported, as demo.app does
pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

import gradio as gr  # noqa: E402
from PIL import Image  # noqa: E402

from hart.common.errors import UserError  # noqa: E402
from scripts.screenshot import available, capture, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
from tests.conftest import DEMO_CLASS_NAMES as NAMES  # noqa: E402
R = 16  # tiny tokenizer resolution
GOOD = dict(subject="shoe", cfg=1.5, top_k=64, top_p=0.96, temperature=1.0, seed=3, num_images=3)


@pytest.fixture(scope="module")
def model_dir(demo_model_dir):
    return demo_model_dir


@pytest.fixture(scope="module")
def pipeline(model_dir):
    from demo.model import load_pipeline

    return load_pipeline(model_dir)


def _env(tmp: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", GRADIO_TEMP_DIR=str(tmp / "gradio_tmp"), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """``python -m demo`` on a free port; yields its URL."""
    import httpx

    tmp = tmp_path_factory.mktemp("demo_server")
    port = free_port()
    log = open(tmp / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "demo", "--model", str(model_dir), "--port", str(port), "--max-images", "8"],
        cwd=ROOT, env=_env(tmp), stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"demo exited with {proc.returncode}:\n{(tmp / 'server.log').read_text()}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"demo did not start in 60 s:\n{(tmp / 'server.log').read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        text = (tmp / "server.log").read_text()
        assert "Traceback" not in text, text  # bad input never produced a stack trace


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    return gradio_client.Client(server, verbose=False, download_files=str(tmp_path_factory.mktemp("dl")),
                                analytics_enabled=False)


def _call(client, **kw):
    args = {**GOOD, **kw}
    return client.predict(*args.values(), api_name="/generate")


# ----------------------------------------------------------------------------- the app over HTTP

def test_api_returns_images_of_the_model_resolution(client):
    gallery, strip, timing = _call(client)
    assert [g["caption"] for g in gallery] == ["shoe, seed 3", "shoe, seed 4", "shoe, seed 5"]
    for g in gallery:
        with Image.open(g["image"]) as im:
            assert im.size == (R, R)
    with Image.open(strip) as im:  # 4 scales + the last one with the residual, 3 rows, upscaled
        w, h = im.size
        assert w > 5 * R and h > 3 * R
    assert "3 images of 16x16 in" in timing


def test_api_same_seed_same_images(client):
    a, _, _ = _call(client, num_images=1, seed=11)
    b, _, _ = _call(client, num_images=1, seed=11)
    with Image.open(a[0]["image"]) as x, Image.open(b[0]["image"]) as y:
        assert x.tobytes() == y.tobytes()


@pytest.mark.parametrize("kw, message", [
    (dict(subject="sock"), "unknown class 'sock'"),
    (dict(cfg=-1), "CFG must be >= 0"),
    (dict(cfg=1000), "CFG must be <= 20"),
    (dict(top_k=-5), "top-k must be >= 0"),
    (dict(top_p=0), "top-p must be > 0"),
    (dict(top_p=1.5), "top-p must be <= 1"),
    (dict(temperature=0), "temperature must be > 0"),
    (dict(seed=-1), "seed must be >= 0"),
    (dict(seed=1.5), "seed must be a whole number"),
    (dict(seed=None), "seed is missing"),
    (dict(num_images=0), "number of images must be >= 1"),
    (dict(num_images=9), "number of images must be <= 8"),
])
def test_api_bad_input_gets_a_readable_message(client, kw, message):
    with pytest.raises(gradio_client.exceptions.AppError, match=message) as e:
        _call(client, **kw)
    assert "Traceback" not in str(e.value)


def test_no_file_access_for_visitors(server):
    import httpx

    for path in ("gradio_api/file=/etc/passwd", "file=/etc/passwd"):
        r = httpx.get(server + path, timeout=5)
        assert r.status_code >= 400 and "root:" not in r.text


# ----------------------------------------------------------------------------- in process

def test_import_demo_does_not_import_gradio():
    # demo.model (the requests, the batches, the strip) works without gradio too
    code = ("import sys, demo, demo.model; assert callable(demo.build_demo) and demo.model.DemoModel; "
            "print('gradio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"), check=True)
    assert out.stdout.strip() == "False"


def test_build_demo_returns_unlaunched_blocks_with_a_queue(pipeline):
    import demo

    blocks = demo.build_demo(pipeline)
    assert isinstance(blocks, gr.Blocks) and not blocks.is_running
    assert blocks._queue.default_concurrency_limit == 1 and blocks._queue.max_size == 16
    fn = next(f for f in blocks.fns.values() if f.api_name == "generate")
    # 8 requests per sampler batch (the default); twice that let in, so the next batch gathers
    assert fn.concurrency_limit == 16 and not fn.batch
    assert (blocks.demo_model.batcher.max_requests, blocks.demo_model.batcher.max_images) == (8, 64)
    one = demo.build_demo(pipeline, max_batch_size=1, queue_size=4)
    fn1 = next(f for f in one.fns.values() if f.api_name == "generate")
    assert fn1.concurrency_limit == 1 and one._queue.max_size == 4  # one request at a time
    for b in (blocks, one):
        b.demo_model.deadline.remove()
    # controls only: nothing a visitor can use to name a file
    assert {type(c).__name__ for c in fn.inputs} <= {"Dropdown", "Slider", "Number"}
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"


def test_strip_columns_and_time_limit(pipeline):
    from demo.model import DemoModel
    from hart.common.errors import UserError

    model = DemoModel(pipeline, time_limit=60)
    assert model.strip_labels() == ["1x1", "2x2", "3x3", "4x4 ids", "4x4 +res"]
    r = model.generate(*GOOD.values())
    assert [im.size for im in r.images] == [(R, R)] * 3
    # a clock that advances 1 s per reading: the deadline (limit 3.5 s) passes mid-sampling,
    # after the per-scale check has let scales 1 and 2 through
    ticks = iter(range(10**6))
    model.deadline.clock = lambda: float(next(ticks))
    model.time_limit = 3.5
    with pytest.raises(UserError, match="stopped: this request ran longer than the 3.5 s limit"):
        model.generate(*GOOD.values())
    assert 4 <= next(ticks) < 10  # stopped at a hook inside the sampler, not before or after it
    model.deadline.clock = time.monotonic
    model.time_limit = 60  # the pipeline is unharmed by the stopped request
    assert model.generate(*GOOD.values()).images[0].tobytes() == r.images[0].tobytes()
    model.deadline.remove()


def test_the_strip_decodes_only_its_rows_and_bounds_its_cells(pipeline):
    from demo.model import CELL_MAX, STRIP_MAX_ROWS, DemoModel

    model = DemoModel(pipeline, time_limit=60)
    seen = []  # rows of every decoder call
    hook = pipeline.tokenizer.decoder.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0]))
    try:
        r = model.generate(*dict(GOOD, num_images=8).values())
    finally:
        hook.remove()
        model.deadline.remove()
    K = len(model.patch_nums)
    # the 8 images once, then the strip's 4 rows after each scale but the last, and the last
    # scale without the residual: not 8 rows per scale
    assert sorted(seen) == sorted([8] + [STRIP_MAX_ROWS] * K)
    assert r.strip.size[1] == 18 + 4 + STRIP_MAX_ROWS * (model.cell + 4)
    for res, cell in ((16, 96), (100, 100), (128, 128), (256, CELL_MAX), (1024, CELL_MAX)):
        model.resolution = res
        assert model.cell == cell
    model.resolution = 256  # larger images are area-averaged to the cell on the device
    x = torch.rand(2, 3, 256, 256)
    torch.testing.assert_close(model._cell(x), torch.nn.functional.avg_pool2d(x, 2))


def test_sampling_preset_sets_sliders_and_the_fixed_settings(pipeline):
    from demo.model import DemoModel

    model = DemoModel(pipeline, sampling="hart")
    assert model.defaults.cfg == 4.5  # the sliders start at the preset
    _, options, _, _ = model.parse(*GOOD.values())
    # what the sliders do not show comes from the preset: HART's smoothing, top-k schedule, ratio
    assert options["smooth"] and options["last_scale_ratio"] == "previous" and options["top_k_schedule"] == ((7, 300),)
    assert options["cfg"] == GOOD["cfg"]  # the sliders win
    plain = DemoModel(pipeline).parse(*GOOD.values())[1]
    assert not plain["smooth"] and plain["last_scale_ratio"] == "last"


def test_launch_binds_localhost_no_share_by_default(model_dir, monkeypatch, capsys):
    from demo import app

    seen = []

    def launch(self, **kw):
        seen.append(kw)
        self.local_url, self.share_url = f"http://{kw['server_name']}:{kw['server_port']}/", None

    monkeypatch.setattr(gr.Blocks, "launch", launch)
    monkeypatch.setattr(gr.Blocks, "block_thread", lambda self: None)
    assert app.main(["--model", str(model_dir)]) == 0
    # gradio's banner (its launch() arguments) is quiet; the line printed names the address
    assert seen[0]["quiet"] and "serving on http://127.0.0.1:7860/ (Ctrl-C stops it)" in capsys.readouterr().out
    assert app.main(["--model", str(model_dir), "--host", "0.0.0.0", "--port", "8123", "--share"]) == 0
    assert (seen[0]["server_name"], seen[0]["server_port"], seen[0]["share"]) == ("127.0.0.1", 7860, False)
    assert (seen[1]["server_name"], seen[1]["server_port"], seen[1]["share"]) == ("0.0.0.0", 8123, True)


def test_an_address_that_cannot_be_served_is_one_line_naming_the_flag():
    import socket

    from demo.app import check_bindable

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UserError, match=f"port {port} on 127.0.0.1 is in use: pick another with --port"):
            check_bindable("127.0.0.1", port)
    with pytest.raises(UserError, match="--host 999.1.1.1: no such address or host name"):
        check_bindable("999.1.1.1", 7860)
    with pytest.raises(UserError, match="--host 192.0.2.1 is not an address of this machine"):
        check_bindable("192.0.2.1", 7860)  # TEST-NET-1: never a local address
    check_bindable("127.0.0.1", free_port())  # and a free one is left free


def test_control_values_messages_read_as_written(pipeline):
    from demo.model import DemoModel

    model = DemoModel(pipeline, max_images=4)
    model.deadline.remove()
    name = model.names[0]
    for seed, message in ((2**70, "seed must be <= 2147483647, got"), (True, "seed must be a number, got True")):
        with pytest.raises(UserError, match=message):
            model.parse(name, 1.5, 0, 1.0, 1.0, seed, 1)


@pytest.mark.parametrize("argv, message", [
    (["--max-batch-size", "0"], "--max-batch-size must be in 1..16"),
    (["--max-batch-size", "17"], "--max-batch-size must be in 1..16"),
    (["--max-batch-images", "0"], "--max-batch-images must be >= 1"),
    (["--batch-wait", "-1"], "--batch-wait must be in 0..10 seconds"),
    (["--queue-size", "0"], "--queue-size"),
    (["--sampling", "nope"], "unknown sampling preset 'nope'"),
])
def test_bad_batching_flags_are_one_line(model_dir, capsys, argv, message):
    from demo import app

    with pytest.raises(SystemExit) as e:
        app.main(["--model", str(model_dir), *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.count("\n") == 1


@pytest.mark.parametrize("broken", ["missing", "no_generator", "bad_json", "bad_weights"])
def test_model_folder_that_fails_to_load_is_one_line(model_dir, tmp_path, capsys, broken):
    import shutil

    from demo import app

    d = tmp_path / "m"
    if broken != "missing":
        shutil.copytree(model_dir, d)
    if broken == "no_generator":
        shutil.rmtree(d / "generator")
    elif broken == "bad_json":
        (d / "generator" / "config.json").write_text("{ not json")
    elif broken == "bad_weights":
        (d / "tokenizer" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(SystemExit) as e:
        app.main(["--model", str(d)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


# ----------------------------------------------------------------------------- headless Chromium

@pytest.mark.skipif(available() is not None, reason=str(available()))
def test_chromium_clicks_generate_and_saves_a_screenshot(server, tmp_path):
    out = tmp_path / "demo.png"
    info = capture(server, out, timeout=60)
    assert info["images"] == 8  # the default number of images (= --max-images 8 here)
    assert "images of 16x16 in" in info["timing"]
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width == 1280 and im.height > 600
