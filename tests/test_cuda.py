"""The GPU path: cache parity in bf16, the Triton kernels compiled for real, sampling, CUDA
graphs, FlexAttention, one training step of each stage, resume, and torchrun with NCCL.

Every test here needs a CUDA GPU and is skipped without one (CI has none). On a GPU machine,
run the suite with the kernels compiled rather than interpreted:

    TRITON_INTERPRET=0 python -m pytest tests/test_cuda.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hart import kernels
from tests.test_generator import _cached_logits, _inputs as _cpu_inputs, _model as _cpu_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_compiled_triton = pytest.mark.skipif(
    not kernels.triton_available() or kernels.interpreting(),
    reason="needs Triton compiling for the GPU (TRITON_INTERPRET=0)")
ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda")


def _model(seed=0, **kw):
    return _cpu_model(seed, **kw).to(CUDA)


def _inputs(c, B=3, seed=1):
    return tuple(t.to(CUDA) for t in _cpu_inputs(c, B, seed))


# ----------------------------------------------------------------------------- cache parity

@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_compiled_triton)])
def test_cached_step_matches_teacher_forcing_fp32_cuda(backend):
    m = _model()
    labels, teacher = _inputs(m.config)
    with torch.no_grad():
        full = m(labels, teacher).logits
        cached = _cached_logits(m, labels, teacher, backend, torch.float32)
    torch.testing.assert_close(cached, full, atol=1e-3, rtol=0)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_compiled_triton)])
def test_cached_step_matches_teacher_forcing_bf16_cuda(backend):
    """As the CPU test: the bf16 cache's error against fp32 is of the dense bf16 path's own
    size (twice it plus 1% of the logit range), and within 5% of the range."""
    m = _model()
    labels, teacher = _inputs(m.config)
    with torch.no_grad():
        ref = m(labels, teacher).logits
        with torch.autocast("cuda", dtype=torch.bfloat16):
            dense = m(labels, teacher).logits.float()
            cached = _cached_logits(m, labels, teacher, backend, torch.bfloat16)
    span = (ref.max() - ref.min()).item()
    err_dense = (dense - ref).abs().max().item()
    err_cached = (cached - ref).abs().max().item()
    assert err_cached <= 2 * err_dense + 0.01 * span, (err_cached, err_dense, span)
    assert err_cached <= 0.05 * span


# ----------------------------------------------------------------------------- compiled kernels

@needs_compiled_triton
@pytest.mark.parametrize("shape", [(2, 1, 1024), (128, 256, 1024), (6, 5, 100)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_adaln_layernorm_compiled_parity(shape, dtype):
    B, T, C = shape
    g = torch.Generator(device=CUDA).manual_seed(B * T + C)
    x = torch.randn(B, T, C, device=CUDA, generator=g).mul(3).add(1).to(dtype)
    mods = torch.randn(B, 1, 2, C, device=CUDA, generator=g).to(dtype)
    scale, shift = mods.unbind(2)
    assert kernels.select_backend("auto", x, scale, shift) == "triton"
    got = kernels.adaln_layernorm(x, scale, shift, 1e-6, backend="triton")
    want = kernels.adaln_layernorm_ref(x.float(), scale.float(), shift.float(), 1e-6).to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)


@needs_compiled_triton
@pytest.mark.parametrize("V, top_k, top_p, cfg", [(64, 0, 1.0, 0.0), (64, 5, 1.0, 1.5), (4096, 900, 0.96, 1.5),
                                                   (4096, 0, 0.7, 3.0), (4097, 12, 0.9, 1.0)])
def test_cfg_sample_compiled_parity(V, top_k, top_p, cfg):
    N = 256
    g = torch.Generator(device=CUDA).manual_seed(V + top_k)
    logits = (2 * torch.randn(2 * N, V, device=CUDA, generator=g)).to(torch.bfloat16)
    u = torch.rand(N, device=CUDA, generator=g)
    cond, uncond = logits[:N], (logits[N:] if cfg > 0 else None)
    got = kernels.cfg_sample(cond, uncond, u, cfg, 0.8, top_k, top_p, backend="triton")
    want = kernels.cfg_sample_ref(cond, uncond, u, cfg, 0.8, top_k, top_p)
    assert got.dtype == torch.int64 and got.is_cuda
    assert torch.equal(got, want), (got != want).sum().item()


# ----------------------------------------------------------------------------- sampling

@pytest.fixture(scope="module")
def tiny_pair():
    from tokenizer import HybridTokenizer, TokenizerConfig

    torch.manual_seed(0)
    tok = HybridTokenizer(TokenizerConfig.from_name("tiny")).eval()
    return tok, _model().cpu()


def _engine(tiny_pair, device, **kw):
    from sampling import SamplingEngine

    tok, gen = tiny_pair
    return SamplingEngine(gen.to(device), tok.to(device), **kw)


def test_sampling_on_cuda_matches_the_cpu_and_is_batch_independent(tiny_pair):
    from sampling import SamplingOptions
    from sampling.seeds import make_generators

    greedy = SamplingOptions(cfg=1.5, top_k=1)  # argmax draws: the CPU and GPU agree unless logits tie
    cpu = _engine(tiny_pair, "cpu").sample([1, 4], make_generators([0, 1]), greedy)
    gpu = _engine(tiny_pair, CUDA).sample([1, 4], make_generators([0, 1]), greedy)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu.ids, gpu.ids))
    # the head's draws come from each image's CPU generator: the same residual up to float error
    torch.testing.assert_close(gpu.residual.cpu(), cpu.residual, atol=1e-3, rtol=1e-3)
    opts = SamplingOptions(cfg=2.0, top_k=10, top_p=0.9)
    eng = _engine(tiny_pair, CUDA)
    both = eng.sample([3, 5], make_generators([7, 8]), opts)
    again = eng.sample([3, 5], make_generators([7, 8]), opts)
    alone = eng.sample([5], make_generators([8]), opts)
    assert all(torch.equal(a, b) for a, b in zip(both.ids, again.ids))
    assert all(torch.equal(a[1:], b) for a, b in zip(both.ids, alone.ids))
    assert both.images.is_cuda and torch.isfinite(both.images).all()


@needs_compiled_triton
def test_triton_kernels_give_the_reference_ids_on_cuda(tiny_pair):
    from sampling import SamplingOptions
    from sampling.seeds import make_generators

    opts = SamplingOptions(cfg=2.0, top_k=10, top_p=0.9)
    a = _engine(tiny_pair, CUDA, kernels="triton").sample([6, 2], make_generators([3, 4]), opts, return_logits=True)
    b = _engine(tiny_pair, CUDA, kernels="torch").sample([6, 2], make_generators([3, 4]), opts, return_logits=True)
    for x, y in zip(a.logits, b.logits):
        torch.testing.assert_close(x, y, atol=1e-3, rtol=0)
    assert all(torch.equal(x, y) for x, y in zip(a.ids, b.ids))


def test_bf16_sampling_on_cuda(tiny_pair):
    from sampling import SamplingOptions
    from sampling.seeds import make_generators

    out = _engine(tiny_pair, CUDA, dtype="bf16").sample([0, 1, 2], make_generators([0, 1, 2]), SamplingOptions())
    assert out.images.dtype == torch.float32 and torch.isfinite(out.images).all()
    assert out.images.min() >= -1.01 and out.images.max() <= 1.01


def test_compiled_step_with_cuda_graphs_matches_eager(tiny_pair):
    """--compile on a GPU: inductor with CUDA graphs (reduce-overhead) over the static cache."""
    from sampling import SamplingOptions
    from sampling.seeds import make_generators

    greedy = SamplingOptions(cfg=1.5, top_k=1)
    eager = _engine(tiny_pair, CUDA, kernels="torch").sample([1, 2], make_generators([0, 1]), greedy,
                                                             return_logits=True)
    engine = _engine(tiny_pair, CUDA, compile=True)
    assert engine._cudagraphs
    for _ in range(3):  # warm-up, recording, replays
        out = engine.sample([1, 2], make_generators([0, 1]), greedy, return_logits=True)
        assert all(torch.equal(a, b) for a, b in zip(out.ids, eager.ids))
        for x, y in zip(out.logits, eager.logits):
            torch.testing.assert_close(x, y, atol=1e-3, rtol=0)


# ----------------------------------------------------------------------------- one CUDA graph per run

def _same_run(a, b):
    assert all(torch.equal(x, y) for x, y in zip(a.ids, b.ids))
    torch.testing.assert_close(a.residual, b.residual, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a.images, b.images, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_whole_run_graph_replays_eagers_ids_at_two_batch_sizes(tiny_pair, dtype):
    """cuda_graph=True: the first run of a (batch, options) captures, the next ones replay; the
    ids are eager's for the same seeds (sampled, greedy), whatever ran in between."""
    from sampling import SamplingOptions
    from sampling.seeds import make_generators

    eager = _engine(tiny_pair, CUDA, dtype=dtype)
    graphed = _engine(tiny_pair, CUDA, dtype=dtype, cuda_graph=True)
    sampled, greedy = SamplingOptions(cfg=2.0, top_k=10, top_p=0.9), SamplingOptions(cfg=1.5, top_k=1)
    runs = [([1, 2], [0, 1], sampled), ([3, 4, 5], [2, 3, 4], sampled), ([1, 2], [5, 6], sampled),
            ([3, 4, 5], [7, 8, 9], sampled), ([6, 7], [0, 1], greedy), ([6, 7], [2, 3], greedy), ([1, 2], [0, 1], sampled)]
    for classes, seeds, opts in runs:
        _same_run(graphed.sample(classes, make_generators(seeds), opts), eager.sample(classes, make_generators(seeds), opts))
    assert len(graphed.graphs.graphs) == 3 and graphed.graphs.replays == 4


