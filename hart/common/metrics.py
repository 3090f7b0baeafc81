"""What a training run shows while it runs: ``OUT/metrics.jsonl`` always, TensorBoard event
files under ``OUT/tensorboard/`` when the ``tensorboard`` package is installed. Plumbing leaf.

    log = RunLog(out, start_step=trainer.step, resume=args.resume, enabled=dist.is_main)
    window.add(loss=..., psnr=...)                # every step
    log.scalars(step, window.means(), lr=lr)      # every --log-every steps: one JSONL line
    log.image("reconstructions", pil_image, step) # every --image-every steps
    log.close()

metrics.jsonl holds one JSON object per logging step: ``{"step": S, "time": unix seconds,
<metric>: value, ...}``. On ``--resume`` from a checkpoint at step S the lines after S (logged
after that checkpoint, then lost with the process) are dropped before appending, so every
step appears once; TensorBoard is told the same with ``purge_step``.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from hart.common.io import atomic_file

METRICS_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
INSTALL_HINT = "pip install 'hart-open[tensorboard]' (or: pip install tensorboard)"


def read_metrics(path) -> list[dict]:
    """The records of a metrics.jsonl (or of RUN_DIR/metrics.jsonl), in file order. A line
    that is not a JSON object with an integer step (a write cut short by a kill) is skipped."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_NAME
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():  # damaged bytes: a skipped line
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            out.append(rec)
    return out


def tensorboard_writer(logdir, purge_step: int | None = None, stream=None):
    """A ``SummaryWriter`` on ``logdir``, or None with one line on ``stream`` (stderr) saying
    how to install the package when it is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print(f"warning: TensorBoard logging is off: the tensorboard package is missing; {INSTALL_HINT}. "
              f"Metrics still go to {METRICS_NAME}.", file=stream or sys.stderr)
        return None
    return SummaryWriter(str(logdir), purge_step=purge_step)


class Window:
    """Means of the values added since the last :meth:`means` (the logging window)."""

    def __init__(self):
        self.sums, self.counts = {}, {}

    def add(self, **values) -> None:
        for k, v in values.items():
            v = float(v)
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1

    def means(self) -> dict:
        out = {k: self.sums[k] / self.counts[k] for k in self.sums}
        self.sums, self.counts = {}, {}
        return out


class Throughput:
    """Items per second over the seconds :meth:`add` was given since the last :meth:`rate`
    (the trainers time data loading and the step; checkpoints and image grids are left out)."""

    def __init__(self, clock=time.perf_counter):
        self.clock, self.seconds, self.items = clock, 0.0, 0

    def add(self, items: int, seconds: float) -> None:
        self.items += int(items)
        self.seconds += seconds

    def rate(self) -> float:
        r = self.items / self.seconds if self.seconds > 0 else float("nan")
        self.seconds, self.items = 0.0, 0
        return r


class RunLog:
    """metrics.jsonl + optional TensorBoard for one run folder; a no-op where ``enabled`` is
    False (every rank but 0 under torchrun).

    Args:
        out: the run folder.
        start_step: the step the run starts from (the checkpoint's on ``--resume``).
        resume: keep the lines up to ``start_step`` and append; otherwise start a new file.
        enabled: write anything at all.
        tensorboard: also write event files (skipped, with one line, without the package).
    """

    def __init__(self, out, *, start_step: int = 0, resume: bool = False, enabled: bool = True,
                 tensorboard: bool = True, stream=None):
        self.out = Path(out)
        self.path = self.out / METRICS_NAME
        self.enabled = enabled
        self.writer = None
        self._fh = None
        if not enabled:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        kept = []
        if resume and self.path.exists():
            kept = [r for r in read_metrics(self.path) if r["step"] <= start_step]
        with atomic_file(self.path) as tmp:  # the kept lines, or an empty file for a new run
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self._fh = open(self.path, "a")
        if tensorboard:
            self.writer = tensorboard_writer(self.out / TENSORBOARD_DIR,
                                             purge_step=start_step + 1 if resume else None, stream=stream)

    def scalars(self, step: int, values: dict, **more) -> None:
        """One JSONL line (and one TensorBoard scalar per value) for ``step``."""
        if not self.enabled:
            return
        values = {k: float(v) for k, v in {**values, **more}.items()}
        rec = {"step": int(step), "time": round(time.time(), 3)}
        rec.update({k: (v if math.isfinite(v) else None) for k, v in values.items()})
        self._fh.write(json.dumps(rec) + "\n")
        self._fh.flush()
        if self.writer is not None:
            for k, v in values.items():
                if math.isfinite(v):
                    self.writer.add_scalar(k, v, step)

    def image(self, tag: str, image, step: int) -> None:
        """A PIL image (an image grid) as a TensorBoard image."""
        if self.writer is None:
            return
        import numpy as np

        self.writer.add_image(tag, np.asarray(image.convert("RGB")), step, dataformats="HWC")

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
