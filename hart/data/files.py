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


class _ImageFileSet(torch.utils.data.Dataset):
    """What the datasets of a user's files share: ``items`` of (path, target), each read by
    :func:`decodable_item`; ``what`` names the set in its error."""

    what = "folder"

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return decodable_item(self, i, self.what)


class ImageFolder(_ImageFileSet):
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
        loose = [p for p in root.iterdir()
                 if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
        if loose and self.items:
            warn(f"{root}: {len(loose)} image(s) outside the class folders left out (the first: {sorted(loose)[0].name}); "
                 "move them into a class folder, or read the folder as images:PATH (no classes)")
        if not self.items:
            raise UserError(f"data folder {root} has no readable images in its class folders")


def _visible_files(root, suffixes) -> list[Path]:
    """Files under ``root`` with one of ``suffixes`` (any case), recursively, sorted; hidden
    files and folders left out."""
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in suffixes and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def list_images(root) -> list[Path]:
    """Image files under ``root``, recursively, sorted; hidden files and folders left out."""
    return _visible_files(root, IMAGE_SUFFIXES)


def list_captions(root) -> list[Path]:
    """``.txt`` files under ``root``, recursively, sorted; hidden files and folders left out."""
    return _visible_files(root, {".txt"})


class ImageFiles(_ImageFileSet):
    """Every image under a folder (``images:PATH``), resized and centre-cropped; no classes
    (label 0). Unreadable files are skipped, in one warning line naming the first."""

    classes = ()
    captioned = False
    what = "image folder"

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



# ----------------------------------------------------------------------------- captioned

def _clean_caption(text) -> str:
    return " ".join(text.split()) if isinstance(text, str) else ""


class CaptionFiles(_ImageFileSet):
    """``captions:PATH``: every image under PATH with a same-name ``.txt`` caption beside it,
    or the ``PATH/captions.jsonl`` manifest (lines ``{"file": ..., "text": ...}``, files
    relative to PATH) when there is one. What cannot be used (an unreadable or missing image, an
    image without a caption or a caption without an image, an empty caption, a caption file
    that is not UTF-8, a manifest line that is not an entry) is skipped, in one warning line
    that counts each kind and names its first; a manifest that is not UTF-8 is one error line."""

    classes = ()
    captioned = True
    what = "caption folder"
    MANIFEST = "captions.jsonl"
    # kind -> (singular, plural), in the order the warning lists them
    KINDS = {"unreadable": ("unreadable image", "unreadable images"),
             "missing": ("missing image", "missing images"),
             "uncaptioned": ("image without a caption", "images without a caption"),
             "orphan": ("caption without an image", "captions without an image"),
             "empty": ("empty caption", "empty captions"),
             "not_utf8": ("caption not UTF-8 (save captions as UTF-8)", "captions not UTF-8 (save captions as UTF-8)"),
             "bad_line": ("manifest line that is no entry", "manifest lines that are no entry")}

    def __init__(self, root, resolution: int):
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"caption folder {root} does not exist")
        self.resolution = resolution
        self.skips = {kind: [] for kind in self.KINDS}  # kind -> where (the first is named)
        manifest = root / self.MANIFEST
        pairs = self._manifest(root, manifest) if manifest.is_file() else self._txt(root)
        self.items, unreadable = [], []
        for path, text, where in pairs:
            if not path.is_file():
                self.skips["missing"].append(where)
            elif readable_images([path], unreadable):
                self.items.append((path, text))
        self.skips["unreadable"] = [f"{p}: {why}" for p, why in unreadable]
        self.counts = {kind: len(v) for kind, v in self.skips.items()}
        # a .txt without an image is said, not counted: it may be a README rather than a lost caption
        self.skipped, self.undecodable = sum(n for k, n in self.counts.items() if k != "orphan"), set()
        if self.skipped or self.counts["orphan"]:
            counted = [k for k in self.KINDS if k != "orphan"]
            said = [f"skipped {self.skipped} item(s): {self.skip_summary(counted)}"] if self.skipped else []
            if self.counts["orphan"]:
                said.append(f"not counted: {self.skip_summary(['orphan'])}")
            warn(f"{root}: " + "; ".join(said))
        if not self.items:
            how = f"lines of {manifest}" if manifest.is_file() else "images with a same-name .txt caption"
            raise UserError(f"{root} has no usable captioned images (looked for {how})")

    def skip_summary(self, kinds) -> str:
        """``1 missing image (line 8: gone.png), 2 empty captions (the first: a.txt)``, for
        ``kinds`` (keys of :attr:`KINDS`)."""
        parts = []
        for kind in kinds:
            where = self.skips[kind]
            if where:
                one, many = self.KINDS[kind]
                parts.append(f"{len(where)} {one if len(where) == 1 else many} "
                             f"({'' if len(where) == 1 else 'the first: '}{where[0]})")
        return ", ".join(parts)

    def _manifest(self, root: Path, manifest: Path) -> list:
        out = []
        lines = decode_utf8(manifest.read_bytes(), manifest, "caption manifest").split("\n")
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                file, text = rec["file"], _clean_caption(rec["text"])
            except (ValueError, KeyError, TypeError):
                self.skips["bad_line"].append(f"line {n}")
                continue
            if not isinstance(file, str) or not file:
                self.skips["bad_line"].append(f"line {n}")
            elif not text:
                self.skips["empty"].append(f"line {n}")
            else:
                out.append((root / file, text, f"line {n}: {file}"))
        return out

    def _txt(self, root: Path) -> list:
        out, images = [], list_images(root)
        for path in images:
            txt = path.with_suffix(".txt")
            try:
                text = _clean_caption(txt.read_text(encoding="utf-8"))
            except UnicodeDecodeError as e:
                self.skips["not_utf8"].append(f"{txt}, a bad byte at offset {e.start}")
                continue
            except OSError:
                self.skips["uncaptioned"].append(str(path))
                continue
            if not text:
                self.skips["empty"].append(str(txt))
                continue
            out.append((path, text, str(path)))
        stems = {p.with_suffix("") for p in images}
        self.skips["orphan"] = [str(t) for t in list_captions(root) if t.with_suffix("") not in stems]
        return out
