"""Probe: how a tokenizer's decodes differ from the real images, per pixel statistic.

    python benchmarks/decode_stats.py runs/tok-h3

On the first 1,000 test images (float decodes in [-1, 1], before 8-bit rounding), one line each
for the real images, the hybrid decode (exact latent) and the discrete-only decode: mean, standard
deviation, ``hf`` (mean squared 3x3 Laplacian of the channel mean: fine detail, which blur
lowers), ``chroma`` (mean absolute deviation from the channel mean: colour; 0 for gray data)
and the share of pixels at black (<= -0.999) and below -0.95.
"""
from __future__ import annotations

import sys

import torch

from disc_probe import decode_all  # benchmarks/ is on the path when run as a script
from tokenizer.losses import laplacian_energy
from hart.common.data import make_dataset
from tokenizer import HybridTokenizer


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python benchmarks/decode_stats.py TOKENIZER_DIR", file=sys.stderr)
        return 2
    d = make_dataset("fashion-mnist", "test", 32, None)
    x = torch.stack([d[i][0] for i in range(1000)])
    tok = HybridTokenizer.from_pretrained(argv[0]).requires_grad_(False).eval()
    for name, y in [("real", x), ("hybrid", decode_all(tok, x, "hybrid")), ("discrete", decode_all(tok, x, "discrete"))]:
        hf = laplacian_energy(y).mean().item()
        chroma = (y - y.mean(1, keepdim=True)).abs().mean().item()
        print(f"{name:9s} mean={y.mean():.4f} std={y.std():.4f} hf={hf:.5f} chroma={chroma:.5f} "
              f"frac_at_-1={(y <= -0.999).float().mean():.4f} frac<-0.95={(y < -0.95).float().mean():.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
