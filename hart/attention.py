"""Attention of the transformer blocks, one entry point (:func:`attention`) for both paths.

PyTorch's SDPA, with one measured exception: bf16 training on the CPU over short sequences
takes two matmuls around an fp32 softmax instead (:func:`attention_explicit`). Given a
FlexAttention ``BlockMask`` (:func:`block_mask`) instead of an additive mask, it runs
PyTorch's FlexAttention (compiled on a GPU), which skips the blocks the mask hides; its
backward needs a GPU (PyTorch has none on the CPU).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

EXPLICIT_MAX_KEYS = 256  # measured crossover of the CPU bf16 training path: between 155 and 340 keys


def attention_explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float,
                       dropout_p: float = 0.0) -> torch.Tensor:
    """Two matmuls around an fp32 softmax; the same contract as :func:`attention`."""
    a = torch.matmul(q, k.transpose(-1, -2)) * scale
    if bias is not None:
        a = a + bias
    p = a.float().softmax(-1).to(v.dtype)
    if dropout_p > 0.0:
        p = F.dropout(p, dropout_p)
    return torch.matmul(p, v)


ATTENTION_IMPLS = ("sdpa", "flex")


def flex_available() -> bool:
    """True when this PyTorch has FlexAttention (2.5 and later)."""
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def block_mask(allowed: torch.Tensor):
    """(T, S) bool "query may see key" -> a FlexAttention ``BlockMask`` on ``allowed``'s device
    (one for every batch row and head). Blocks where nothing is allowed are skipped by
    :func:`attention` (at var-d16's 680 tokens too few to pay on an H100: README, On a GPU)."""
    from torch.nn.attention.flex_attention import create_block_mask

    T, S = allowed.shape

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed[q_idx, kv_idx]

    return create_block_mask(mask_mod, None, None, T, S, device=allowed.device)


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, scale: float) -> torch.Tensor:
    """FlexAttention under a ``BlockMask``: compiled on a GPU (fused, masked blocks skipped),
    PyTorch's eager reference on the CPU (forward only: it has no CPU backward)."""
    from torch.nn.attention.flex_attention import flex_attention as eager

    fn = _compiled_flex() if q.is_cuda else eager
    return fn(q, k, v, block_mask=mask, scale=scale)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias, scale: float,
              dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v. q (B, H, T, hd), k and v (B, H, S, hd), bias broadcastable to
    (B, H, T, S) or None -> (B, H, T, hd), in v's dtype. ``bias`` may also be a FlexAttention
    ``BlockMask`` from :func:`block_mask` (no dropout there), which runs :func:`flex_attention`.

    PyTorch's SDPA, except when autograd will differentiate it on the CPU in a 16-bit dtype over
    at most ``EXPLICIT_MAX_KEYS`` keys: there the fused kernel's backward makes the pair about
    2x slower than :func:`attention_explicit` (``benchmarks/bench_attention.py``; 155 tokens),
    which is taken instead. Over longer sequences (340, 680 tokens) the explicit path's
    (T, S) fp32 temporaries cost more than they save; in fp32, and for forward-only calls (the
    sampler), SDPA is as fast or faster. So SDPA stays there.
    """
    if bias is not None and not isinstance(bias, torch.Tensor):  # a BlockMask
        if dropout_p > 0.0:
            raise ValueError("FlexAttention has no attention dropout: train with --attention sdpa")
        return flex_attention(q, k, v, bias, scale)
    if bias is not None:
        bias = bias.to(v.dtype)
    if (q.device.type == "cpu" and v.dtype in (torch.bfloat16, torch.float16) and k.shape[-2] <= EXPLICIT_MAX_KEYS
            and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)):
        return attention_explicit(q, k, v, bias, scale, dropout_p)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)
