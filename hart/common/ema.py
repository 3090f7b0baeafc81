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
        # one multi-tensor kernel per dtype group instead of one launch per tensor (a GPU step of a
        # large model otherwise spends milliseconds launching hundreds of tiny kernels)
        shadow, params = list(self.shadow.parameters()), [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(shadow, params, 1.0 - d)
        for s, b in zip(self.shadow.buffers(), model.buffers()):
            s.copy_(b)

    def warmup_decay(self, step: int) -> float:
        """Shorter memory early on, so the average does not carry the random init."""
        return min(self.decay, (1 + step) / (10 + step))
