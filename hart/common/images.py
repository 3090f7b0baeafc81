"""Image grids as PNG: what people look at. Plumbing leaf."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from hart.common.io import atomic_file


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    x = images.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def to_pil(images: torch.Tensor) -> list:
    return [Image.fromarray(a) for a in to_uint8(images)]


# the largest grid written, in pixels (400 megapixels: 1.2 GB of RGB in memory, and as much again
# for the rows it is pasted from): beyond it the grid is a memory fault, not a picture
MAX_GRID_PIXELS = 400_000_000


def _label_width(row_labels) -> int:
    return 7 * max(len(s) for s in row_labels) + 8 if row_labels else 0


def grid_size(nrows: int, ncol: int, size, row_labels=None, pad: int = 2, scale: int = 1) -> tuple[int, int]:
    """(width, height) in px of :func:`grid` on ``nrows`` rows of ``ncol`` images of ``size`` px
    (square) or ``(height, width)`` px."""
    h, w = (size, size) if isinstance(size, int) else size
    return _label_width(row_labels) + ncol * (w * scale + pad) + pad, nrows * (h * scale + pad) + pad


def grid(rows: list, row_labels=None, pad: int = 2, scale: int = 1) -> Image.Image:
    """Tile rows of images. ``rows``: list of (N, 3, H, W) tensors in [-1, 1] (same H, W);
    ``row_labels``: optional text drawn left of each row."""
    arrs = [to_uint8(r) for r in rows]
    ncol = max(len(a) for a in arrs)
    size = tuple(arrs[0].shape[1:3])
    canvas = Image.new("RGB", grid_size(len(arrs), ncol, size, row_labels, pad, scale), (255, 255, 255))
    H, W = size[0] * scale, size[1] * scale
    label_w = _label_width(row_labels)
    draw = ImageDraw.Draw(canvas)
    for r, a in enumerate(arrs):
        y = pad + r * (H + pad)
        if row_labels:
            draw.text((4, y + H // 2 - 6), row_labels[r], fill=(0, 0, 0))
        for c, img in enumerate(a):
            im = Image.fromarray(img)
            if scale != 1:
                im = im.resize((W, H), Image.NEAREST)
            canvas.paste(im, (label_w + pad + c * (W + pad), y))
    return canvas


def save_grid(rows: list, path, row_labels=None, scale: int = 1) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        grid(rows, row_labels, scale=scale).save(tmp, format="PNG")
    return path
