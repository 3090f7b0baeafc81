"""User-facing errors: one clear line, never a traceback.

Plumbing leaf: imports nothing else of the project.
"""
from __future__ import annotations

import errno
import functools
import sys


class UserError(Exception):
    """Bad input from the user. The CLI prints ``error: <message>`` and exits with 2."""

    exit_code = 2


class FaultError(UserError):
    """A fault of the machine, not of the input (a full disk, a read-only folder): one line,
    exit status 1, like any :class:`OSError` that reaches the CLI."""

    exit_code = 1


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# what the writers that wrap the OS error say instead: safetensors (SafetensorError: "... No
# space left on device" / "StorageFull"), torch.save's zip writer ("unexpected pos ... vs ...",
# "file write failed"); a full disk is the usual cause of a short write
_DISK_FULL_TEXT = ("no space left on device", "storagefull", "disk quota exceeded", "unexpected pos",
                   "file write failed")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C in a training loop, with what became of the run (its last checkpoint, how to go on)."""


def is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` (or an exception it was raised from) says the disk is full."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            return True
        if any(t in str(e).lower() for t in _DISK_FULL_TEXT):
            return True
        e = e.__cause__ or e.__context__
    return False


def os_reason(e: OSError) -> str:
    """What went wrong, in words: "permission denied", "the disk is full (...)"."""
    if is_disk_full(e):
        return "the disk is full (no space left on device)"
    what = e.strerror or str(e) or type(e).__name__
    return what[:1].lower() + what[1:]


def os_error_line(e: OSError) -> str:
    """One line for an OS error: what went wrong and on which path (no errno, no repr)."""
    if is_disk_full(e):  # the file being written: a copy's destination
        where = e.filename2 if e.filename2 is not None else e.filename
        return f"{os_reason(e)} while writing {where}" if where is not None else os_reason(e)
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    return f"{os_reason(e)}: {where}" if where else os_reason(e)


def fault_line(e: OSError) -> str:
    """:func:`os_error_line` with what to do about it."""
    hint = "free some space and run the command again" if is_disk_full(e) else ""
    return "; ".join(s for s in (os_error_line(e), hint) if s)


def cli_entry(main):
    """Wrap a ``main(argv=None)`` so a :class:`UserError` (exit 2; a :class:`FaultError`: 1) or
    an :class:`OSError` (exit 1) becomes one line on stderr."""

    @functools.wraps(main)
    def wrapper(argv=None, **kwargs):
        try:
            return main(argv, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(e.exit_code) from None
        except OSError as e:
            print(f"error: {fault_line(e)}", file=sys.stderr)
            raise SystemExit(1) from None
        except KeyboardInterrupt as e:
            print(f"interrupted: {e}" if isinstance(e, Interrupted) and str(e) else "interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper

