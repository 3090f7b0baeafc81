"""What lets a whole sampling run be one CUDA graph, checked on the CPU: the run draws nothing
and never reads a value back to the host; off a GPU, ``cuda_graph=True`` samples eagerly and
says so once. The capture and replay themselves are tested in tests/test_cuda.py."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from hart.common.errors import UserError
from hart.config import GeneratorConfig
from hart.model import HARTGenerator
from sampling import SamplingEngine, SamplingOptions
from sampling.seeds import make_generators
from tests.test_sampling import _models
from tests.test_t2i import _model as _text_model, _prompts
from tokenizer import HybridTokenizer, TokenizerConfig

CASES = {
    "class, ddim head": (dict(), SamplingOptions(cfg=1.5, top_k=10, top_p=0.9)),
    "class, smoothing": (dict(), SamplingOptions(cfg=2.0, top_k=5, smooth=True)),
    "class, iddpm head, no cfg": (dict(head=dict(width=64, depth=2, sampler="iddpm", learn_sigma=True)), SamplingOptions(cfg=0.0)),
    "class, map head, decoder metric": (dict(head=dict(width=64, depth=2, mix="map", metric="decoder",
                                                      prediction="v_prediction")), SamplingOptions(cfg=1.5)),
    "text": (None, SamplingOptions(cfg=1.5, top_p=0.8, head_cfg=None)),
}
# ops that read a value back to the host on a GPU (the meta device skips some of these checks:
# linalg's error check returns early on meta tensors)
SYNC_OPS = ("_local_scalar_dense", "_linalg_check_errors", "nonzero", "is_nonzero", "equal")


class HostCopies(TorchDispatchMode):
    """Records the ops that bring a host tensor (more than a scalar) to the device (a copy
    from pageable memory syncs the stream, which a CUDA graph capture refuses) and the ops
    that read a device value back (:data:`SYNC_OPS`)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
        name = str(func).split(".")[1]
        if any(t.device.type == "meta" for t in tensors) and name in SYNC_OPS:
            self.ops.append(str(func))
        if name in ("_to_copy", "copy_") and any(t.device.type == "cpu" for t in tensors) and any(
                t.device.type == "meta" for t in tensors):  # a host tensor copied in, whatever its size
            self.ops.append(str(func))
        if any(t.device.type == "meta" for t in tensors) and any(t.device.type == "cpu" and t.dim() > 0 for t in tensors):
            self.ops.append(str(func))
        return out


def _engine(kw):
    if kw is None:
        tok = HybridTokenizer(TokenizerConfig.from_name("tiny")).eval()
        return SamplingEngine(_text_model(), tok, kernels="torch")
    if kw.get("head", {}).get("mix") == "map":
        torch.manual_seed(0)
        tok = HybridTokenizer(TokenizerConfig.from_name("tiny")).eval()
        gen = HARTGenerator(GeneratorConfig.from_name("tiny", **kw)).eval()
        with torch.no_grad():  # a metric whose inverse matters
            gen.residual_metric.add_(0.3 * torch.randn_like(gen.residual_metric))
    else:
        tok, gen = _models(**kw)
    return SamplingEngine(gen, tok, kernels="torch")


@pytest.mark.parametrize("case", list(CASES))
def test_a_sampling_run_never_syncs_with_the_host(case):
    """The run on the meta device, where any read of a value (``.item()``, ``bool(t)``,
    ``.tolist()``, a mask index) raises, and no host tensor is copied in: what a CUDA graph
    cannot capture."""
    kw, opt = CASES[case]
    eng = _engine(kw)
    c = eng.config
    inputs = _prompts(c, B=2) if c.is_text else [1, 2]
    rows, B, opt = eng.prepare(inputs, make_generators([0, 1]), opt)
    noise = eng.draw_noise(make_generators([0, 1]), opt)
    eng.generator.to("meta")
    eng.tokenizer.to("meta")
    rows = tuple(t.to("meta") for t in rows) if c.is_text else rows.to("meta")
    noise = type(noise)(uniforms=[t.to("meta") for t in noise.uniforms],
                        gumbels=None if noise.gumbels is None else [t.to("meta") for t in noise.gumbels],
                        head=None if noise.head is None else noise.head.to("meta"))
    eng.setup_caches(rows, opt)
    with torch.no_grad(), HostCopies() as copies:
        ids, residual, f_hat, _, _ = eng.run(rows, noise, opt, B)
    assert copies.ops == []
    assert [tuple(t.shape) for t in ids] == [(2, pn * pn) for pn in c.patch_nums]
    n = eng.tokenizer.config.latent_size
    assert f_hat.shape == (2, c.z_channels, n, n) and f_hat.device.type == "meta"
    assert (residual is None) == (eng.generator.diffusion is None)


