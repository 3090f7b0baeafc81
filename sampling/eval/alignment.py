"""``hart eval-alignment``: does a text-to-image model draw what its prompt says?

Examples::

    hart eval-alignment --model runs/shapes --data shapes --num 200 --out alignment.json --grid alignment.png

In the spirit of GenEval, with the rule-based checker of the ``shapes`` data
(:func:`sampling.eval.checker.check`): one image per prompt (seed ``--seed + j``), and for each
the checker says whether every object, colour, size, count and relation of the prompt is
there. Three prompt sets, ``--num`` each:

- seen: captions of the train split (scenes the model was trained on);
- held-out: captions of the ``heldout`` split (colour x shape pairs and relations that never
  occur in training: composition);
- ceiling: the checker on the real renders of the seen and held-out scenes;
- tokenizer: the checker on the model's own tokenizer reconstructions of those renders,
  discrete-only (the true ids: the best any generator of these tokens can do without the
  residual) and hybrid (the exact latent). When these sit far below the real renders, the
  tokenizer, not the generator, is what limits alignment.

Accuracy per attribute is the fraction of images where it holds (``position`` over the
prompts with a relation); an image is aligned when all of them hold. The last line is
``alignment=X heldout=X ceiling=X tokenizer=X tokenizer_hybrid=X`` (fractions of aligned
images).
"""
from __future__ import annotations

import argparse
import dataclasses
import json

from hart.common.errors import UserError, cli_entry
from hart.common.fs import output_file
from sampling.options import add_sampling_arguments, as_sampled, sampling_options

ATTRIBUTES = ("object", "colour", "size", "count", "position", "all")


def summarize(results: list[dict]) -> dict:
    """Per attribute: the fraction of results where it holds (None entries skipped)."""
    out = {}
    for k in ATTRIBUTES:
        vals = [r[k] for r in results if r.get(k) is not None]
        out[k] = sum(map(bool, vals)) / len(vals) if vals else None
    out["n"] = len(results)
    return out


def reconstruct(tokenizer, images: list, batch_size: int) -> dict:
    """The tokenizer's reconstructions of PIL ``images``: {"tokenizer": discrete-only,
    "tokenizer_hybrid": discrete + the true residual}, lists of PIL images."""
    import torch

    from hart.data.datasets import to_tensor
    from hart.common.images import to_pil
    from tokenizer.train import recon_rows

    device = next(tokenizer.parameters()).device
    out = {"tokenizer": [], "tokenizer_hybrid": []}
    for s in range(0, len(images), batch_size):
        x = torch.stack([to_tensor(img) for img in images[s:s + batch_size]]).to(device)
        _, discrete, hybrid = recon_rows(tokenizer, x)
        out["tokenizer"] += to_pil(discrete.float())
        out["tokenizer_hybrid"] += to_pil(hybrid.float())
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hart eval-alignment", description=__doc__.split("Examples::")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Examples::" + __doc__.split("Examples::")[1])
    p.add_argument("--model", required=True, help="a text-to-image model folder (tokenizer/ + generator/), or default-t2i (bundled)")
    p.add_argument("--data", default="shapes", help="prompt source with a checker: shapes (the only one)")
    p.add_argument("--num", type=int, default=200, help="prompts per set (default 200)")
    p.add_argument("--seed", type=int, default=0)
    add_sampling_arguments(p)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="write the full report (per attribute, per set) as JSON")
    p.add_argument("--grid", default=None, help="write a PNG of the first generated images with their prompts")
    return p


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.data.split(":")[0] != "shapes":
        raise UserError(f"--data {args.data}: only shapes has a checker (hart.data.shapes)")
    if args.num < 1 or args.batch_size < 1:
        raise UserError("--num and --batch-size must be positive")
    for flag, path in (("--out", args.out), ("--grid", args.grid)):
        if path:
            output_file(path, flag)
    opts = dataclasses.asdict(sampling_options(args))

    import torch
    from tqdm import tqdm

    from hart.common.dist import resolve_device
    from hart.common.images import save_grid
    from hart.data.shapes import render, sample_scene
    from sampling.eval.checker import check
    from sampling.pipeline import HARTPipeline

    pipe = HARTPipeline.from_pretrained(args.model, device=resolve_device(args.device))
    if not pipe.is_text:
        raise UserError(f"{args.model} is class-conditional; eval-alignment needs a text-to-image model")
    if args.sampling is None and pipe.generator.config.display.sampling:  # the model's own preset
        opts = dataclasses.asdict(sampling_options(args, pipe.generator.config.display.sampling))
    R = pipe.tokenizer.config.resolution
    sets = {name: [sample_scene(split, i) for i in range(args.num)] for name, split in
            (("seen", "train"), ("heldout", "heldout"))}
    results, shown = {}, []
    for name, scenes in sets.items():
        prompts = [s.spec.caption for s in scenes]
        res = []
        for s in tqdm(range(0, len(prompts), args.batch_size), desc=f"generate {name}", unit="batch"):
            batch = prompts[s:s + args.batch_size]
            seeds = [args.seed + j for j in range(s, s + len(batch))]
            images = pipe(prompts=batch, seed=seeds, **opts)
            res += [check(img, p) for img, p in zip(images, batch)]
            if not shown:
                shown = list(zip(images[:16], batch[:16], res[:16]))
        results[name] = summarize(res)
    all_scenes = [s for scenes in sets.values() for s in scenes]
    renders = [render(s, R) for s in all_scenes]
    for name, images in {"ceiling": renders, **reconstruct(pipe.tokenizer, renders, args.batch_size)}.items():
        results[name] = summarize([check(img, s.spec.caption) for img, s in zip(images, all_scenes)])
    results["model"], results["num"], results["seed"] = str(args.model), args.num, args.seed
    results["options"] = as_sampled(opts, pipe.generator.config)

    columns = ("seen", "heldout", "ceiling", "tokenizer", "tokenizer_hybrid")
    print(f"{'attribute':<10} {'seen':>7} {'heldout':>8} {'real':>7} {'tok-d':>7} {'tok-h':>7}")
    for k in ATTRIBUTES:
        row = [results[s][k] for s in columns]
        print(f"{k:<10} " + " ".join(f"{'-' if v is None else f'{v:.3f}':>7}" for v in row))
    if args.out:
        from hart.common.io import write_json

        write_json(args.out, results)
    if args.grid and shown:
        from hart.data.datasets import to_tensor

        rows = [to_tensor(img).unsqueeze(0) for img, _, _ in shown]
        labels = [("ok  " if r["all"] else "no  ") + p for _, p, r in shown]
        save_grid(rows, args.grid, row_labels=labels, scale=3)
        print(f"wrote {args.grid}")
    print(f"alignment={results['seen']['all']:.3f} heldout={results['heldout']['all']:.3f} "
          f"ceiling={results['ceiling']['all']:.3f} tokenizer={results['tokenizer']['all']:.3f} "
          f"tokenizer_hybrid={results['tokenizer_hybrid']['all']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
