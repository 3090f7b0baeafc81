"""Fused kernels: reference semantics, and Triton parity on the CPU with TRITON_INTERPRET=1.

The interpreter must be on before the kernels are defined; ``hart.kernels`` builds them
lazily on first Triton use (and per interpret mode), so setting the variable here, before
any kernel runs, is enough even when another test module imported the package first.
"""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from hart import attention as attn  # noqa: E402
from hart import kernels  # noqa: E402

needs_triton = pytest.mark.skipif(not kernels.triton_available(), reason="triton is not importable")
needs_interpreter = pytest.mark.skipif(
    not kernels.interpreting(), reason="TRITON_INTERPRET is set to something other than 1 in the environment"
)




# ----------------------------------------------------------------------------- reference semantics

def test_dispatch_falls_back_without_gpu():
    x = torch.zeros(2, 3)
    assert kernels.select_backend("auto", x) == "torch"  # CPU tensors: the reference
    assert kernels.select_backend("torch", x) == "torch"
    with pytest.raises(ValueError):
        kernels.select_backend("cuda-only", x)


def test_adaln_reference_matches_unfused_ops():
    g = torch.Generator().manual_seed(0)
    x, sc, sh = torch.randn(2, 5, 16, generator=g), torch.randn(2, 1, 16, generator=g), torch.randn(2, 1, 16, generator=g)
    ln = torch.nn.LayerNorm(16, eps=1e-6, elementwise_affine=False)
    torch.testing.assert_close(kernels.adaln_layernorm(x, sc, sh, 1e-6), ln(x) * (1 + sc) + sh)


def test_filter_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.05, 0.3, 0.1, 0.05]]))
    kept = torch.isfinite(kernels.filter_logits(logits, top_k=2))
    assert kept.tolist() == [[True, False, True, False, False]]
    # sorted 0.5, 0.3, 0.1, ...: mass before each is 0, 0.5, 0.8; kept while it is < top_p
    kept = torch.isfinite(kernels.filter_logits(logits, top_p=0.75))
    assert kept.tolist() == [[True, False, True, False, False]]
    kept = torch.isfinite(kernels.filter_logits(logits, top_p=0.85))
    assert kept.tolist() == [[True, False, True, True, False]]
    kept = torch.isfinite(kernels.filter_logits(logits, top_p=0.01))
    assert kept.sum() == 1
    assert torch.isfinite(kernels.filter_logits(logits, top_k=0, top_p=1.0)).all()


def test_inverse_cdf_draw_follows_the_distribution():
    p = torch.tensor([0.1, 0.0, 0.6, 0.3])
    n = 20000
    u = torch.rand(n, generator=torch.Generator().manual_seed(0))
    ids = kernels.sample_from_logits(p.log().expand(n, 4), u)
    freq = torch.bincount(ids, minlength=4).float() / n
    assert freq[1] == 0
    torch.testing.assert_close(freq, p, atol=0.015, rtol=0)
    # u at the edges never lands on a zero-probability entry
    edge = kernels.sample_from_logits(torch.tensor([[float("-inf"), 0.0, float("-inf")]] * 2), torch.tensor([0.0, 1.0]))
    assert edge.tolist() == [1, 1]


def test_cfg_combines_as_var():
    c, u = torch.randn(3, 8), torch.randn(3, 8)
    torch.testing.assert_close(kernels.guided_logits(c, u, 2.0, 0.5), (3 * c - 2 * u) / 0.5)


# ----------------------------------------------------------------------------- Triton parity

