"""The named data sources behind the ``--data`` specs (:mod:`hart.data.datasets`): Fashion-MNIST
from Debian's IDX files, the procedural ``synthetic`` and ``shapes`` sets and the ``emoji``
glyphs; the splits, and the resize and tensor conversion every dataset shares. A user's own
files (``folder:``, ``images:``, ``captions:``) are :mod:`hart.data.files`.

Class datasets yield ``(image, label)``, captioned ones (``captioned = True``, see
:func:`is_captioned`) ``(image, caption)``, with image a float tensor (3, R, R) in [-1, 1];
every dataset has ``.classes`` (class names, empty for captioned ones). Bottom layer
(hart.data): imports nothing of the project but :mod:`hart.common` and its own package.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from hart.common.errors import UserError
from hart.data import shapes as _shapes
from hart.data.emoji import EMOJI_FONT, emoji_glyphs, render_emoji

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
SPLITS = ("train", "test")
DATASET_SPLITS = {"shapes": _shapes.SPLITS}  # datasets with splits other than SPLITS
ALL_SPLITS = ("train", "test", "heldout")


def splits_of(name: str) -> tuple:
    """The splits a named dataset has."""
    return DATASET_SPLITS.get(name, SPLITS)


def check_split(name: str, split: str) -> None:
    if split in splits_of(name):
        return
    if split in ALL_SPLITS:
        only = ", ".join(n for n, s in DATASET_SPLITS.items() if split in s)
        raise UserError(f"split {split!r} exists only for {only}; {name} has: {', '.join(splits_of(name))}")
    raise UserError(f"unknown split {split!r}; choose one of: {', '.join(splits_of(name))}")


def is_captioned(dataset) -> bool:
    """Whether ``dataset`` yields ``(image, caption str)`` rather than ``(image, class id)``."""
    return bool(getattr(dataset, "captioned", False))


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) float in [-1, 1]."""
    a = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy())
    return a.permute(2, 0, 1).float().div(127.5).sub(1.0)


def fit(img: Image.Image, resolution: int) -> Image.Image:
    """Resize the shorter side to ``resolution`` (bicubic) and centre-crop a square."""
    w, h = img.size
    s = resolution / min(w, h)
    if (w, h) != (resolution, resolution):
        img = img.resize((max(resolution, round(w * s)), max(resolution, round(h * s))), Image.BICUBIC)
        w, h = img.size
        left, top = (w - resolution) // 2, (h - resolution) // 2
        img = img.crop((left, top, left + resolution, top + resolution))
    return img


# ----------------------------------------------------------------------------- Fashion-MNIST

def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise UserError(
        f"Fashion-MNIST file {stem}[.gz] not found in {root}; install Debian's "
        f"dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or pass --data-dir"
    )


class FashionMNIST(torch.utils.data.Dataset):
    """28x28 grey images, padded (resolution >= 28, <= 36) or resized, as RGB."""

    classes = FASHION_MNIST_CLASSES
    captioned = False

    def __init__(self, split: str = "train", resolution: int = 32, root=None):
        root = Path(root) if root else FASHION_MNIST_DIR
        if not root.is_dir():
            raise UserError(
                f"Fashion-MNIST folder {root} does not exist; install Debian's "
                f"dataset-fashion-mnist or pass --data-dir"
            )
        prefix = "train" if split == "train" else "t10k"
        images = _read_idx(_find_idx(root, f"{prefix}-images-idx3-ubyte"))
        self.labels = torch.from_numpy(_read_idx(_find_idx(root, f"{prefix}-labels-idx1-ubyte")).astype(np.int64))
        x = torch.from_numpy(images.copy())[:, None].float()  # (N, 1, 28, 28) in [0, 255]
        if 28 <= resolution <= 36:
            p = resolution - 28
            x = torch.nn.functional.pad(x, (p // 2, p - p // 2, p // 2, p - p // 2))
        elif resolution != 28:
            x = torch.nn.functional.interpolate(x, size=(resolution, resolution), mode="bicubic",
                                                antialias=resolution < 28).clamp(0, 255)
        self.images = x.round().to(torch.uint8)  # (N, 1, R, R)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = self.images[i].float().div(127.5).sub(1.0).expand(3, -1, -1)
        return x, int(self.labels[i])


# ----------------------------------------------------------------------------- synthetic

SYNTHETIC_CLASSES = ("circle", "square", "triangle", "cross", "ring", "bars")


class Synthetic(torch.utils.data.Dataset):
    """Procedural coloured shapes; class = shape. Deterministic per (split, index)."""

    classes = SYNTHETIC_CLASSES
    captioned = False

    def __init__(self, split: str = "train", resolution: int = 32, size: int = 2048):
        self.resolution, self.size = resolution, size
        self.offset = 0 if split == "train" else 10_000_000

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        rng = np.random.default_rng(self.offset + i)
        label = int(i % len(self.classes))
        R = self.resolution
        bg = tuple(int(c) for c in rng.integers(0, 80, 3))
        fg = tuple(int(c) for c in rng.integers(120, 256, 3))
        img = Image.new("RGB", (R, R), bg)
        d = ImageDraw.Draw(img)
        r = rng.uniform(0.25, 0.4) * R
        cx, cy = rng.uniform(r, R - r, 2)
        box = (cx - r, cy - r, cx + r, cy + r)
        w = max(2, int(r / 3))
        if label == 0:
            d.ellipse(box, fill=fg)
        elif label == 1:
            d.rectangle(box, fill=fg)
        elif label == 2:
            d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
        elif label == 3:
            d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fg)
            d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fg)
        elif label == 4:
            d.ellipse(box, outline=fg, width=w)
        else:
            for x0 in np.arange(cx - r, cx + r, 2 * w):
                d.rectangle((x0, cy - r, x0 + w // 2, cy + r), fill=fg)
        return to_tensor(img), label


# ----------------------------------------------------------------------------- captioned

SHAPES_SIZES = {"train": 1_000_000, "test": 2_000, "heldout": 2_000}


class Shapes(torch.utils.data.Dataset):
    """Captioned procedural scenes (:mod:`hart.data.shapes`), made on the fly, deterministic
    per (split, index); the caption is the scene's drawn phrasing (``Scene.phrasing``, a
    training template). ``size`` defaults to SHAPES_SIZES[split]."""

    classes = ()
    captioned = True

    def __init__(self, split: str = "train", resolution: int = 32, size: int | None = None):
        check_split("shapes", split)
        self.split, self.resolution = split, resolution
        self.size = SHAPES_SIZES[split] if size is None else size

    def __len__(self):
        return self.size

    def scene(self, i: int) -> _shapes.Scene:
        return _shapes.sample_scene(self.split, i)

    def __getitem__(self, i):
        if not 0 <= i < self.size:
            raise IndexError(i)
        scene = self.scene(i)
        return to_tensor(_shapes.render(scene, self.resolution)), scene.phrasing


class Emoji(torch.utils.data.Dataset):
    """Noto Color Emoji glyphs (``emoji[:split]``) on white, cropped to their ink, padded to a
    square and resized; captions are their Unicode names. Every 10th glyph is in test."""

    classes = ()
    captioned = True

    def __init__(self, split: str = "train", resolution: int = 32, font=None):
        check_split("emoji", split)
        self.font_path, self.resolution = str(font or EMOJI_FONT), resolution
        glyphs = emoji_glyphs(self.font_path)
        self.items = [g for k, g in enumerate(glyphs) if (k % 10 == 9) == (split == "test")]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        ch, caption = self.items[i]
        return to_tensor(render_emoji(ch, self.resolution, self.font_path)), caption
