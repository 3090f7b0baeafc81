"""Datasets read from a user's files: ``folder:PATH`` (one subfolder per class),
``images:PATH`` (every image, no classes) and ``captions:PATH`` (images with captions), and how
every command reads an image file (:func:`read_image`: upright, transparency on white, 16-bit
scaled). Unreadable files are skipped and named in one warning line; a file that passes the
header check but fails to decode later is named and replaced by the next one.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from hart.common.errors import UserError
from hart.common.fs import decode_utf8
from hart.data.sources import fit, to_tensor

IMAGE_SUFFIXES = {".bmp", ".gif", ".jpg", ".jpeg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"}
SKIP_FOLDERS = {"__MACOSX"}  # macOS zip archives' resource forks: never images of a class


def warn(message: str) -> None:
    """One line on stderr: ``warning: message``."""
    print(f"warning: {message}", file=sys.stderr)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image -> RGB as every dataset reads files: 16-bit and 32-bit grey scaled to 8 bits
    (Pillow's own conversion clips them at 255), transparency laid on white."""
    if img.mode.startswith("I") or img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        top = a.max() if a.size else 0.0
        if img.mode == "F" and top <= 1.0:
            a = a * 255.0
        elif img.mode.startswith("I;16") or top > 255:
            a = a / (257.0 if top <= 65535 else top / 255.0)
        img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def read_image(path) -> Image.Image:
    """An image file as RGB (:func:`to_rgb`), turned upright by its EXIF orientation (a phone's
    photo). Raises what Pillow raises for a file it cannot decode."""
    with Image.open(path) as im:
        return to_rgb(ImageOps.exif_transpose(im))


def decodable_item(dataset, i: int, what: str):
    """(image, target) of ``dataset.items[i]`` (path, target), or of the next item that decodes:
    a file can pass verify() and still fail to decode (a truncated JPEG): each such file counts
    in ``skipped`` and is named in one warning line, once per process."""
    items = dataset.items
    for j in range(len(items)):
        path, target = items[(i + j) % len(items)]
        try:
            return to_tensor(fit(read_image(path), dataset.resolution)), target
        except Exception as e:
            if path not in dataset.undecodable:
                dataset.undecodable.add(path)
                dataset.skipped += 1
                warn(f"{path} cannot be decoded ({_reason(e)}); another image is used in its place")
    raise UserError(f"no image in the {what} could be decoded")


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def readable_images(paths, skipped: list) -> list:
    """The paths whose header Pillow reads (``verify()``); the others are appended to ``skipped``
    as (path, reason)."""
    ok = []
    for path in paths:
        try:
            with Image.open(path) as im:
                im.verify()
            ok.append(path)
        except Exception as e:
            skipped.append((path, _reason(e)))
    return ok


def skip_note(skipped: list) -> str:
    """``N unreadable image file(s) (the first: PATH: why)`` of (path, reason) pairs."""
    path, why = skipped[0]
    return f"{len(skipped)} unreadable image file(s) (the first: {path}: {why})"


class ImageFolder(torch.utils.data.Dataset):
    """One subfolder per class (``folder:PATH``), any image Pillow reads, nested folders too.
    Hidden files and folders and ``__MACOSX`` are left out; unreadable files, class folders
    without an image and images outside any class folder are skipped, each kind in one
    warning line naming them."""

    captioned = False

    def __init__(self, root, resolution: int):
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"data folder {root} does not exist")
        self.resolution = resolution
        folders = sorted(d.name for d in root.iterdir()
                         if d.is_dir() and not d.name.startswith(".") and d.name not in SKIP_FOLDERS)
        if not folders:
            raise UserError(f"data folder {root} has no class subfolders (expected {root}/<class>/<image>)")
        skipped, per_class = [], {}
        for name in folders:
            files = []
            for dirpath, dirs, names in os.walk(root / name):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_FOLDERS)
                files += [Path(dirpath) / fn for fn in sorted(names) if not fn.startswith(".")]
            per_class[name] = readable_images(files, skipped)
        empty = [n for n in folders if not per_class[n]]
        self.classes = [n for n in folders if per_class[n]]
        self.items = [(p, label) for label, n in enumerate(self.classes) for p in per_class[n]]
        self.skipped, self.undecodable = len(skipped), set()
        if skipped:
            warn(f"{root}: skipped {skip_note(skipped)}")
        if empty and self.items:
            warn(f"{root}: {len(empty)} class folder(s) without a readable image left out (no class made): "
                 f"{', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}")
        loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if loose and self.items:
            warn(f"{root}: {len(loose)} image(s) outside the class folders left out (the first: {sorted(loose)[0].name}); "
                 "move them into a class folder, or read the folder as images:PATH (no classes)")
        if not self.items:
            raise UserError(f"data folder {root} has no readable images in its class folders")

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
    """Every image under a folder (``images:PATH``), resized and centre-cropped; no classes
    (label 0). Unreadable files are skipped, in one warning line naming the first."""

    classes = ()
    captioned = False

    def __init__(self, root, resolution: int):
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"image folder {root} does not exist")
        self.resolution = resolution
        files = list_images(root)
        if not files:
            raise UserError(f"{root} has no images (looked for {' '.join(sorted(IMAGE_SUFFIXES))}, recursively)")
        skipped = []
        self.files = readable_images(files, skipped)
        self.items = [(p, 0) for p in self.files]
        self.skipped, self.undecodable = len(skipped), set()
        if skipped:
            warn(f"{root}: skipped {skip_note(skipped)}")
        if not self.files:
            raise UserError(f"{root} has no readable images")

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        return decodable_item(self, i, "image folder")



# ----------------------------------------------------------------------------- captioned

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
        self.items, unreadable = [], []
        for path, text in pairs:
            if not path.is_file():
                self.counts["missing image"] += 1
            elif readable_images([path], unreadable):
                self.items.append((path, text))
        self.counts["unreadable image"] = len(unreadable)
        self.skipped, self.undecodable = sum(self.counts.values()), set()
        if self.skipped:
            what = ", ".join(f"{v} {k}(s)" for k, v in self.counts.items() if v)
            if self.first_not_utf8:
                what += (f" (the first: {self.first_not_utf8[0]}, a bad byte at offset {self.first_not_utf8[1]}; "
                         "save captions as UTF-8)")
            elif unreadable:
                what += f" (the first unreadable: {unreadable[0][0]}: {unreadable[0][1]})"
            warn(f"{root}: skipped {self.skipped} item(s): {what}")
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
