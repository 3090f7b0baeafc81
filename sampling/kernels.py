"""Fused kernels of the sampling step: Triton versions, PyTorch references, one dispatch point.

Two hot spots of a next-scale step get a kernel each:

* :func:`adaln_layernorm` -- ``LN(x) * (1 + scale) + shift`` with per-sample scale/shift
  (VAR's AdaLN, eq. for AdaLNSelfAttn); one pass over each row instead of LayerNorm
  followed by two broadcast elementwise kernels.
* :func:`cfg_sample` -- per token: classifier-free guidance ``(1 + t) cond - t uncond``,
  temperature, top-k and top-p filtering, and one draw from the filtered softmax by
  inverse CDF with a given uniform ``u``. One program per token row reads the two logit
  rows once and writes one id, instead of a chain of (N, V) temporaries.

Semantics shared by reference and kernel (tested for parity under ``TRITON_INTERPRET=1``):

* top-k keeps the logits at or above the k-th largest (ties kept); ``top_k <= 0`` or
  ``>= V`` disables it.
* top-p (after top-k): sort the kept logits descending with softmax probabilities p_i;
  position i is kept when the mass strictly before it is < top_p (so the tail whose
  cumulative probability is at most 1 - top_p is dropped, as in VAR); the first is
  always kept. Every logit at or above the smallest kept value survives.
* the draw: ``id = #{j : cdf_j <= u}`` over the filtered softmax in index order, i.e.
  P(id = j) = p_j for u ~ U[0, 1); clamped to the last index with non-zero mass.

Dispatch (:func:`select_backend`, the one place that decides): Triton when it is
importable and the tensors are on a GPU, or when ``TRITON_INTERPRET=1`` and the caller
asks for ``backend="triton"`` (the CPU parity tests); the PyTorch reference otherwise.
Kernels are built lazily on first use, so ``TRITON_INTERPRET`` is read at that moment.
"""
from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "torch", "triton")


# ----------------------------------------------------------------------------- dispatch

@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when ``import triton`` works (it installs from PyPI without a GPU)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def select_backend(backend: str | None, *tensors: torch.Tensor) -> str:
    """The single dispatch decision: ``"triton"`` or ``"torch"`` for these tensors.

    ``backend``: ``"auto"`` / None (Triton on CUDA tensors when Triton imports, else the
    reference), ``"torch"`` (always the reference) or ``"triton"`` (Triton where it can
    run: CUDA tensors, or any tensors under ``TRITON_INTERPRET=1``; otherwise the
    reference, so a forced backend never fails on a machine without a GPU).
    """
    backend = backend or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; choose from {BACKENDS}")
    if backend == "torch" or not triton_available():
        return "torch"
    on_gpu = all(t.is_cuda for t in tensors)
    if on_gpu:
        return "triton"
    if backend == "triton" and interpreting():
        return "triton"
    return "torch"