def test_whole_run_graph_past_its_limit_and_every_head():
    """More keys than MAX_GRAPHS (the fifth drops all four at once; the graphs captured after it
    replay right), and the heads that read more than the ids: smoothing, a map head with the
    decoder metric (whose inverse is made outside the run), iDDPM with a learned variance."""
    from sampling.seeds import make_generators
    from sampling.graphs import MAX_GRAPHS
    from tests.test_graphs import CASES, _engine as _cpu_engine

    for case in ("class, ddim head", "class, smoothing", "class, map head, decoder metric", "class, iddpm head, no cfg"):
        cpu = _cpu_engine(CASES[case][0])
        gen, tok, opts = cpu.generator.to(CUDA), cpu.tokenizer.to(CUDA), CASES[case][1]
        from sampling import SamplingEngine

        eager, graphed = SamplingEngine(gen, tok), SamplingEngine(gen, tok, cuda_graph=True)
        # ddim: MAX_GRAPHS + 2 batch sizes (the fifth drops the first four), then the last two again
        sizes = [1, 2, 1, 2] if case != "class, ddim head" else list(range(1, MAX_GRAPHS + 3)) + [MAX_GRAPHS + 1,
                                                                                                 MAX_GRAPHS + 2] * 2
        for i, b in enumerate(sizes):
            classes, seeds = [(3 * j + i) % 10 for j in range(b)], list(range(10 * i, 10 * i + b))
            _same_run(graphed.sample(classes, make_generators(seeds), opts),
                      eager.sample(classes, make_generators(seeds), opts))
        assert graphed.graphs.replays == (2 if case != "class, ddim head" else 4), case
        assert len(graphed.graphs.graphs) == 2 and graphed.graphs.captures == len(set(sizes)), case


