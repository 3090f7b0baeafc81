"""Write a model's residual-head draws for a split, for a decoder stage that sees them.

    python tools/head_draws.py --model runs/gpu16/head-attn --data fashion-mnist --out runs/draws-attn.safetensors

For every image of the split (in the dataset's order), as ``hart eval-residual`` probes the
head: the tokenizer's true ids, the transformer teacher-forced on them with the true label,
and one head draw per last-scale token given those hidden states and the true last-scale
ids (``--sampler`` / ``--steps``; the temperature cycles over ``--temperatures`` batch by
batch, so the file holds draws of each). Saved as ``draws`` (N, z, n, n) float16 in latent
units, which ``hart train-tokenizer --draws FILE`` decodes as f_hat + draw in a share of its
batches. The tokenizer package cannot import the generator (it sits below it), so the draws
travel as this file. The metadata records the model, the data and the settings.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hart.common.data import SPLITS, make_dataset  # noqa: E402
from sampling.eval_residual import head_draws, load_models, true_ids_cond  # noqa: E402


@torch.no_grad()
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder with a head (default: the bundled model)")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--split", default="train", choices=SPLITS)
    p.add_argument("--num", type=int, default=None, help="the first N images (default: all)")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--sampler", default="ddim", choices=("ddim", "iddpm"))
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--temperatures", default="1,0.6", help="comma-separated, cycled batch by batch")
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    temps = [float(t) for t in args.temperatures.split(",")]
    tok, gen, folder = load_models(args.model)
    ds = make_dataset(args.data, args.split, tok.config.resolution, args.data_dir)
    num = len(ds) if args.num is None else min(args.num, len(ds))
    n = tok.config.latent_size
    g = torch.Generator().manual_seed(args.seed)
    out = torch.empty(num, tok.config.z_channels, n, n, dtype=torch.float16)
    for b, start in enumerate(tqdm(range(0, num, args.batch_size), desc="head-draws")):
        idx = range(start, min(num, start + args.batch_size))
        x = torch.stack([ds[i][0] for i in idx])
        labels = torch.tensor([int(ds[i][1]) for i in idx])
        code = tok.encode(x)
        cond = true_ids_cond(tok, gen, code, labels)
        s = head_draws(gen, cond, 1, g, args.steps, temps[b % len(temps)], args.sampler)[0]
        out[start:start + len(idx)] = s.half()
    meta = {"model": str(folder), "data": args.data, "split": args.split, "sampler": args.sampler,
            "steps": str(args.steps), "temperatures": args.temperatures, "seed": str(args.seed)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_file({"draws": out}, args.out, metadata=meta)
    print(f"wrote {num} draws {tuple(out.shape[1:])} to {args.out}")
    return 0


if __name__ == "__main__":
    main()
