"""The data sources behind the ``--data`` specs (:mod:`hart.data.datasets`): Fashion-MNIST from
Debian's IDX files, image folders and files, captioned files, the procedural ``synthetic`` and
``shapes`` sets and the ``emoji`` glyphs.

Class datasets yield ``(image, label)``, captioned ones (``captioned = True``, see
:func:`is_captioned`) ``(image, caption)``, with image a float tensor (3, R, R) in [-1, 1];
every dataset has ``.classes`` (class names, empty for captioned ones). Bottom layer
(hart.data): imports nothing of the project but :mod:`hart.common` and its own package.
"""
from __future__ import annotations

import gzip
import json
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from hart.common.errors import UserError
from hart.common.fs import decode_utf8
from hart.data import shapes as _shapes
from hart.data.emoji import EMOJI_FONT, emoji_glyphs, render_emoji

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
SPLITS = ("train", "test")
DATASET_SPLITS = {"shapes": _shapes.SPLITS}  # datasets with splits other than SPLITS
ALL_SPLITS = ("train", "test", "heldout")
IMAGE_SUFFIXES = {".bmp", ".jpg", ".jpeg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"}


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

def decodable_item(dataset, i: int, what: str):
    """(image, target) of ``dataset.items[i]`` (path, target), or of the next item that decodes:
    a file can pass verify() and still fail to decode (each such file counts in ``skipped``)."""
    items = dataset.items
    for j in range(len(items)):
        path, target = items[(i + j) % len(items)]
        try:
            with Image.open(path) as im:
                return to_tensor(fit(im.convert("RGB"), dataset.resolution)), target
        except Exception:
            dataset.skipped += 1
    raise UserError(f"no image in the {what} could be decoded")


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


# ----------------------------------------------------------------------------- image folders

class ImageFolder(torch.utils.data.Dataset):
    """One subfolder per class. Unreadable files are skipped and counted in one warning."""

    captioned = False

    def __init__(self, root, resolution: int):
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"data folder {root} does not exist")
        self.resolution = resolution
        self.classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not self.classes:
            raise UserError(f"data folder {root} has no class subfolders (expected {root}/<class>/<image>)")
        self.items, bad = [], 0
        for label, name in enumerate(self.classes):
            for dirpath, _, files in os.walk(root / name):
                for fn in sorted(files):
                    path = Path(dirpath) / fn
                    if fn.startswith("."):
                        continue
                    try:
                        with Image.open(path) as im:
                            im.verify()
                        self.items.append((path, label))
                    except Exception:
                        bad += 1
        self.skipped = bad
        if bad:
            warnings.warn(f"{root}: skipped {bad} unreadable image file(s)", stacklevel=2)
        if not self.items:
            raise UserError(f"data folder {root} has no readable images")

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return decodable_item(self, i, "folder")


def list_images(root) -> list[Path]:
    """Image files under ``root``, recursively, sorted; hidden files and folders left out."""
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


class ImageFiles(torch.utils.data.Dataset):
    """Every image under a folder (``images:PATH``), resized and centre-cropped; no classes (label 0)."""

    classes = ()
    captioned = False

    def __init__(self, root, resolution: int):
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"image folder {root} does not exist")
        self.files, self.resolution = list_images(root), resolution
        if not self.files:
            raise UserError(f"{root} has no images (looked for {' '.join(sorted(IMAGE_SUFFIXES))}, recursively)")

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with Image.open(self.files[i]) as im:
            return to_tensor(fit(im.convert("RGB"), self.resolution)), 0


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


def _clean_caption(text) -> str:
    return " ".join(text.split()) if isinstance(text, str) else ""


class CaptionFiles(torch.utils.data.Dataset):
    """``captions:PATH``: every image under PATH with a same-name ``.txt`` caption beside it,
    or the ``PATH/captions.jsonl`` manifest (lines ``{"file": ..., "text": ...}``, files
    relative to PATH) when there is one. Unreadable or missing images and bad or missing
    captions are skipped and counted in one warning (which names the first caption that is not
    UTF-8); a manifest that is not UTF-8 is one error line."""

    classes = ()
    captioned = True
    MANIFEST = "captions.jsonl"

    def __init__(self, root, resolution: int):
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"caption folder {root} does not exist")
        self.resolution = resolution
        self.counts = {"unreadable image": 0, "missing image": 0, "bad caption": 0, "caption not UTF-8": 0}
        self.first_not_utf8 = None  # (caption file, byte offset)
        manifest = root / self.MANIFEST
        pairs = self._manifest(root, manifest) if manifest.is_file() else self._txt(root)
        self.items = []
        for path, text in pairs:
            if not path.is_file():
                self.counts["missing image"] += 1
                continue
            try:
                with Image.open(path) as im:
                    im.verify()
            except Exception:
                self.counts["unreadable image"] += 1
                continue
            self.items.append((path, text))
        self.skipped = sum(self.counts.values())
        if self.skipped:
            what = ", ".join(f"{v} {k}(s)" for k, v in self.counts.items() if v)
            if self.first_not_utf8:
                what += (f" (the first: {self.first_not_utf8[0]}, a bad byte at offset {self.first_not_utf8[1]}; "
                         "save captions as UTF-8)")
            warnings.warn(f"{root}: skipped {self.skipped} item(s): {what}", stacklevel=2)
        if not self.items:
            how = f"lines of {manifest}" if manifest.is_file() else "images with a same-name .txt caption"
            raise UserError(f"{root} has no usable captioned images (looked for {how})")

    def _manifest(self, root: Path, manifest: Path) -> list:
        out = []
        for line in decode_utf8(manifest.read_bytes(), manifest, "caption manifest").split("\n"):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                file, text = rec["file"], _clean_caption(rec["text"])
            except (ValueError, KeyError, TypeError):
                self.counts["bad caption"] += 1
                continue
            if not isinstance(file, str) or not file or not text:
                self.counts["bad caption"] += 1
                continue
            out.append((root / file, text))
        return out

    def _txt(self, root: Path) -> list:
        out = []
        for path in list_images(root):
            try:
                text = _clean_caption(path.with_suffix(".txt").read_text(encoding="utf-8"))
            except UnicodeDecodeError as e:
                self.counts["caption not UTF-8"] += 1
                self.first_not_utf8 = self.first_not_utf8 or (path.with_suffix(".txt"), e.start)
                continue
            except OSError:
                text = ""
            if not text:
                self.counts["bad caption"] += 1
                continue
            out.append((path, text))
        return out

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return decodable_item(self, i, "caption folder")


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