def test_whole_run_graph_through_the_diffusers_pipeline():
    from tests.test_diffusers import gens, tiny_pipe

    p = tiny_pipe().to("cuda")
    ref = p(class_labels=[1, 4], generator=gens(0, 1), output_type="pt").images
    p.enable_cuda_graph()
    for _ in range(2):  # a capture, then a replay
        torch.testing.assert_close(p(class_labels=[1, 4], generator=gens(0, 1), output_type="pt").images, ref,
                                   atol=1e-4, rtol=1e-4)
    assert p._engine.graphs.replays == 1


def test_whole_run_graph_of_a_text_model():
    from sampling import SamplingEngine, SamplingOptions
    from sampling.seeds import make_generators
    from tests.test_t2i import _model as _t2i_model, _prompts
    from tokenizer import HybridTokenizer, TokenizerConfig

    tok = HybridTokenizer(TokenizerConfig.from_name("tiny")).eval().to(CUDA)
    gen = _t2i_model().to(CUDA)
    eager, graphed = SamplingEngine(gen, tok), SamplingEngine(gen, tok, cuda_graph=True)
    opts = SamplingOptions(cfg=1.5, top_k=10, head_cfg=None)
    for seed, lengths in ((1, (3, 5, 8)), (2, (8, 1, 4)), (3, (2, 2, 8))):  # the replays see other masks
        prompts = tuple(t.to(CUDA) for t in _prompts(gen.config, B=3, seed=seed, lengths=lengths))
        gens = list(range(3 * seed, 3 * seed + 3))
        _same_run(graphed.sample(prompts, make_generators(gens), opts), eager.sample(prompts, make_generators(gens), opts))
    assert graphed.graphs.replays == 2


