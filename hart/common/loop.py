"""Small pieces both trainers share: LR schedule, positive-count checks, the NaN and disk-fault
stops, and the run folder's training state (``--resume``). Plumbing leaf."""
from __future__ import annotations

import contextlib
import errno
import math
import os
from pathlib import Path

from hart.common.errors import FaultError, Interrupted, UserError, is_disk_full, os_error_line
from hart.common.io import (atomic_dir, load_state, load_weights, read_json, resolve_dir, save_state, save_weights,
                            write_json)


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


def check_range(args, name: str, low: float, high: float, high_open: bool = False) -> None:
    """One line when ``args.<name>`` is not a finite number in [low, high] ([low, high) with
    ``high_open``)."""
    v = getattr(args, name)
    ok = math.isfinite(v) and low <= v and (v < high if high_open else v <= high)
    if not ok:
        bound = f"{high})" if high_open else f"{high}]"
        raise UserError(f"--{name.replace('_', '-')} must be in [{low}, {bound}, got {v}")


def nonfinite_loss(value: float, step: int, out, saved_step: int) -> UserError:
    """The one-line stop for a NaN/inf loss; the last good checkpoint is untouched."""
    return UserError(
        f"loss became {value} at step {step}; stopping. The last good checkpoint is in {out} "
        f"(step {saved_step}). Try a lower --lr, then --resume."
    )


# ----------------------------------------------------------------------------- the run's state

STATE = "train_state"  # OUT/train_state: weights, optimizer and RNG states, meta.json


def run_meta(out, resume: bool, finished_marker: str) -> dict | None:
    """``--resume``: the run's saved meta.json (one line when ``out`` holds no run). A new run:
    None, after refusing an ``out`` that holds one (its state, or ``finished_marker``)."""
    out = Path(out)
    if resume:
        if not (out / STATE).exists() and not (out / f"{STATE}.old").exists():
            raise UserError(f"--resume: no run to resume in {out} (missing {out / STATE})")
        return read_json(resolve_dir(out / STATE) / "meta.json")
    if (out / STATE).exists() or (out / finished_marker).exists():
        raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    return None


def check_preset(name: str | None, preset_config, saved_config, out) -> None:
    """On --resume, a --preset must describe the saved run."""
    if name and preset_config != saved_config:
        raise UserError(f"--preset {name} differs from the checkpoint in {out}; "
                        "drop --preset to resume it, or choose another --out")


# the options a resumed run must repeat: they decide the stream of batches and draws
RESUME_FLAGS = ("seed", "batch_size", "data")


def resume_flags(args) -> dict:
    """The values of :data:`RESUME_FLAGS` in ``args``, for the run's meta.json."""
    return {name: getattr(args, name, None) for name in RESUME_FLAGS}


def _same_data(a: str, b: str) -> bool:
    """Two ``--data`` specs of the same images (``NAME`` reads the train split)."""
    return a.removesuffix(":train") == b.removesuffix(":train")


def check_resume_flags(meta: dict, args, out, skip=()) -> None:
    """On --resume, one line when an option of :data:`RESUME_FLAGS` differs from the saved run's.
    An option the run's meta.json does not record (a run saved before it was) is not checked;
    ``--data`` only when both runs read ``--data`` (not a token cache, whose path may move), and
    not at all for the names in ``skip``."""
    for name in RESUME_FLAGS:
        if name not in meta or name in skip:
            continue
        saved, now = meta[name], getattr(args, name, None)
        if name == "data" and (saved is None or now is None or _same_data(saved, now)):
            continue
        if saved != now:
            flag = "--" + name.replace("_", "-")
            raise UserError(f"the run in {out} was started with {flag} {meta[name]}, not {getattr(args, name, None)}; "
                            f"resume it with the same {flag} (a resumed run continues exactly), or start a new "
                            f"run from its weights with --init {out}")


def save_run(out, modules: dict, state: dict, meta: dict) -> None:
    """Write OUT/train_state atomically: ``modules`` {name: module} as NAME.safetensors, ``state``
    (optimizer and RNG states) as optim.pt, ``meta`` as meta.json."""
    with atomic_dir(Path(out) / STATE) as tmp:
        for name, module in modules.items():
            save_weights(module, tmp / f"{name}.safetensors")
        save_state(state, tmp / "optim.pt")
        write_json(tmp / "meta.json", meta)


def saved_step(out) -> int | None:
    """The step of the checkpoint in OUT/train_state (None when there is none or it is unreadable)."""
    try:
        return int(read_json(resolve_dir(Path(out) / STATE) / "meta.json")["step"])
    except (UserError, OSError, KeyError, TypeError, ValueError):
        return None


def write_fault(e: BaseException, out, command: str) -> FaultError:
    """The one-line stop for a run whose disk fails it (full, read-only, permission): what, where,
    the checkpoint that is still intact (the writes are atomic) and how to go on."""
    if not isinstance(e, OSError):  # a writer's own wrapper around ENOSPC
        e = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out))
    elif e.filename is None:  # a write to an open file (metrics.jsonl) names none: the run folder
        e = OSError(e.errno, e.strerror or str(e), str(out))
    fix = "free some space" if is_disk_full(e) else "fix that"
    step = saved_step(out)
    if step is None:
        return FaultError(f"{os_error_line(e)}; no checkpoint of this run was saved yet: {fix}, "
                          f"then run the same `hart {command}` command again")
    return FaultError(f"{os_error_line(e)}; the last checkpoint in {Path(out) / STATE} (step {step}) is intact: "
                      f"{fix}, then run the same `hart {command}` command again with --resume")


def interrupt_note(out, command: str) -> str:
    """What a Ctrl-C left of a run: its last checkpoint and how to go on from it."""
    step = saved_step(out)
    if step is None:
        return f"no checkpoint of this run was saved yet; run the same `hart {command}` command again to start it"
    return (f"the last checkpoint in {Path(out) / STATE} (step {step}) is intact: run the same `hart {command}` "
            "command with --resume to go on from it")


@contextlib.contextmanager
def run_faults(out, command: str):
    """Around a training loop: a disk fault becomes :func:`write_fault` (exit status 1), Ctrl-C
    an :class:`~hart.common.errors.Interrupted` naming the last checkpoint (exit status 130)."""
    try:
        yield
    except KeyboardInterrupt as e:
        if isinstance(e, Interrupted):
            raise
        raise Interrupted(interrupt_note(out, command)) from None
    except OSError as e:
        raise write_fault(e, out, command) from None
    except Exception as e:  # torch.save's RuntimeError / SafetensorError outside an atomic write
        if isinstance(e, UserError) or not is_disk_full(e):
            raise
        raise write_fault(e, out, command) from None


def load_run(out, modules: dict) -> tuple[dict, dict]:
    """Inverse of :func:`save_run`: loads the modules in place; returns (state, meta)."""
    d = resolve_dir(Path(out) / STATE)
    for name, module in modules.items():
        load_weights(module, d / f"{name}.safetensors")
    return load_state(d / "optim.pt"), read_json(d / "meta.json")
