"""Files the user hands in or asks for, checked before any work starts: text files must be
UTF-8 (one line naming the file and the first bad byte), output paths must be writable (their
folder is made when missing; one line when it cannot be).

Plumbing leaf: imports nothing else of the project except :mod:`hart.common.errors`.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from hart.common.errors import UserError, os_reason

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
