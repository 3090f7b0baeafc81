"""User-facing errors: one clear line, never a traceback.

Plumbing leaf: imports nothing else of the project.
"""
from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """Bad input from the user. The CLI prints ``error: <message>`` and exits with 2."""


def cli_entry(main):
    """Wrap a ``main(argv=None)`` so a :class:`UserError` becomes one line on stderr."""

    @functools.wraps(main)
    def wrapper(argv=None, **kwargs):
        try:
            return main(argv, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper
