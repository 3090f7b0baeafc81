"""Exponential moving average of a model's weights. Plumbing leaf."""
from __future__ import annotations

import copy

import torch


class EMA:
    """Keeps ``shadow``, a frozen copy of ``model`` whose float parameters track
    ``decay * shadow + (1 - decay) * param``; buffers (codebook, counters) are copied.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.999):
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, decay: float | None = None) -> None:
        d = self.decay if decay is None else decay
        for s, p in zip(self.shadow.parameters(), model.parameters()):
            s.lerp_(p.detach(), 1.0 - d)
        for s, b in zip(self.shadow.buffers(), model.buffers()):
            s.copy_(b)

    def warmup_decay(self, step: int) -> float:
        """Shorter memory early on, so the average does not carry the random init."""
        return min(self.decay, (1 + step) / (10 + step))
