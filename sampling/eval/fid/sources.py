"""Where ``hart fid`` reads images: a data spec (the grammar of ``--data``, see
:mod:`hart.data.datasets`), a folder of image files taken as they are, or saved statistics;
each image clean-resized for the feature extractor."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hart.data.datasets import make_dataset, parse_spec
from hart.data.files import IMAGE_SUFFIXES, list_images, read_image
from hart.common.errors import UserError


@dataclass
class Source:
    """Where images (or statistics) come from: ``folder``, ``dataset`` or ``stats``."""

    kind: str
    path: str = ""  # folder or .npz
    spec: str = ""  # dataset spec
    split: str = "train"
    files: list = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.spec}:{self.split}" if self.kind == "dataset" else self.path


def parse_source(text: str, allow_stats: bool, flag: str = "--ref") -> Source:
    """A data spec of :func:`hart.data.datasets.parse_spec` (the same grammar as ``--data``),
    a bare folder (``images:``, its files as they are), or (if allowed) a ``.npz``; errors name
    ``flag``."""
    if text.startswith("images:"):
        return folder_source(text[len("images:"):] or ".")
    if text.endswith(".npz"):
        if not allow_stats:
            raise UserError(f"{text} is a statistics file: pass it as --ref, --images needs images")
        if not Path(text).is_file():
            raise UserError(f"no such statistics file: {text}")
        return Source("stats", path=text)
    if Path(text).is_dir():
        return folder_source(text)
    if text.startswith(("folder:", "captions:")):  # path datasets: their images, resized like --data
        parse_spec(text)
        return Source("dataset", spec=text, split="train")
    if Path(text).is_file():
        takes = "a folder of images, a data spec or a .npz of statistics" if allow_stats else "a folder of images or a data spec"
        raise UserError(f"{flag} {text} is a file; {flag} takes {takes}")
    if "/" in text or Path(text).suffix:
        raise UserError(f"{flag} {text}: no such folder" + (" or .npz file" if allow_stats else ""))
    try:
        d = parse_spec(text)
    except UserError as e:
        what = "a folder, a .npz of statistics, or a data spec" if allow_stats else "a folder of images or a data spec"
        raise UserError(f"{flag} {text!r} is not a folder here nor a known dataset: give {what} ({e})") from None
    return Source("dataset", spec=d.name, split=d.split or "train")


def folder_source(path: str) -> Source:
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"no such folder: {path}")
    files = list_images(root)
    if not files:
        raise UserError(f"{path} has no images (looked for {' '.join(sorted(IMAGE_SUFFIXES))}, recursively)")
    return Source("folder", path=str(path), files=files)


def first_image_size(files) -> int | None:
    from PIL import Image

    for p in files[:50]:
        try:
            with Image.open(p) as im:
                return min(im.size)
        except Exception:
            continue
    return None


class _ReadFile:
    def __init__(self, files):
        self.files = files

    def __call__(self, i):
        return np.asarray(read_image(self.files[i]))  # as training reads files: upright, alpha on white


class _ReadDataset:
    def __init__(self, dataset):
        self.dataset = dataset

    def __call__(self, i):
        return self.dataset[i][0]  # (3, R, R) in [-1, 1]


class CleanImages:
    """Index -> ((3, S, S) float32 in [0, 255] after the clean resize, readable flag).

    ``load(i)`` returns image i as a PIL image, an (H, W, 3) uint8 array or a (3, H, W)
    tensor in [-1, 1]; an image it cannot read is flagged and skipped, not fatal.
    """

    def __init__(self, load, n: int, size: int):
        self.load, self.n, self.size = load, n, size
        self.first_unreadable = None  # set by the embedding loop: what to name in its warning

    def name(self, i: int) -> str:
        """Image i as a user finds it: its file, or its index in a dataset."""
        files = getattr(self.load, "files", None)
        return str(files[i]) if files is not None else f"image {i}"

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        import torch

        from sampling.eval.features import clean_resize, to_uint8_hwc

        try:
            img = to_uint8_hwc(self.load(i))
        except Exception:  # unreadable or undecodable: skipped and counted
            return torch.zeros(3, self.size, self.size), False
        return torch.from_numpy(clean_resize(img, self.size)).permute(2, 0, 1), True


def image_set(source: Source, resolution, num, size: int, data_dir=None) -> CleanImages:
    """The (first ``num``) images of a folder or dataset source, clean-resized to ``size``."""
    if source.kind == "folder":
        files = source.files[:num] if num else source.files
        return CleanImages(_ReadFile(files), len(files), size)
    ds = make_dataset(source.spec, source.split, int(resolution), data_dir)
    n = min(num, len(ds)) if num else len(ds)
    return CleanImages(_ReadDataset(ds), n, size)
