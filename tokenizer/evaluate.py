"""Measure a tokenizer on a dataset split: PSNR discrete-only vs hybrid, codebook usage.

Examples:
    hart eval-tokenizer --model runs/tok --data fashion-mnist --split test
    hart eval-tokenizer --model runs/tok --data folder:/data/imgs --num 500 --out tok.json
    hart eval-tokenizer --model runs/tok --data fashion-mnist --save-recon runs/recon
    hart fid --images runs/recon/hybrid --ref fashion-mnist:train --features effnet-lite0 --resolution 32
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from hart.data.datasets import add_data_arguments, data_split, make_dataset, parse_spec
from hart.common.errors import UserError, cli_entry
from hart.common.fs import output_dir, output_file
from hart.common.images import to_pil
from hart.common.io import component_dir, write_json
from tokenizer.losses import psnr
from tokenizer.model import HybridTokenizer


@torch.no_grad()
def evaluate(model: HybridTokenizer, dataset, num: int | None = None, batch_size: int = 100,
             device="cpu", progress: bool = True, save_recon=None) -> dict:
    """Mean PSNR (dB) of discrete-only and hybrid reconstructions, and codebook usage
    (fraction of the codebook hit, overall and per scale) over ``num`` images spread evenly over
    ``dataset`` (all of it by default; a folder of class folders is sorted by class, so its first
    images would all be of one class).
    ``save_recon``: a folder that gets ``discrete/`` and ``hybrid/`` PNGs (for ``hart fid``)."""
    cfg = model.config
    n = len(dataset) if num is None else min(num, len(dataset))
    if n < 1:
        raise UserError("nothing to evaluate: the dataset is empty")
    sums = {"discrete": 0.0, "hybrid": 0.0}
    hits = torch.zeros(len(cfg.patch_nums), cfg.codebook_size, dtype=torch.long)
    picks = [k * len(dataset) // n for k in range(n)]  # evenly spaced; every image when n = len
    for start in tqdm(range(0, n, batch_size), desc="eval", disable=not progress):
        x = torch.stack([dataset[i][0] for i in picks[start:start + batch_size]]).to(device)
        code = model.encode(x)
        for kind, use_res in (("discrete", False), ("hybrid", True)):
            rec = model.decode(code, use_residual=use_res)
            sums[kind] += psnr(rec, x).sum().item()
            if save_recon is not None:
                (Path(save_recon) / kind).mkdir(parents=True, exist_ok=True)
                for j, im in enumerate(to_pil(rec)):
                    im.save(Path(save_recon) / kind / f"{start + j:06d}.png")
        for k, ids in enumerate(code.ids):
            hits[k] += torch.bincount(ids.flatten().cpu(), minlength=cfg.codebook_size)
    return {
        "num_images": n,
        "psnr_discrete": sums["discrete"] / n,
        "psnr_hybrid": sums["hybrid"] / n,
        "codebook_usage": (hits.sum(0) > 0).float().mean().item(),
        "codebook_usage_per_scale": {f"{pn}x{pn}": (h > 0).float().mean().item()
                                     for pn, h in zip(cfg.patch_nums, hits)},
        "codebook_size": cfg.codebook_size,
    }


@cli_entry
def main(argv=None, model_folder=None):
    """``model_folder``: a model name or path -> its folder (the bundled models by name); None:
    paths only."""
    p = argparse.ArgumentParser(prog="hart eval-tokenizer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="tokenizer folder (from hart train-tokenizer), or a model folder: its tokenizer/")
    add_data_arguments(p, split_default="test")
    p.add_argument("--num", type=int, default=None, help="evaluate N images spread evenly over the set (default: all)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--out", default=None, help="also write the result as JSON here")
    p.add_argument("--save-recon", default=None, metavar="DIR",
                   help="write the reconstructions as DIR/discrete/*.png and DIR/hybrid/*.png (e.g. for hart fid)")
    args = p.parse_args(argv)
    if model_folder is not None:
        args.model = str(model_folder(args.model))
    args.split = data_split(args)
    if args.num is not None and args.num < 1:
        raise UserError("--num must be positive")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {args.batch_size}")
    if args.out:
        output_file(args.out)
    if args.save_recon:
        output_dir(args.save_recon, "--save-recon")
    model = HybridTokenizer.from_pretrained(component_dir(args.model, "tokenizer"))  # a model folder's tokenizer/ too
    dataset = make_dataset(args.data, args.split, model.config.resolution, args.data_dir)
    t0 = time.time()
    result = evaluate(model, dataset, args.num, args.batch_size, save_recon=args.save_recon)
    split = args.split if parse_spec(args.data).kind == "dataset" else None  # a folder has no splits
    result.update(model=str(args.model), data=args.data, split=split, seconds=round(time.time() - t0, 1))
    print(f"PSNR discrete-only {result['psnr_discrete']:.2f} dB | hybrid {result['psnr_hybrid']:.2f} dB | "
          f"codebook usage {result['codebook_usage']:.1%} of {result['codebook_size']} "
          f"({result['num_images']} {split + ' ' if split else ''}images)")
    print("usage per scale: " + ", ".join(f"{k} {v:.1%}" for k, v in result["codebook_usage_per_scale"].items()))
    if args.out:
        write_json(args.out, result)
    else:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    main()