@functools.lru_cache(maxsize=2)
def _kernels(interpret: bool):
    """Define the Triton kernels (once per interpret mode; ``triton.jit`` reads the env)."""
    import triton
    import triton.language as tl

    @triton.jit
    def adaln_ln_kernel(
        X, SCALE, SHIFT, Y, T, C, stride_x, stride_y, stride_mb, eps,
        BLOCK_C: tl.constexpr,
    ):
        # one program per token row; the row's sample b = row // T picks scale/shift
        row = tl.program_id(0)
        b = row // T
        cols = tl.arange(0, BLOCK_C)
        mask = cols < C
        x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=0) / C
        xc = tl.where(mask, x - mean, 0.0)
        var = tl.sum(xc * xc, axis=0) / C
        rstd = 1.0 / tl.sqrt(var + eps)
        sc = tl.load(SCALE + b * stride_mb + cols, mask=mask, other=0.0).to(tl.float32)
        sh = tl.load(SHIFT + b * stride_mb + cols, mask=mask, other=0.0).to(tl.float32)
        y = xc * rstd * (1.0 + sc) + sh
        tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def cfg_sample_kernel(
        COND, UNCOND, U, OUT, V, stride_c, stride_u, t, inv_temp, top_k, top_p,
        HAS_UNCOND: tl.constexpr, DO_TOPK: tl.constexpr, DO_TOPP: tl.constexpr, BLOCK_V: tl.constexpr,
    ):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK_V)
        mask = cols < V
        neg_inf = float("-inf")
        c = tl.load(COND + row * stride_c + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_UNCOND:
            uc = tl.load(UNCOND + row * stride_u + cols, mask=mask, other=0.0).to(tl.float32)
            c = (1.0 + t) * c - t * uc  # VAR's guidance with the scale-dependent ratio t
        logit = tl.where(mask, c * inv_temp, neg_inf)
        if DO_TOPK:
            s = tl.sort(logit, descending=True)
            kth = tl.max(tl.where(cols == top_k - 1, s, neg_inf), axis=0)
            logit = tl.where(logit >= kth, logit, neg_inf)
        if DO_TOPP:
            s = tl.sort(logit, descending=True)
            e = tl.exp(s - tl.max(s, axis=0))
            p = e / tl.sum(e, axis=0)
            before = tl.cumsum(p, axis=0) - p  # mass strictly before each sorted position
            keep = ((before < top_p) & (s > neg_inf)) | (cols == 0)
            thr = tl.min(tl.where(keep, s, float("inf")), axis=0)
            logit = tl.where(logit >= thr, logit, neg_inf)
        e = tl.exp(logit - tl.max(logit, axis=0))
        p = e / tl.sum(e, axis=0)
        cdf = tl.cumsum(p, axis=0)
        u = tl.load(U + row).to(tl.float32)
        idx = tl.sum((cdf <= u).to(tl.int32), axis=0)
        last = tl.max(tl.where(p > 0, cols, -1), axis=0)
        idx = tl.minimum(idx, last)
        tl.store(OUT + row, idx.to(tl.int64))

    return adaln_ln_kernel, cfg_sample_kernel


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


# ----------------------------------------------------------------------------- AdaLN + LayerNorm

def adaln_layernorm_ref(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float) -> torch.Tensor:
    """PyTorch reference: LN(x) (no affine) * (1 + scale) + shift.

    Args:
        x: (B, T, C).
        scale, shift: (B, 1, C) or (B, C) per-sample modulation.
    Returns:
        (B, T, C), in the dtype the unfused ops give (the same ops as ``AdaLNBlock``).
    """
    if scale.dim() == 2:
        scale, shift = scale.unsqueeze(1), shift.unsqueeze(1)
    return F.layer_norm(x, (x.shape[-1],), eps=eps) * (1 + scale) + shift


def adaln_layernorm_triton(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float) -> torch.Tensor:
    """Triton version of :func:`adaln_layernorm_ref` (fp32 statistics, output in x's dtype)."""
    B, T, C = x.shape
    scale = scale.reshape(B, C)
    shift = shift.reshape(B, C)
    if scale.stride(-1) != 1 or shift.stride(-1) != 1 or scale.stride(0) != shift.stride(0):
        scale, shift = scale.contiguous(), shift.contiguous()
    xf = x.reshape(B * T, C)
    if xf.stride(-1) != 1:
        xf = xf.contiguous()
    y = torch.empty((B * T, C), device=x.device, dtype=x.dtype)
    kernel = _kernels(interpreting())[0]
    kernel[(B * T,)](
        xf, scale, shift, y, T, C, xf.stride(0), y.stride(0), scale.stride(0), float(eps),
        BLOCK_C=_next_pow2(C),
    )
    return y.view(B, T, C)


def adaln_layernorm(x, scale, shift, eps: float, backend: str | None = "auto") -> torch.Tensor:
    """Fused AdaLN modulate + LayerNorm; see :func:`adaln_layernorm_ref` for shapes."""
    if select_backend(backend, x, scale, shift) == "triton":
        return adaln_layernorm_triton(x, scale, shift, eps)
    return adaln_layernorm_ref(x, scale, shift, eps)


# ----------------------------------------------------------------------------- CFG + filter + sample

def guided_logits(cond: torch.Tensor, uncond: torch.Tensor | None, t: float, temperature: float) -> torch.Tensor:
    """((1 + t) cond - t uncond) / temperature in fp32. (N, V) -> (N, V)."""
    logits = cond.float()
    if uncond is not None:
        logits = (1.0 + t) * logits - t * uncond.float()
    return logits / temperature


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Top-k then top-p filtering (module doc); dropped entries become -inf. (N, V) fp32."""
    V = logits.shape[-1]
    neg_inf = float("-inf")
    do_topk = 0 < top_k < V
    if do_topk:
        top = torch.topk(logits, top_k, dim=-1).values  # (N, k), descending
        logits = logits.masked_fill(logits < top[:, -1:], neg_inf)
    if top_p < 1.0:
        # only the top-k sorted values can be kept, and ties at the k-th share its fate,
        # so the top-k list (with the whole row's normaliser) decides the threshold
        s = top if do_topk else torch.sort(logits, dim=-1, descending=True).values
        p = torch.exp(s - torch.logsumexp(logits, dim=-1, keepdim=True))
        before = torch.cumsum(p, dim=-1) - p
        keep = (before < top_p) & (s > float("-inf"))
        keep[:, 0] = True
        thr = torch.where(keep, s, torch.full_like(s, float("inf"))).amin(-1, keepdim=True)
        logits = logits.masked_fill(logits < thr, neg_inf)
    return logits


def sample_from_logits(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw over softmax(logits) in index order. (N, V), (N,) -> (N,) int64."""
    p = torch.softmax(logits, dim=-1)
    cdf = torch.cumsum(p, dim=-1)
    idx = (cdf <= u.float().unsqueeze(-1)).sum(-1)
    cols = torch.arange(p.shape[-1], device=p.device)
    last = torch.where(p > 0, cols, -1).amax(-1)
    return torch.minimum(idx, last)


def cfg_sample_ref(
    cond: torch.Tensor, uncond: torch.Tensor | None, u: torch.Tensor, t: float = 0.0,
    temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
) -> torch.Tensor:
    """PyTorch reference of the fused CFG + top-k/top-p + sampling kernel.

    Args:
        cond, uncond: (N, V) conditional / unconditional logits (uncond may be None: no CFG).
        u: (N,) uniforms in [0, 1), one per token.
        t: guidance ratio of this scale.
    Returns:
        (N,) int64 ids.
    """
    logits = filter_logits(guided_logits(cond, uncond, t, temperature), top_k, top_p)
    return sample_from_logits(logits, u)


def cfg_sample_triton(cond, uncond, u, t=0.0, temperature=1.0, top_k=0, top_p=1.0) -> torch.Tensor:
    N, V = cond.shape
    if cond.stride(-1) != 1:
        cond = cond.contiguous()
    if uncond is not None and uncond.stride(-1) != 1:
        uncond = uncond.contiguous()
    u = u.float().contiguous()
    out = torch.empty(N, device=cond.device, dtype=torch.int64)
    kernel = _kernels(interpreting())[1]
    kernel[(N,)](
        cond, cond if uncond is None else uncond, u, out, V, cond.stride(0),
        cond.stride(0) if uncond is None else uncond.stride(0),
        float(t), 1.0 / float(temperature), int(top_k), float(top_p),
        HAS_UNCOND=uncond is not None, DO_TOPK=0 < top_k < V, DO_TOPP=top_p < 1.0,
        BLOCK_V=_next_pow2(V),
    )
    return out


def cfg_sample(cond, uncond, u, t=0.0, temperature=1.0, top_k=0, top_p=1.0, backend: str | None = "auto"):
    """Fused CFG + top-k/top-p + draw; see :func:`cfg_sample_ref` for shapes."""
    tensors = (cond, u) if uncond is None else (cond, uncond, u)
    if select_backend(backend, *tensors) == "triton":
        return cfg_sample_triton(cond, uncond, u, t, temperature, top_k, top_p)
    return cfg_sample_ref(cond, uncond, u, t, temperature, top_k, top_p)
