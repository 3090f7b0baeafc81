"""Seeds -> the per-image random generators of a sampling run.

Image j of a run has its own ``torch.Generator`` seeded with its seed (a CLI's ``--seed + j``),
so an image depends on its seed alone, not on its batch. Seeds are whole numbers in
[0, :data:`MAX_SEED`]; anything else is one line.
"""
from __future__ import annotations

import numbers
import operator

import torch

from hart.common.errors import UserError

MAX_SEED = 2**63 - 1


def check_seeds(seeds) -> list[int]:
    """The seeds as ints, or one line for one that is not a whole number in [0, MAX_SEED]."""
    out = []
    for s in seeds:
        try:
            if isinstance(s, (bool, str, bytes)):
                raise TypeError
            v = operator.index(s) if isinstance(s, numbers.Integral) else None  # exact, however large
            if v is None:
                if not float(s).is_integer():
                    raise TypeError
                v = int(s)
        except (TypeError, ValueError, OverflowError):
            raise UserError(f"a seed must be a whole number, got {s!r}") from None
        if not 0 <= v <= MAX_SEED:
            raise UserError(f"seed {v} is out of range: seeds run from 0 to {MAX_SEED} (2**63 - 1), and an image's "
                            "seed is the first seed plus its index")
        out.append(v)
    return out


def make_generators(seeds, device="cpu") -> list[torch.Generator]:
    """One ``torch.Generator`` per image, seeded with that image's seed (:func:`check_seeds`)."""
    return [torch.Generator(device=device).manual_seed(s) for s in check_seeds(seeds)]
