"""Files the user hands in or asks for, checked before any work starts: text files must be
UTF-8 (one line naming the file and the first bad byte), output paths must be writable (their
folder is made when missing; one line when it cannot be), and a folder that a command would
replace must be one of its own kind, apart from what the command reads (:func:`prepare_out_dir`).

Plumbing leaf: imports nothing else of the project except :mod:`hart.common.errors`.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hart.common.errors import UserError, os_reason

CONFIG_NAME = "config.json"  # a model folder's config (beside model.safetensors: hart.common.io)

_BOM = b"\xef\xbb\xbf"


def decode_utf8(data: bytes, path, what: str = "file") -> str:
    """``data`` (the bytes of ``path``) as text; a UTF-8 byte-order mark is dropped. Anything
    else than UTF-8: one line naming the file, the line and byte offset of the first bad byte."""
    skip = len(_BOM) if data.startswith(_BOM) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = skip + e.start
        line = data[:at].count(b"\n") + 1
        raise UserError(f"{what} {path} is not UTF-8 text (byte 0x{data[at]:02x} at offset {at}, line {line}); "
                        "save it as UTF-8") from None


def read_text(path, what: str = "file") -> str:
    """The UTF-8 text of a file the user names (``what`` names it in messages: "prompts file")."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} {p} does not exist" if not p.exists() else f"{what} {p} is not a file")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {what} {p}: {os_reason(e)}") from None
    return decode_utf8(data, p, what)


def read_prompt_lines(path) -> list[tuple[int, str]]:
    """A prompts file: one prompt a line, blank lines and ``#`` comments skipped ->
    [(line number, prompt)]; one line naming the file if no prompt is left."""
    lines = [(n, ln.strip()) for n, ln in enumerate(read_text(path, "prompts file").splitlines(), 1)]
    lines = [(n, ln) for n, ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise UserError(f"prompts file {path} has no prompts (one per line)")
    return lines


def _writable_folder(folder: Path, flag: str, target: Path) -> None:
    """Make ``folder`` (and its parents) when missing and check that a file can be created in it."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{flag} {target}: {existing} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{flag} {target}: cannot make the folder {folder}: {os_reason(e)}") from None
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UserError(f"{flag} {target}: cannot write in {folder}: {os_reason(e)}") from None


def output_file(path, flag: str = "--out") -> Path:
    """``path`` of a file to write later: its folder made when missing; one line (naming
    ``flag``) when it cannot be made or written in, or when ``path`` is a folder."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{flag} {p} is a folder; give a file name")
    _writable_folder(p.parent, flag, p)
    return p


def output_dir(path, flag: str = "--out", create: bool = True) -> Path:
    """``path`` of a folder to write into later: made now (``create``), or only its parent
    (a folder written aside and renamed into place); one line when that cannot be done."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{flag} {p} is a file, not a folder")
    _writable_folder(p if create else p.parent, flag, p)
    return p


def _model_config(folder: Path) -> bool:
    """``folder`` holds a model this package wrote: a config.json naming one of its classes."""
    try:
        d = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and d.get("_class", d.get("_class_name")) in ("HybridTokenizer", "HARTGenerator")


def written_here(folder: Path, kind: str) -> bool:
    """``folder`` is one this package writes: ``kind`` "model" (one model's folder, or a model
    folder of tokenizer/ + generator/) or "tokens" (a token cache of ``hart extract-tokens``)."""
    folder = Path(folder)
    if kind == "tokens":
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return (folder / "tokens.safetensors").is_file() and isinstance(meta, dict) and "tokenizer_fingerprint" in meta
    return _model_config(folder) or all(_model_config(folder / sub) for sub in ("tokenizer", "generator"))


def prepare_out_dir(out, overwrite: bool, sources=(), flag: str = "--out", kind: str = "model") -> Path:
    """``out`` for a new folder of ``kind`` (written aside, then swapped in by :func:`atomic_dir`).

    Refused when it holds anything, unless ``overwrite``; with ``overwrite``, refused still when
    it is not a folder of that kind this package wrote (:func:`written_here`: replacing it would
    delete someone's files), and always when it is, holds or lies inside one of ``sources`` (the
    folders or files the command reads: the swap would delete them), when it holds a training
    run (``train_state/``: its checkpoints), or when it is the ``tokenizer/`` or ``generator/``
    of a model folder. Also refused when it cannot be written (:func:`output_dir`: the parent
    is made now)."""
    out = Path(out)
    target = out.resolve()
    for src in sources:
        if src is None:
            continue
        s = Path(src).resolve()
        if s == target or target in s.parents or s in target.parents:
            raise UserError(f"{flag} {out} overlaps {src}, which this command reads: writing it would delete or "
                            f"change its input; choose an {flag} outside it")
    parent = target.parent
    if kind == "model" and target.name in ("tokenizer", "generator") and written_here(parent, "model"):
        raise UserError(f"{flag} {out} is the {target.name}/ of the model folder {parent}: writing a model there "
                        f"would break that folder; choose a folder of its own")
    if out.is_dir() and (out / "train_state").is_dir():
        raise UserError(f"{out} holds a training run (train_state/: its checkpoints for --resume); --overwrite "
                        f"never replaces a run: choose another {flag}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        ours = out.is_dir() and written_here(out, kind)
        what = "token cache" if kind == "tokens" else "model folder"
        if not ours:  # said at once: --overwrite would be refused too
            raise UserError(f"{out} already exists and is not a {what} written by this tool (--overwrite replaces "
                            f"only such a folder): choose another {flag}")
        if not overwrite:
            raise UserError(f"{out} already holds a {what}; choose another {flag} or pass --overwrite to replace it")
    return output_dir(out, create=False)  # its parent made and writable before any work starts