def test_the_run_uses_only_the_noise_drawn_before_it():
    """Two runs on the same pre-drawn noise give the same ids and residual; other noise, others."""
    kw, opt = CASES["class, ddim head"]
    eng = _engine(kw)
    rows, B, opt = eng.prepare([3, 1], make_generators([5, 6]), opt)
    a_noise, b_noise = (eng.draw_noise(make_generators(s), opt) for s in ([5, 6], [7, 8]))
    eng.setup_caches(rows, opt)
    with torch.no_grad():
        a = eng.run(rows, a_noise, opt, B)
        torch.manual_seed(123)  # the global RNG plays no part
        again = eng.run(rows, a_noise, opt, B)
        b = eng.run(rows, b_noise, opt, B)
    assert all(torch.equal(x, y) for x, y in zip(a[0], again[0])) and torch.equal(a[1], again[1])
    assert not all(torch.equal(x, y) for x, y in zip(a[0], b[0]))
    sampled = eng.sample([3, 1], make_generators([5, 6]), opt, decode=False)  # the same draw order
    assert all(torch.equal(x, y) for x, y in zip(a[0], sampled.ids)) and torch.equal(a[1], sampled.residual)


def test_smoothing_noise_drawn_as_the_run_goes_is_the_noise_drawn_ahead():
    """An eager run with smoothing draws each scale's Gumbel noise when it gets there (one
    scale's V-wide noise in memory): the same numbers, in the same order, as drawn ahead."""
    kw, opt = CASES["class, smoothing"]
    eng = _engine(kw)
    rows, B, opt = eng.prepare([3, 1], make_generators([5, 6]), opt)
    ahead = eng.draw_noise(make_generators([5, 6]), opt)
    lazy = eng.draw_noise(make_generators([5, 6]), opt, ahead=False)
    assert lazy.uniforms == [] and lazy.gumbels is None
    for k in range(len(eng.config.patch_nums)):
        assert all(torch.equal(x, y) for x, y in zip(ahead.scale(k), lazy.scale(k)))
    assert torch.equal(ahead.head_noise(), lazy.head_noise())
    eng.setup_caches(rows, opt)
    with torch.no_grad():
        run = eng.run(rows, eng.draw_noise(make_generators([5, 6]), opt), opt, B)
    sampled = eng.sample([3, 1], make_generators([5, 6]), opt, decode=False)
    assert all(torch.equal(x, y) for x, y in zip(run[0], sampled.ids)) and torch.equal(run[1], sampled.residual)


def test_cuda_graph_off_a_gpu_samples_eagerly_and_says_why_once(capsys):
    kw, opt = CASES["class, ddim head"]
    tok, gen = _models(**kw)
    plain = SamplingEngine(gen, tok).sample([1, 4], make_generators([0, 1]), opt)
    graphed = SamplingEngine(gen, tok, cuda_graph=True)
    for _ in range(2):
        out = graphed.sample([1, 4], make_generators([0, 1]), opt)
        assert all(torch.equal(x, y) for x, y in zip(out.ids, plain.ids))
        assert torch.equal(out.images, plain.images)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["note: sampling eagerly, not as one CUDA graph: CUDA graphs need a CUDA device"]
    assert graphed.graphs.replays == 0
    with pytest.raises(UserError, match="--compile and --cuda-graph do not go together"):
        SamplingEngine(gen, tok, compile=True, cuda_graph=True)


def test_generate_cuda_graph_flag_off_a_gpu(demo_model_dir, tmp_path, capsys):
    """``hart generate --cuda-graph`` on the CPU: the same PNG as without it, and the one line."""
    from sampling.generate import main

    argv = ["--model", str(demo_model_dir), "--class", "1", "--num", "2", "--batch-size", "2"]
    main(argv + ["--out", str(tmp_path / "plain.png")])
    capsys.readouterr()
    main(argv + ["--cuda-graph", "--out", str(tmp_path / "graph.png")])
    assert "not as one CUDA graph: CUDA graphs need a CUDA device" in capsys.readouterr().err
    assert (tmp_path / "plain.png").read_bytes() == (tmp_path / "graph.png").read_bytes()
