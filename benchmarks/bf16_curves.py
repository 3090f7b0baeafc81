"""Does bf16 autocast train the generator as well as fp32 on this CPU? Loss curves side by side.

    python benchmarks/bf16_curves.py --tokenizer runs/tok-fm32 --tokens runs/fm-tokens --steps 300

Trains the same preset twice from the same initialisation, data order and RNG, once in
fp32 and once under bf16 autocast, and prints the smoothed cross-entropy, accuracy and
diffusion loss every ``--every`` steps plus the wall time of each run; ``--png`` also draws
the curves.
"""
from __future__ import annotations

import argparse
import time

import torch
from PIL import Image, ImageDraw

from hart.common.dist import DistInfo
from hart.train import GeneratorTrainer, batch_source, build_parser, fit_preset
from hart.tokens import TokenCache
from tokenizer import HybridTokenizer


def run(args, dtype: str) -> tuple[list, float]:
    tok = HybridTokenizer.from_pretrained(args.tokenizer).requires_grad_(False)
    targs = build_parser().parse_args(["--tokenizer", args.tokenizer, "--tokens", args.tokens, "--out", "x",
                                       "--dtype", dtype, "--steps", str(args.steps),
                                       "--batch-size", str(args.batch_size), "--lr", str(args.lr)])
    config = fit_preset(args.preset, tok.config, TokenCache(args.tokens).classes)
    torch.manual_seed(0)
    trainer = GeneratorTrainer(config, tok, targs, DistInfo())
    batches = batch_source(targs, tok, DistInfo(), args.batch_size, 0)
    hist, t0 = [], time.perf_counter()
    for _ in range(args.steps):
        hist.append(trainer.train_step(*next(batches)))
    return hist, time.perf_counter() - t0


def smooth(hist, key, i, w):
    vals = [h[key] for h in hist[max(0, i - w + 1):i + 1] if key in h]
    return sum(vals) / len(vals) if vals else float("nan")


def draw(curves: dict, path: str, key: str) -> None:
    W, H, pad = 640, 360, 40
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    allv = [v for c in curves.values() for v in c]
    lo, hi = min(allv), max(allv)
    colors = {"fp32": (31, 119, 180), "bf16": (214, 39, 40)}
    for name, c in curves.items():
        pts = [(pad + i * (W - 2 * pad) / max(1, len(c) - 1), H - pad - (v - lo) / max(1e-9, hi - lo) * (H - 2 * pad))
               for i, v in enumerate(c)]
        d.line(pts, fill=colors[name], width=2)
        d.text((W - pad - 60, pad + 14 * list(curves).index(name)), name, fill=colors[name])
    d.text((pad, 8), f"{key} (smoothed), {lo:.3f} .. {hi:.3f}", fill="black")
    img.save(path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--tokens", required=True, help="token cache from hart extract-tokens")
    p.add_argument("--preset", default="fm-s")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--png", default=None, help="write the CE curves here")
    args = p.parse_args(argv)
    res = {dt: run(args, dt) for dt in ("fp32", "bf16")}
    w = args.every
    print("step  " + "  ".join(f"{dt}_ce {dt}_acc {dt}_diff" for dt in res))
    for i in range(w - 1, args.steps, w):
        row = [f"{i + 1:5d}"]
        for dt, (hist, _) in res.items():
            row.append(" ".join(f"{smooth(hist, k, i, w):.4f}" for k in ("ce", "acc", "diff")))
        print("  ".join(row))
    for dt, (_, secs) in res.items():
        print(f"dtype={dt} wall_s={secs:.1f} final_ce={smooth(res[dt][0], 'ce', args.steps - 1, w):.4f}")
    if args.png:
        draw({dt: [smooth(h, "ce", i, w) for i in range(args.steps)] for dt, (h, _) in res.items()}, args.png, "ce")


if __name__ == "__main__":
    main()