def test_whole_run_graph_falls_back_to_eager_with_one_line(tiny_pair, capsys, monkeypatch):
    """Previews asked for, or a capture that fails (a host sync slipped into the run): eager
    sampling, the same ids, one line per reason, and no retry of a failed capture."""
    from sampling import SamplingOptions
    from sampling.seeds import make_generators

    opts = SamplingOptions(cfg=2.0, top_k=10, top_p=0.9)
    eager = _engine(tiny_pair, CUDA)
    graphed = _engine(tiny_pair, CUDA, cuda_graph=True)
    ref = eager.sample([1, 2], make_generators([0, 1]), opts)
    _same_run(graphed.sample([1, 2], make_generators([0, 1]), opts, previews=True), ref)
    assert "not as one CUDA graph: previews asked for" in capsys.readouterr().err
    real = graphed.generator.condition

    def syncing(rows, *a, **kw):
        cond = real(rows, *a, **kw)
        cond.vec.sum().item()  # not capturable
        return cond

    monkeypatch.setattr(graphed.generator, "condition", syncing)
    for _ in range(2):
        _same_run(graphed.sample([1, 2], make_generators([0, 1]), opts), ref)
    err = capsys.readouterr().err.splitlines()
    assert len([e for e in err if "capture failed" in e]) == 1
    assert graphed.graphs.replays == 0
    monkeypatch.undo()
    _same_run(graphed.sample([3, 4, 5], make_generators([0, 1, 2]), opts),
              eager.sample([3, 4, 5], make_generators([0, 1, 2]), opts))  # the GPU still works after it


# ----------------------------------------------------------------------------- FlexAttention

def test_flex_attention_matches_sdpa_forward_and_backward():
    """hart train --attention flex: the block-causal BlockMask gives SDPA's logits and gradients."""
    results = []
    for impl in ("sdpa", "flex"):
        m = _model().train()
        m.set_attention(impl)
        labels, teacher = _inputs(m.config)
        out = m(labels, teacher).logits
        out.float().square().mean().backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
        results.append((out.detach(), grads))
    (a, ga), (b, gb) = results
    torch.testing.assert_close(b, a, atol=2e-4, rtol=1e-3)
    assert ga.keys() == gb.keys()
    for n in ga:
        torch.testing.assert_close(gb[n], ga[n], atol=1e-4, rtol=1e-2, msg=n)


# ----------------------------------------------------------------------------- training

def _tok_train(out, *extra, preset=("--preset", "tiny")):
    from tokenizer import train as tok_train

    return tok_train.main([*preset, "--data", "synthetic", "--batch-size", "4", "--disc-start", "2",
                           "--device", "cuda", "--dtype", "bf16", "--out", str(out), *extra])


