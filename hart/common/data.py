"""Dataset specs shared by every command (``--data`` of the trainers and evaluators,
``--images`` / ``--ref`` of ``hart fid``): one grammar, one meaning everywhere.

    fashion-mnist[:split]  IDX files of Debian's dataset-fashion-mnist (or under --data-dir)
    synthetic[:split]      procedural coloured shapes with class labels (tests)
    folder:PATH            one subfolder per class, any image Pillow reads
    images:PATH            every image file under PATH (recursively), no classes

Every dataset yields ``(image, label)`` with image a float tensor (3, R, R) in [-1, 1]
and has ``.classes`` (class names). Plumbing leaf: imports nothing else of the project
except :mod:`hart.common.errors`.
"""
from __future__ import annotations

import gzip
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import default_collate

from hart.common.errors import UserError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
SPLITS = ("train", "test")
IMAGE_SUFFIXES = {".bmp", ".jpg", ".jpeg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"}


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
        # a file can pass verify() and still fail to decode: fall through to the next one
        for j in range(len(self.items)):
            path, label = self.items[(i + j) % len(self.items)]
            try:
                with Image.open(path) as im:
                    return to_tensor(fit(im.convert("RGB"), self.resolution)), label
            except Exception:
                self.skipped += 1
        raise UserError("no image in the folder could be decoded")


def list_images(root) -> list[Path]:
    """Image files under ``root``, recursively, sorted; hidden files and folders left out."""
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


class ImageFiles(torch.utils.data.Dataset):
    """Every image under a folder (``images:PATH``), resized and centre-cropped; no classes (label 0)."""

    classes = ()

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


# ----------------------------------------------------------------------------- specs

DATASETS = {"fashion-mnist": FashionMNIST, "synthetic": Synthetic}  # named sets with train/test splits
SPEC_HELP = ("dataset: fashion-mnist or synthetic (NAME:test for the test split), folder:PATH (one "
             "subfolder per class) or images:PATH (all images under PATH, no classes)")


@dataclass(frozen=True)
class DataSpec:
    """A parsed spec: ``kind`` is ``dataset`` (a named set), ``folder`` or ``images``; ``name``
    is the dataset name or the path; ``split`` is the one named in the spec, or None."""

    kind: str
    name: str
    split: str | None = None

    @property
    def label(self) -> str:
        if self.kind == "dataset":
            return f"{self.name}:{self.split or 'train'}"
        return f"{self.kind}:{self.name}"


def parse_spec(text: str) -> DataSpec:
    """The one grammar of data specs (module doc); a bad spec is one clear line."""
    for kind in ("folder", "images"):
        if text.startswith(kind + ":"):
            path = text[len(kind) + 1:]
            if not path:
                raise UserError(f"{kind}: needs a path, e.g. {kind}:/data/my_images")
            return DataSpec(kind, path)
    name, split = text, None
    if ":" in text:
        name, split = text.rsplit(":", 1)
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r} in {text!r}; choose one of: {', '.join(SPLITS)}")
    if name in DATASETS:
        return DataSpec("dataset", name, split)
    raise UserError(f"unknown dataset {text!r}; {SPEC_HELP}")


def add_data_arguments(parser, split_default: str | None = None) -> None:
    """``--data`` / ``--data-dir`` (and ``--split`` when ``split_default`` is given) for a CLI."""
    parser.add_argument("--data", required=True, help=SPEC_HELP)
    parser.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files (default: Debian's)")
    if split_default is not None:
        parser.add_argument("--split", default=split_default, choices=list(SPLITS))


def make_dataset(spec: str, split: str = "train", resolution: int = 32, data_dir=None):
    """Build the dataset named by ``spec`` (see :func:`parse_spec`). ``split`` (train or test)
    applies to named datasets, unless the spec names its own."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    d = parse_spec(spec)
    if d.kind == "folder":
        return ImageFolder(d.name, resolution)
    if d.kind == "images":
        return ImageFiles(d.name, resolution)
    split = d.split or split
    if d.name == "fashion-mnist":
        return FashionMNIST(split, resolution, data_dir)
    return DATASETS[d.name](split, resolution)


def infinite_batches(dataset, batch_size: int, generator: torch.Generator, start_step: int = 0,
                     rank: int = 0, world_size: int = 1):
    """Yield collated batches (e.g. [images, labels]) forever, reshuffled each epoch by ``generator``.

    Resumable: the order depends only on the generator's seed state and ``start_step``
    (the batches before ``start_step`` are skipped without loading). With ``world_size``
    > 1 each rank reads its own shard of every epoch's permutation.
    """
    n = len(dataset)
    per_epoch = max(1, n // (batch_size * world_size))
    epoch, i = divmod(start_step, per_epoch)
    while True:
        g = torch.Generator().manual_seed(int(generator.initial_seed()) + epoch)
        perm = torch.randperm(n, generator=g)
        while i < per_epoch:
            idx = perm[(i * world_size + rank) * batch_size:(i * world_size + rank + 1) * batch_size]
            yield default_collate([dataset[int(j)] for j in idx])
            i += 1
        epoch, i = epoch + 1, 0
