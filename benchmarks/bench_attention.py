"""Attention forward + backward on the CPU: PyTorch's fused SDPA against the explicit path
(:func:`hart.attention.attention_explicit`: two matmuls around an fp32 softmax), in the same process.

    python benchmarks/bench_attention.py --batch 64 --heads 4 --tokens 155 --head-dim 64

The calls alternate SDPA / explicit on the same tensors, under the block-causal mask of the
fm-32 scales (1,2,3,4,5,6,8: 155 tokens), so a noisy machine slows both alike. Prints the
median ms of each, per dtype, and the ratio SDPA / explicit; then the same for forward-only
calls (no autograd: the sampler). ``hart.attention.attention`` keeps SDPA for fp32 and forward-only.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from hart import attention as attn


def block_causal(T: int, dtype) -> torch.Tensor:
    sizes, level, k = [1, 4, 9, 16, 25, 36, 64], [], 0
    for s in sizes:
        level += [k] * s
        k += 1
    lv = torch.tensor(level[:T] + [k] * max(0, T - len(level)))
    return torch.where(lv[:, None] >= lv[None, :], 0.0, float("-inf")).to(dtype).view(1, 1, T, T)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--tokens", type=int, default=155)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--reps", type=int, default=10)
    a = p.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    shape = (a.batch, a.heads, a.tokens, a.head_dim)
    scale = a.head_dim ** -0.5
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, q/k/v {tuple(shape)}")
    for dtype in (torch.float32, torch.bfloat16):
        bias = block_causal(a.tokens, dtype)
        leaves = [torch.randn(shape, generator=g).to(dtype).requires_grad_(True) for _ in range(3)]

        def sdpa():
            return F.scaled_dot_product_attention(*leaves, attn_mask=bias, scale=scale)

        def explicit():
            return attn.attention_explicit(*leaves, bias, scale)

        for grad in (True, False):
            times = {"sdpa": [], "explicit": []}
            for rep in range(a.reps + 2):
                for name, fn in (("sdpa", sdpa), ("explicit", explicit)):
                    t0 = time.perf_counter()
                    with torch.set_grad_enabled(grad):
                        out = fn()
                        if grad:
                            out.float().sum().backward()
                    if rep >= 2:
                        times[name].append(time.perf_counter() - t0)
            s, e = (statistics.median(times[k]) * 1e3 for k in ("sdpa", "explicit"))
            mode = "forward + backward" if grad else "forward only      "
            print(f"{str(dtype).split('.')[-1]:9s} {mode}  sdpa {s:7.2f} ms  explicit {e:7.2f} ms  "
                  f"ratio {s / e:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
