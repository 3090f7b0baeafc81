"""Tokenizer training step, fp32 against bf16 autocast, in the same process.

    python benchmarks/bench_tokenizer_train.py --presets fm-32 fm-32-h --steps 8 --warmup 2

For each preset, two trainers (``tokenizer.train.Trainer``, the step ``hart train-tokenizer``
runs: forward, quantizer, reconstruction + VQ + GAN losses, both optimizers, EMA) start from
the same weights; their steps alternate fp32 / bf16 on the same random batches, so a noisy
machine slows both alike. Prints the median ms per step of each and the ratio fp32 / bf16.
The PatchGAN is on (``--disc-start 0``), as in the second half of a run.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from tokenizer.config import TokenizerConfig
from tokenizer.train import Trainer, build_parser


def trainer(preset: str, dtype: str, batch_size: int) -> Trainer:
    args = build_parser().parse_args(["--preset", preset, "--data", "synthetic", "--out", "unused",
                                      "--dtype", dtype, "--disc-start", "0", "--batch-size", str(batch_size)])
    torch.manual_seed(0)
    return Trainer(TokenizerConfig.from_name(preset), args, torch.device("cpu"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["fm-32", "fm-32-h"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=8, help="timed steps per dtype")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per dtype first")
    args = p.parse_args(argv)
    print(f"threads={torch.get_num_threads()} batch={args.batch_size}")
    for preset in args.presets:
        pair = {d: trainer(preset, d, args.batch_size) for d in ("fp32", "bf16")}
        res = TokenizerConfig.from_name(preset).resolution
        times = {d: [] for d in pair}
        for i in range(args.warmup + args.steps):
            x = torch.rand(args.batch_size, 3, res, res, generator=torch.Generator().manual_seed(i)) * 2 - 1
            for d, t in pair.items():
                t0 = time.perf_counter()
                t.train_step(x)
                if i >= args.warmup:
                    times[d].append(time.perf_counter() - t0)
        fp32, bf16 = (statistics.median(times[d]) * 1e3 for d in ("fp32", "bf16"))
        n = sum(q.numel() for q in pair["fp32"].model.parameters()) / 1e6
        print(f"preset={preset} params={n:.1f}M fp32_ms={fp32:.0f} bf16_ms={bf16:.0f} speedup={fp32 / bf16:.2f}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
