"""Each fused kernel against its PyTorch reference, at the sampler's shapes.

Shapes of a var-d16 sampler step (width 1024, codebook 4096, CFG doubles the batch), at
batch B of images and T tokens of a scale (T = 1 for the 1x1 scale, 256 for the last, 16x16):

* ``adaln``: :func:`hart.kernels.adaln_layernorm` on x (2B, T, 1024), per-row scale/shift;
* ``cfg_sample``: :func:`hart.kernels.cfg_sample` on (B*T, 4096) cond / uncond logits
  (halves of one buffer, as the engine passes them), cfg 1.5, top-k 900, top-p 0.96.

One line per kernel and shape:

    kernel=NAME B=.. T=.. dtype=.. ref_us=X fused_us=Y speedup=Z match=M

``match``: the largest absolute difference for adaln; the share of equal ids for cfg_sample.
Times are medians of CUDA-event-timed calls after warm-up. Needs a GPU (or TRITON_INTERPRET=1,
for a smoke run of the script on the CPU; interpreter times mean nothing).

    python benchmarks/bench_kernels.py --device cuda
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from hart import kernels


def _timer(device: torch.device, fn, reps: int) -> float:
    """Median microseconds of ``fn()``."""
    for _ in range(3):
        fn()
    out = []
    for _ in range(reps):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            out.append(1e3 * a.elapsed_time(b))
        else:
            t = time.perf_counter()
            fn()
            out.append(1e6 * (time.perf_counter() - t))
    return statistics.median(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 36, 64, 256],
                   help="tokens of a scale (1: 1x1, 256: 16x16)")
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--reps", type=int, default=50)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# {name}: width {args.width}, vocab {args.vocab}, cfg 1.5, top-k 900, top-p 0.96", flush=True)
    g = torch.Generator(device=device).manual_seed(0)
    for B in args.batches:
        for T in args.tokens:
            for dtype in (torch.bfloat16, torch.float32):
                x = torch.randn(2 * B, T, args.width, device=device, generator=g).to(dtype)
                mods = torch.randn(2 * B, 1, 2, args.width, device=device, generator=g).to(dtype)
                scale, shift = mods.unbind(2)
                ref = lambda: kernels.adaln_layernorm(x, scale, shift, 1e-6, backend="torch")  # noqa: E731
                fused = lambda: kernels.adaln_layernorm(x, scale, shift, 1e-6, backend="triton")  # noqa: E731
                diff = (ref().float() - fused().float()).abs().max().item()
                t_ref, t_fused = _timer(device, ref, args.reps), _timer(device, fused, args.reps)
                print(f"kernel=adaln B={B} T={T} dtype={str(dtype).split('.')[-1]} ref_us={t_ref:.1f} "
                      f"fused_us={t_fused:.1f} speedup={t_ref / t_fused:.2f} match={diff:.2e}", flush=True)
            logits = (2 * torch.randn(2 * B * T, args.vocab, device=device, generator=g)).to(torch.bfloat16)
            u = torch.rand(B * T, device=device, generator=g)
            cond, uncond = logits[: B * T], logits[B * T:]
            ref = lambda: kernels.cfg_sample(cond, uncond, u, 1.5, 1.0, 900, 0.96, backend="torch")  # noqa: E731
            fused = lambda: kernels.cfg_sample(cond, uncond, u, 1.5, 1.0, 900, 0.96, backend="triton")  # noqa: E731
            same = (ref() == fused()).float().mean().item()
            t_ref, t_fused = _timer(device, ref, args.reps), _timer(device, fused, args.reps)
            print(f"kernel=cfg_sample B={B} T={T} dtype=bfloat16 ref_us={t_ref:.1f} fused_us={t_fused:.1f} "
                  f"speedup={t_ref / t_fused:.2f} match={same:.4f}", flush=True)


if __name__ == "__main__":
    main()
