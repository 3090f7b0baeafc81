"""Command-line pieces every command shares: the ``--device`` flag and the examples a
command's ``--help`` shows below its options.

Plumbing leaf: imports nothing else of the project (and not torch: ``--help`` stays fast).
"""
from __future__ import annotations


def add_device_argument(p) -> None:
    """``--device``, default ``auto`` (:func:`hart.common.dist.resolve_device`: a GPU when one
    is visible, else the CPU)."""
    p.add_argument("--device", default="auto",
                   help="auto (default: cuda when a GPU is visible, else cpu), cpu, cuda or cuda:N")


def examples_epilog(doc: str) -> str:
    """The part of a module docstring after ``Examples::``, headed ``examples:`` and without
    reST's markup (double backticks, roles such as ``:mod:`x```), for an ``argparse`` epilog."""
    import re

    text = doc.split("Examples::", 1)[1].replace("``", "")
    return "examples:" + re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text)