def test_tokenizer_both_stages_train_on_cuda(tmp_path):
    assert _tok_train(tmp_path / "tok", "--steps", "3", "--save-every", "3") == 0
    lines = [json.loads(x) for x in (tmp_path / "tok" / "metrics.jsonl").read_text().splitlines()]
    assert lines and all(torch.isfinite(torch.tensor(x["loss/total"])) for x in lines)
    assert _tok_train(tmp_path / "tok2", "--steps", "2", "--save-every", "2", "--init", str(tmp_path / "tok"),
                      "--freeze-codebook", preset=()) == 0
    before = load_file(str(tmp_path / "tok" / "model.safetensors"))
    raw = load_file(str(tmp_path / "tok2" / "train_state" / "model.safetensors"))
    frozen = [k for k in before if k.startswith(("encoder.", "quant_conv.", "quantize."))]
    assert frozen and all(torch.equal(before[k], raw[k].to(before[k].dtype)) for k in frozen)
    assert any(not torch.equal(before[k], raw[k]) for k in before if k.startswith("decoder."))


@pytest.fixture(scope="module")
def cuda_tokdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cuda_tok")
    _tok_train(d, "--steps", "2", "--save-every", "2")
    return d


def _gen_train(tokdir, out, *extra):
    from hart.train import main as train_main

    return train_main(["--tokenizer", str(tokdir), "--preset", "tiny", "--data", "synthetic", "--out", str(out),
                       "--batch-size", "8", "--device", "cuda", "--dtype", "bf16", *extra])


@pytest.mark.parametrize("attention", ["sdpa", "flex"])
def test_generator_trains_and_resumes_on_cuda(cuda_tokdir, tmp_path, attention):
    """bf16 autocast on the GPU; --resume continues the run: the same weights as without the
    stop, up to the GPU's nondeterministic reductions (atomic adds in some backward kernels)."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert _gen_train(cuda_tokdir, a, "--steps", "4", "--save-every", "4", "--attention", attention) == 0
    _gen_train(cuda_tokdir, b, "--steps", "2", "--save-every", "2", "--attention", attention)
    _gen_train(cuda_tokdir, b, "--steps", "4", "--save-every", "4", "--attention", attention, "--resume")
    wa = load_file(str(a / "train_state" / "model.safetensors"))
    wb = load_file(str(b / "train_state" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(v.dtype == torch.float32 for v in wa.values() if v.is_floating_point())
    diff = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert diff <= 1e-4, diff
    meta = json.loads((b / "train_state" / "meta.json").read_text())
    assert meta["step"] == 4
    steps = [json.loads(x)["step"] for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))


def test_compiled_training_step_gives_the_eager_loss_in_bf16(cuda_tokdir, tmp_path):
    """hart train --compile on the GPU (bf16 autocast, fused AdamW): the eager run's losses within
    bf16's tolerance, the same state-dict keys."""
    a, b = tmp_path / "eager", tmp_path / "compiled"
    for out, extra in ((a, ()), (b, ("--compile",))):
        assert _gen_train(cuda_tokdir, out, "--steps", "3", "--save-every", "3", "--log-every", "1", *extra) == 0
    la, lb = ([json.loads(x)["loss/total"] for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (a, b))
    assert len(la) == len(lb) == 3
    assert all(abs(x - y) <= 2e-2 * abs(x) for x, y in zip(la, lb)), (la, lb)
    assert load_file(str(a / "generator" / "model.safetensors")).keys() == \
        load_file(str(b / "generator" / "model.safetensors")).keys()


def test_torchrun_one_process_uses_nccl(cuda_tokdir, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", "29517",
           "-m", "hart.train", "--tokenizer", str(cuda_tokdir), "--preset", "tiny", "--data", "synthetic",
           "--out", str(tmp_path / "g"), "--batch-size", "8", "--steps", "3", "--save-every", "3",
           "--device", "cuda", "--dtype", "bf16"]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "distributed: nccl process group of 1" in p.stdout
    assert (tmp_path / "g" / "generator" / "model.safetensors").is_file()


def test_generate_cli_on_cuda(cuda_tokdir, tmp_path):
    from sampling.generate import main as generate_main

    _gen_train(cuda_tokdir, tmp_path / "m", "--steps", "2", "--save-every", "2")
    out = tmp_path / "grid.png"
    for extra in ([], ["--dtype", "bf16"], ["--compile"]):
        assert generate_main(["--model", str(tmp_path / "m"), "--class", "1", "--num", "4", "--device", "cuda",
                              "--out", str(out), *extra]) == 0
        assert out.is_file()
        out.unlink()
