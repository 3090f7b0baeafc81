"""Rotary position embeddings of the text-to-image layout (HART's ``LlamaAttention``).

Text (context) tokens get 1D RoPE on their position ids; image tokens get 2D RoPE on
coordinates ``arange(pn) / pn * pn_max`` of their scale (every scale on the grid of the
largest one), offset by the last context position (HART's rule; 0 for class models).

Two 2D layouts (``GeneratorConfig.rope_2d``), both with the frequencies
``theta ** (-4 j / hd)``, j < hd/4, and the same cos/sin tables ``[cx, cx, cy, cy]``:

- ``axial``: each half of the head dimension rotates with one coordinate (pairs (i, i+hd/4)
  in the first half turn by x, in the second half by y). A true rotation, so attention
  scores depend only on relative positions. Text positions p are placed at (p, p).
- ``hart``: HART's released code applies ``rotate_half`` over the whole head dimension to
  the 2D tables, pairing i with i+hd/2, whose angles are x and y respectively: not a
  rotation unless x = y, so scores are not relative in general. Kept bit for bit for the
  official weights; text positions use plain 1D RoPE, as in HART.

All tables are built in fp32 and cast to the query's dtype. Shapes: q, k (B, H, T, hd);
cos, sin (B, T, hd).
"""
from __future__ import annotations

import torch

ROPE_2D = ("axial", "hart")


def _inv_freq(head_dim: int, theta: float, step: int, device) -> torch.Tensor:
    return 1.0 / theta ** (torch.arange(0, head_dim, step, device=device, dtype=torch.float32) / head_dim)


def rope_1d(pos: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) positions -> cos, sin (B, T, hd) of standard 1D RoPE (hd/2 frequencies)."""
    f = pos.float().unsqueeze(-1) * _inv_freq(head_dim, theta, 2, pos.device)  # (B, T, hd/2)
    emb = torch.cat([f, f], -1)
    return emb.cos(), emb.sin()


def rope_2d(coords: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, 2) (x, y) coordinates -> cos, sin (B, T, hd) laid out [cx, cx, cy, cy]."""
    inv = _inv_freq(head_dim, theta, 4, coords.device)  # (hd/4,)
    fx = coords[..., :1].float() * inv
    fy = coords[..., 1:].float() * inv
    emb = torch.cat([fx, fx, fy, fy], -1)
    return emb.cos(), emb.sin()


def rotation(head_dim: int, layout: str, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(perm (hd,) int64, sign (hd,)) with ``rotate(x) = x[..., perm] * sign``: rotate_half over
    the whole head dimension (``hart``) or inside each half (``axial``)."""
    n = head_dim if layout == "hart" else head_dim // 2
    # made on the device (no host-to-device copy: a sampling run stays capturable as a CUDA graph)
    half = torch.arange(n // 2, device=device)
    perm = torch.cat([half + n // 2, half])  # [x2, x1]
    ones = torch.ones(n // 2, device=device)
    sign = torch.cat([-ones, ones])  # [-x2, x1]
    if layout != "hart":
        perm, sign = torch.cat([perm, perm + n]), sign.repeat(2)
    return perm, sign


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str) -> torch.Tensor:
    """x (B, H, T, hd), cos/sin (B, T, hd) -> x rotated (same dtype).

    ``layout``: ``"axial"`` (per-half rotation) or ``"hart"`` (rotate_half over the whole head
    dimension; 1D tables rotate properly either way).
    """
    perm, sign = rotation(x.shape[-1], layout, x.device)
    return apply_rope_tables(x, cos.unsqueeze(1).to(x.dtype), (sin * sign).unsqueeze(1).to(x.dtype), perm)


def apply_rope_tables(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """The fast form for prepared tables: x * cos + x[..., perm] * signed_sin, with cos and
    signed_sin (B, 1, T, hd) in x's dtype (see :func:`rotation`)."""
    return x * cos + x.index_select(-1, perm) * signed_sin


def scale_coords(patch_nums, first: int = 0) -> torch.Tensor:
    """(sum pn^2 over scales[first:], 2) float coordinates ``arange(pn)/pn * pn_max`` (row-major,
    first coordinate along rows: HART's meshgrid 'ij')."""
    pmax = patch_nums[-1]
    out = []
    for pn in patch_nums[first:]:
        r = torch.arange(pn, dtype=torch.float32)
        gx, gy = torch.meshgrid(r, r, indexing="ij")
        out.append(torch.stack([gx, gy], -1).reshape(-1, 2) / pn * pmax)
    return torch.cat(out)
