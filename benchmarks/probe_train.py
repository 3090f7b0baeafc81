"""The training loop that the cached-residual head probes share (pca_head_probe.py,
grid_head_probe.py): AdamW, 100 warm-up steps then a cosine decay, random batches of the
training rows, the held-out loss every 250 steps, a checkpoint every 500 steps and at the end."""
from __future__ import annotations

import time

import torch
from tqdm import tqdm


def train_loop(params, loss_on, train: tuple, test: tuple, steps: int, batch_size: int, lr: float,
               g: torch.Generator, save) -> None:
    """``loss_on(*batch, generator, train: bool) -> loss``, batch a tuple of rows of ``train``
    (or of ``test``, 4 chunks of 500); ``save(step)`` writes a checkpoint (atomically)."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + torch.cos(torch.tensor(s / steps * 3.14159)).item()))
    t0, run = time.time(), 0.0
    for step in tqdm(range(steps), desc="train"):
        idx = torch.randint(0, train[0].shape[0], (batch_size,), generator=g)
        loss = loss_on(*(t[idx] for t in train), g, True)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        run = 0.98 * run + 0.02 * loss.item() if step else loss.item()
        if (step + 1) % 250 == 0:
            with torch.no_grad():
                gv = torch.Generator().manual_seed(1)
                val = sum(loss_on(*(t[s:s + 500] for t in test), gv, False).item() for s in range(0, 2000, 500)) / 4
            tqdm.write(f"step {step + 1} loss {run:.4f} test {val:.4f} {time.time() - t0:.0f}s")
        if (step + 1) % 500 == 0 or step + 1 == steps:
            save(step + 1)
