"""Distributed setup from torchrun's environment, as an explicit object (no global state).

Plumbing leaf. gloo on CPU, nccl on GPU. Without torchrun's variables it is a
single process with world_size 1.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from hart.common.errors import UserError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    joined: bool = False  # a process group exists (torchrun), even of one process

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Collectives and DDP are on: several processes, or one launched by torchrun (so that
        ``torchrun --nproc_per_node 1`` runs the same NCCL / gloo path as a larger job)."""
        return self.world_size > 1 or self.joined

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            t = t.clone()
            dist.all_reduce(t)
            t /= self.world_size
        return t

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def resolve_device(name: str = "auto", what: str = "--device") -> torch.device:
    """The one device rule of every command: ``auto`` -> cuda when a GPU is visible, else cpu;
    cuda without a GPU, or a name torch does not know, is one clear line naming ``what`` (the
    flag, or a Python argument such as ``device``)."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    flag = what.startswith("--")
    given, cpu = (f"{what} {name}", f"{what} cpu") if flag else (f"{what}={name!r}", f"{what}='cpu'")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"unknown {given}; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{given}: no CUDA GPU is visible here; use {cpu}")
    return dev


DTYPE_CHOICES = ("auto", "fp32", "bf16")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The training autocast rule: ``auto`` -> bf16 on a GPU, fp32 on the CPU. ``bf16`` on a
    CPU without bf16 arithmetic is said once on stderr: there it is emulated, and slower."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        print("warning: this CPU has no bf16 arithmetic (neither avx512_bf16 nor AMX): bf16 autocast is "
              "emulated here and many times slower than fp32; --dtype auto (fp32 on a CPU) is faster",
              file=sys.stderr)
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[name]


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether an x86 CPU has bf16 arithmetic (the ``avx512_bf16`` or ``amx_bf16`` flag in Linux's
    /proc/cpuinfo); True where it cannot be told (another system or architecture)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return True
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines()
                  if line.startswith("flags") and ":" in line), None)
    if flags is None:
        return True
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast(device: torch.device, dtype: torch.dtype):
    """``torch.autocast`` for a reduced dtype, a no-op context for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def init_distributed(device: str = "auto") -> DistInfo:
    """Read RANK / WORLD_SIZE / LOCAL_RANK (set by torchrun) and join the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = resolve_device(device).type == "cuda"
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    launched = world > 1 or "TORCHELASTIC_RUN_ID" in os.environ  # torchrun sets it, even for one process
    if launched and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev, joined=dist.is_initialized())
