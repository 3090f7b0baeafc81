"""Fused kernels of the transformer step and the sampler: Triton versions, PyTorch references, one dispatch point.

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
* the draw: ``id = #{j : cdf_j <= u * cdf_V}``, cdf = cumsum(exp(filtered logits - max))
  in index order, i.e. P(id = j) = p_j for u ~ U[0, 1); clamped to the first index
  where the cdf reaches its total (an entry with mass: u * total may round up to the total).

Attention is :mod:`hart.attention`.

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
            c = c + t * (c - uc)  # VAR's (1 + t) cond - t uncond, t growing with the scale
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
        cdf = tl.cumsum(e, axis=0)
        total = tl.sum(tl.where(cols == BLOCK_V - 1, cdf, 0.0), axis=0)  # the cumsum's last entry
        u = tl.load(U + row).to(tl.float32)
        idx = tl.sum((cdf <= u * total).to(tl.int32), axis=0)
        full = tl.sum((cdf < total).to(tl.int32), axis=0)  # the first entry where the cdf is whole
        idx = tl.minimum(idx, full)
        tl.store(OUT + row, idx.to(tl.int64))

    return adaln_ln_kernel, cfg_sample_kernel


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


# ----------------------------------------------------------------------------- AdaLN + LayerNorm

def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN's modulation x * (1 + scale) + shift (scale / shift broadcast against x): the one
    PyTorch form, used by the blocks, the heads and :func:`adaln_layernorm_ref` (the Triton
    kernel computes the same inside its pass)."""
    return x * (1 + scale) + shift


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
    return modulate(F.layer_norm(x, (x.shape[-1],), eps=eps), shift, scale)


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
    """((1 + t) cond - t uncond) / temperature as cond + t (cond - uncond), in a new fp32 buffer.

    (N, V) -> (N, V).
    """
    c = cond.float()
    if uncond is None:
        logits = c.clone()
    else:
        logits = torch.sub(c, uncond.float())
        torch.add(c, logits, alpha=t, out=logits)
    if temperature != 1.0:
        logits.mul_(1.0 / temperature)
    return logits


def keep_threshold(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor | None:
    """Per row, the smallest logit that top-k then top-p keep (module doc). (N, V) -> (N, 1).

    Works on the top-k values only: ties at the k-th share its fate, and they enter the
    top-p normaliser through their count. None when neither filter is on.
    """
    V = logits.shape[-1]
    do_topk = 0 < top_k < V
    if not do_topk and top_p >= 1.0:
        return None
    if do_topk:
        s = torch.topk(logits, top_k, dim=-1).values  # (N, k), descending
        thr = s[:, -1:]
    else:
        s = torch.sort(logits, dim=-1, descending=True).values
        thr = s[:, -1:]
    if top_p < 1.0:
        lse = torch.logsumexp(s, dim=-1, keepdim=True)
        if do_topk:
            ties = (logits >= thr).sum(-1, keepdim=True) - top_k  # equal to the k-th, beyond it
            lse = torch.logaddexp(lse, thr + ties.float().log())
        p = torch.exp(s - lse)
        before = torch.cumsum(p, dim=-1) - p  # mass strictly before each sorted position
        keep = (before < top_p) & (s > float("-inf"))
        keep[:, 0] = True
        thr = torch.where(keep, s, torch.full_like(s, float("inf"))).amin(-1, keepdim=True)
    return thr


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Top-k then top-p filtering (module doc); dropped entries become -inf. (N, V) fp32."""
    thr = keep_threshold(logits, top_k, top_p)
    return logits if thr is None else logits.masked_fill(logits < thr, float("-inf"))


def _draw_(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """:func:`sample_from_logits` that overwrites ``logits`` (it becomes exp(logits - max))."""
    e = logits.sub_(logits.amax(-1, keepdim=True)).exp_()
    cdf = torch.cumsum(e, dim=-1)
    target = u.float().view(-1, 1) * cdf[:, -1:]
    idx = torch.searchsorted(cdf, target, right=True).view(-1)  # #{j: cdf_j <= target}
    # only u * total rounded up to the total counts past the end (a smaller target lands on an
    # entry with mass): then the first entry where the cdf reaches its total, which has mass.
    # Branch-free, as the kernel: no host sync, so a whole sampling run can be one CUDA graph
    full = torch.searchsorted(cdf, cdf[:, -1:].contiguous()).view(-1)  # #{j: cdf_j < total}
    return torch.minimum(idx, full)


def sample_from_logits(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw over softmax(logits) in index order. (N, V), (N,) -> (N,) int64.

    id = #{j : cdf_j <= u * cdf_V} with cdf = cumsum(exp(logits - max)), clamped to the
    first entry where the cdf reaches its total (an entry with non-zero mass).
    """
    return _draw_(logits.float().clone(), u)


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
    logits = guided_logits(cond, uncond, t, temperature)  # owned buffer: filtered and drawn in place
    thr = keep_threshold(logits, top_k, top_p)
    if thr is not None:
        logits.masked_fill_(logits < thr, float("-inf"))
    return _draw_(logits, u)


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


# ``auto`` takes the sampling kernel up to this many rows. It runs one program per row and sorts
# the whole row, so past a few thousand rows the reference's batched topk / sort wins (H100,
# V 4096, benchmarks/bench_kernels.py: 3-3.8x faster at 1 to 256 rows, even at 1024, 0.80x at
# 2304, 0.54x at 16384).
SAMPLE_TRITON_MAX_ROWS = 1024


def cfg_sample(cond, uncond, u, t=0.0, temperature=1.0, top_k=0, top_p=1.0, backend: str | None = "auto"):
    """Fused CFG + top-k/top-p + draw; see :func:`cfg_sample_ref` for shapes. ``auto`` takes the
    kernel for at most :data:`SAMPLE_TRITON_MAX_ROWS` rows; ``triton`` always where it can run."""
    tensors = (cond, u) if uncond is None else (cond, uncond, u)
    which = select_backend(backend, *tensors)
    if which == "triton" and (backend == "triton" or cond.shape[0] <= SAMPLE_TRITON_MAX_ROWS):
        return cfg_sample_triton(cond, uncond, u, t, temperature, top_k, top_p)
    return cfg_sample_ref(cond, uncond, u, t, temperature, top_k, top_p)
