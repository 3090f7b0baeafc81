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


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def _rotate_halves(x: torch.Tensor) -> torch.Tensor:
    """rotate_half inside each half of the last dimension (the axial layout)."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat([_rotate_half(a), _rotate_half(b)], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str) -> torch.Tensor:
    """x (B, H, T, hd), cos/sin (B, T, hd) -> x rotated (same dtype).

    ``layout``: ``"axial"`` (per-half rotation) or ``"hart"`` (rotate_half over the whole head
    dimension; 1D tables rotate properly either way).
    """
    rot = _rotate_halves if layout == "axial" else _rotate_half
    cos, sin = cos.unsqueeze(1).to(x.dtype), sin.unsqueeze(1).to(x.dtype)
    return x * cos + rot(x) * sin


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
