"""Image grids as PNG: what people look at. Plumbing leaf."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from hart.common.errors import UserError
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


LABEL_MAX_CHARS = 48  # a row label beyond this is cut (a caption of 200 words made a 10,000 px grid)


def short_label(text: str, limit: int = LABEL_MAX_CHARS) -> str:
    """``text`` on one line, cut to ``limit`` characters ending in "..."."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3].rstrip() + "..."


def label_font(labels):
    """None (Pillow's built-in font: the same pixels on every machine) when every label is
    ASCII; else DejaVu Sans where it is installed (the system's, or matplotlib's), which draws
    accented and most non-Latin letters that the built-in font shows as boxes."""
    if all(s.isascii() for s in labels):
        return None
    try:
        return ImageFont.truetype("DejaVuSans.ttf", 11)
    except OSError:
        pass
    try:
        import matplotlib

        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), 11)
    except (ImportError, OSError):
        return None


def _label_width(row_labels, font=None) -> int:
    if not row_labels:
        return 0
    labels = [short_label(s) for s in row_labels]
    if font is None:
        return 7 * max(len(s) for s in labels) + 8
    return int(max(font.getlength(s) for s in labels)) + 8


def grid_size(nrows: int, ncol: int, size, row_labels=None, pad: int = 2, scale: int = 1) -> tuple[int, int]:
    """(width, height) in px of :func:`grid` on ``nrows`` rows of ``ncol`` images of ``size`` px
    (square) or ``(height, width)`` px."""
    h, w = (size, size) if isinstance(size, int) else size
    font = label_font([short_label(s) for s in row_labels]) if row_labels else None
    return _label_width(row_labels, font) + ncol * (w * scale + pad) + pad, nrows * (h * scale + pad) + pad


def grid(rows: list, row_labels=None, pad: int = 2, scale: int = 1) -> Image.Image:
    """Tile rows of images. ``rows``: list of (N, 3, H, W) tensors in [-1, 1] (same H, W);
    ``row_labels``: optional text drawn left of each row."""
    arrs = [to_uint8(r) for r in rows]
    ncol = max(len(a) for a in arrs)
    size = tuple(arrs[0].shape[1:3])
    canvas = Image.new("RGB", grid_size(len(arrs), ncol, size, row_labels, pad, scale), (255, 255, 255))
    H, W = size[0] * scale, size[1] * scale
    labels = [short_label(s) for s in row_labels] if row_labels else None
    font = label_font(labels) if labels else None
    label_w = _label_width(labels, font)
    draw = ImageDraw.Draw(canvas)
    for r, a in enumerate(arrs):
        y = pad + r * (H + pad)
        if labels:
            draw.text((4, y + H // 2 - 6), labels[r], fill=(0, 0, 0), font=font)
        for c, img in enumerate(a):
            im = Image.fromarray(img)
            if scale != 1:
                im = im.resize((W, H), Image.NEAREST)
            canvas.paste(im, (label_w + pad + c * (W + pad), y))
    return canvas


IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")  # what an RGB grid is written as, whole
MAX_SIDE = {"WEBP": 16383, "JPEG": 65500}  # the formats' own limits, px a side


def image_format(path) -> str:
    """The format that ``path``'s extension names (PNG without one), one of
    :data:`IMAGE_FORMATS`; one line for any other extension (Pillow's other writers shrink,
    convert or refuse an RGB grid)."""
    suffix = Path(path).suffix.lower()
    if not suffix:
        return "PNG"
    fmt = Image.registered_extensions().get(suffix)
    if fmt not in IMAGE_FORMATS:
        raise UserError(f"cannot write a {suffix} image ({path}); name it .png (or .jpg, .webp, .bmp, .tif)")
    return fmt


def save_grid(rows: list, path, row_labels=None, scale: int = 1) -> Path:
    """The grid of ``rows`` (see :func:`grid`) written to ``path`` in the format its extension
    names (:func:`image_format`; PNG by default), atomically."""
    path = Path(path)
    fmt = image_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        grid(rows, row_labels, scale=scale).save(tmp, format=fmt)
    return path