@needs_triton
@needs_interpreter
@pytest.mark.parametrize("shape", [(2, 3, 32), (3, 1, 48), (1, 4, 100)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_adaln_layernorm_triton_parity(shape, dtype):
    B, T, C = shape
    g = torch.Generator().manual_seed(B * T * C)
    x = torch.randn(B, T, C, generator=g).mul(3).add(1).to(dtype)
    mods = torch.randn(B, 1, 2, C, generator=g).to(dtype)
    scale, shift = mods.unbind(2)  # strided views, as the engine passes them
    got = kernels.adaln_layernorm(x, scale, shift, 1e-6, backend="triton")
    want = kernels.adaln_layernorm_ref(x.float(), scale.float(), shift.float(), 1e-6).to(dtype)
    assert got.dtype == dtype and got.shape == x.shape
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)


@needs_triton
@needs_interpreter
@pytest.mark.parametrize("top_k, top_p, cfg", [(0, 1.0, 0.0), (5, 1.0, 1.5), (0, 0.7, 1.5), (12, 0.9, 3.0), (100, 0.5, 0.0)])
def test_cfg_sample_triton_parity(top_k, top_p, cfg):
    N, V = 6, 64
    g = torch.Generator().manual_seed(top_k + int(100 * top_p))
    cond = torch.randn(N, V, generator=g) * 2
    uncond = torch.randn(N, V, generator=g) * 2 if cfg > 0 else None
    u = torch.rand(N, generator=g)
    got = kernels.cfg_sample(cond, uncond, u, cfg, 0.8, top_k, top_p, backend="triton")
    want = kernels.cfg_sample_ref(cond, uncond, u, cfg, 0.8, top_k, top_p)
    assert got.dtype == torch.int64
    assert torch.equal(got, want)


@needs_triton
@needs_interpreter
def test_cfg_sample_triton_reads_halves_of_one_buffer():
    """The engine passes the cond / uncond halves of one (2N, V) logits buffer, in bf16 too."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2 * 4, 40, generator=g).to(torch.bfloat16)
    u = torch.rand(4, generator=g)
    got = kernels.cfg_sample(logits[:4], logits[4:], u, 2.0, 1.0, 7, 0.95, backend="triton")
    want = kernels.cfg_sample_ref(logits[:4], logits[4:], u, 2.0, 1.0, 7, 0.95)
    assert torch.equal(got, want)


@needs_triton
@needs_interpreter
def test_engine_with_triton_kernels_matches_reference():
    """The whole sampler through the dispatch point: Triton (interpreted) vs the references."""
    from hart.config import GeneratorConfig
    from hart.model import HARTGenerator
    from sampling import SamplingEngine, SamplingOptions
    from sampling.seeds import make_generators
    from tokenizer import HybridTokenizer, TokenizerConfig

    torch.manual_seed(0)
    tok = HybridTokenizer(TokenizerConfig.from_name("tiny")).eval()
    gen = HARTGenerator(GeneratorConfig.from_name("tiny")).eval()
    with torch.no_grad():
        for blk in gen.blocks:
            blk.ada_lin[-1].bias[: 2 * gen.config.width].fill_(1.0)
    opts = SamplingOptions(cfg=2.0, top_k=10, top_p=0.9)
    outs = [
        SamplingEngine(gen, tok, kernels=backend).sample([6], make_generators([3]), opts, return_logits=True)
        for backend in ("triton", "torch")
    ]
    for a, b in zip(outs[0].logits, outs[1].logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert all(torch.equal(a, b) for a, b in zip(outs[0].ids, outs[1].ids))
    torch.testing.assert_close(outs[0].images, outs[1].images, atol=1e-4, rtol=0)


@pytest.mark.parametrize("with_bias", [False, True])
def test_attention_explicit_matches_sdpa(with_bias):
    """The explicit path (taken for bf16 training on the CPU) gives SDPA's output and gradients."""
    g = torch.Generator().manual_seed(0)
    B, H, T, hd = 2, 3, 11, 8
    q, k, v = (torch.randn(B, H, T, hd, generator=g, dtype=torch.float64) for _ in range(3))
    bias = None
    if with_bias:  # block-causal: scales of 1, 4 and 6 tokens
        level = torch.tensor([0] + [1] * 4 + [2] * 6)
        bias = torch.where(level[:, None] >= level[None, :], 0.0, float("-inf")).double().view(1, 1, T, T)
    results = []
    for fn in (attn.attention_explicit, attn.attention):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        out = fn(*leaves, bias, 0.3)
        (out * torch.linspace(-1, 1, hd, dtype=torch.float64)).sum().backward()
        results.append((out.detach(), *(t.grad for t in leaves)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def test_attention_dispatch():
    """bf16 under autograd on the CPU takes the explicit path up to EXPLICIT_MAX_KEYS keys;
    longer sequences, forward-only calls and fp32 take SDPA."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, 7, 8, generator=g).bfloat16().requires_grad_(True) for _ in range(3))
    bias = torch.zeros(1, 1, 7, 7).bfloat16().masked_fill(torch.ones(7, 7, dtype=torch.bool).triu(1), float("-inf"))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    assert torch.equal(attn.attention(q, k, v, bias, 0.3), attn.attention_explicit(q, k, v, bias, 0.3))
    with torch.no_grad():
        assert torch.equal(attn.attention(q, k, v, bias, 0.3), sdpa(q, k, v, attn_mask=bias, scale=0.3))
    long = [torch.randn(1, 1, attn.EXPLICIT_MAX_KEYS + 1, 8, generator=g).bfloat16().requires_grad_(True)
            for _ in range(3)]
    assert torch.equal(attn.attention(*long, None, 0.3), sdpa(*long, scale=0.3))
    q32, k32, v32 = (t.detach().float().requires_grad_(True) for t in (q, k, v))
    assert torch.equal(attn.attention(q32, k32, v32, bias.float(), 0.3),
                       sdpa(q32, k32, v32, attn_mask=bias.float(), scale=0.3))
