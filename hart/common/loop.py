"""Small pieces both trainers share: LR schedule, device choice, the NaN stop. Plumbing leaf."""
from __future__ import annotations

import math

import torch

from hart.common.errors import UserError


def warmup_cosine(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from ``peak`` to ``floor * peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def set_lr(optimizers, lr: float) -> None:
    for opt in optimizers:
        for g in opt.param_groups:
            g["lr"] = lr


def check_positive(args, *names: str) -> None:
    """One line for the first of ``args.<name>`` that is not a positive number."""
    for name in names:
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")


def nonfinite_loss(value: float, step: int, out, saved_step: int) -> UserError:
    """The one-line stop for a NaN/inf loss; the last good checkpoint is untouched."""
    return UserError(
        f"loss became {value} at step {step}; stopping. The last good checkpoint is in {out} "
        f"(step {saved_step}). Try a lower --lr, then --resume."
    )
