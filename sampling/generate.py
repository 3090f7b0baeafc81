"""``hart generate``: sample an image grid (one row per class or prompt) from a model folder.

Examples::

    hart generate --model runs/fm --class 3 --num 8 --out grid.png
    hart generate --model runs/fm --all-classes --num 8 --out all.png
    hart generate --model runs/fm --class Dress --class Sneaker --num 8 --out two.png
    hart generate --model runs/fm --class 3 --class 5 --num 4 --cfg 2 --top-k 200 --top-p 0.9 \\
        --seed 7 --out grid.png --save-each samples/
    hart generate --model models/var-d16 --class 207 --num 4 --sampling var-demo --out dogs.png
    hart generate --model runs/fm --class 0 --num 64 --batch-size 32 --dtype bf16 --compile --out big.png
    hart generate --model runs/shapes --prompt "a large red circle left of a small blue square" --num 8
    hart generate --model runs/shapes --prompts prompts.txt --num 4 --out t2i.png

Text models take ``--prompt`` (repeatable) or ``--prompts FILE`` (one prompt per line; blank
lines and lines starting with # are skipped); class models take ``--class``. Image j of the
run (rows in the order given, ``--num`` each) uses seed ``--seed + j`` with its own
generator, so it does not depend on ``--batch-size``.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from hart.common.args import add_device_argument, examples_epilog
from hart.common.errors import UserError, cli_entry
from hart.common.fs import output_dir, output_file, read_prompt_lines
from sampling.options import add_sampling_arguments, sampling_options


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hart generate", description="Generate a grid of class- or text-conditional samples.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=examples_epilog(__doc__),
    )
    p.add_argument("--model", default=None, help="model folder made by `hart train` (tokenizer/ + generator/); "
                   "default: the bundled Fashion-MNIST model; default-t2i: the bundled text-to-image model")
    p.add_argument("--class", dest="classes", action="append", default=[],
                   help="class id or name (e.g. 3 or Dress); repeat for several rows")
    p.add_argument("--all-classes", action="store_true", help="one row per class of the model")
    p.add_argument("--prompt", dest="prompts", action="append", default=[],
                   help="text models: a prompt; repeat for several rows")
    p.add_argument("--prompts", dest="prompts_file", default=None, metavar="FILE",
                   help="text models: a file with one prompt per line")
    p.add_argument("--text-encoder-path", default=None, help="text models with the qwen2 encoder: its folder")
    p.add_argument("--num", type=int, default=8, help="images per class or prompt: one row each (default 8)")
    add_sampling_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the first image (default 0)")
    p.add_argument("--out", default="grid.png",
                   help="the grid, in the format its extension names (default grid.png; .jpg, .webp too)")
    p.add_argument("--save-each", default=None, metavar="DIR", help="also write every image as DIR/cCLASS_NNNN.png (class models) or DIR/pPROMPT_NNNN.png (the "
                        "prompt's number, from 0; text models), NNNN the image's index")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward (default 16)")
    add_device_argument(p)
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="compute dtype (default fp32; fp16 is HART's, for GPUs)")
    p.add_argument("--compile", action="store_true", help="torch.compile the per-scale step")
    p.add_argument("--cuda-graph", action="store_true",
                   help="GPU: replay each batch's whole sampling run as one CUDA graph (captured once per batch size)")
    p.add_argument("--scale", type=int, default=1, help="integer upscaling of the grid (default 1)")
    return p


def _check_args(args) -> None:
    """One clear line per bad value (an unreadable prompts file, an --out that cannot be
    written), before anything is loaded."""
    if args.num < 1:
        raise UserError(f"--num must be a positive count, got {args.num}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {args.batch_size}")
    if args.scale < 1:
        raise UserError(f"--scale must be positive, got {args.scale}")
    from sampling.seeds import check_seeds

    check_seeds([args.seed])
    if args.prompts_file:
        args.prompts = args.prompts + read_prompts(args.prompts_file)
    output_file(args.out)  # a path that cannot be written is one line now, not after the sampling
    from hart.common.images import image_format

    image_format(args.out)  # an extension no image format has, too
    if args.save_each:
        output_dir(args.save_each, "--save-each")
    if (args.classes or args.all_classes) and args.prompts:
        raise UserError("give classes (--class) or prompts (--prompt), not both")
    if not args.classes and not args.all_classes and not args.prompts:
        raise UserError("name what to draw: --class ID_OR_NAME or --all-classes (class models), "
                        "--prompt TEXT or --prompts FILE (text models)")


def read_prompts(path) -> list[str]:
    """The prompts of a prompts file (:func:`hart.common.fs.read_prompt_lines`)."""
    return [text for _, text in read_prompt_lines(path)]


def resolve_classes(args, config) -> list[int]:
    """--class values (ids or names, case-insensitive: :meth:`GeneratorConfig.check_class_ids`)
    and --all-classes -> class ids."""
    if args.all_classes:
        return list(range(config.num_classes))
    return config.check_class_ids([int(c) if c.lstrip("-").isdigit() else c for c in args.classes])


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    _check_args(args)
    opts = dataclasses.asdict(sampling_options(args))

    import torch
    from tqdm import tqdm

    from hart.common.images import MAX_GRID_PIXELS, MAX_SIDE, grid_size, image_format, save_grid, to_pil
    from sampling.seeds import check_seeds
    from sampling.pipeline import HARTPipeline

    from hart.common.dist import resolve_device

    pipe = HARTPipeline.from_pretrained(args.model, device=resolve_device(args.device), dtype=args.dtype,
                                        compile=args.compile, cuda_graph=args.cuda_graph,
                                        text_encoder_path=args.text_encoder_path)
    config = pipe.generator.config
    if args.sampling is None and config.display.sampling:  # the model's own preset (a converted HART release: hart)
        opts = dataclasses.asdict(sampling_options(args, config.display.sampling))
    if args.prompts:
        if not config.is_text:
            raise UserError("this model is class-conditional: give it --class, not --prompt")
        row_keys, row_labels = args.prompts, args.prompts
        key = "prompts"
        pipe.text_encoder.warn_long(row_keys)  # load it now: a missing encoder is one line before any work
    else:
        args.classes = resolve_classes(args, config)
        pipe.check_class_ids(args.classes)
        row_keys, row_labels = args.classes, [config.class_label(c) for c in args.classes]
        key = "class_ids"
    w, h = grid_size(len(row_keys), args.num, pipe.tokenizer.config.resolution, row_labels, scale=args.scale)
    if w * h > MAX_GRID_PIXELS:
        raise UserError(f"the grid would be {w} x {h} px ({w * h / 1e6:,.0f} megapixels, more than "
                        f"{MAX_GRID_PIXELS / 1e6:,.0f}): lower --num (images per row) or --scale, or draw fewer "
                        "rows (classes, prompts) per run")
    fmt = image_format(args.out)
    if max(w, h) > MAX_SIDE.get(fmt, w * h):
        raise UserError(f"the grid would be {w} x {h} px, and a {fmt} image is at most {MAX_SIDE[fmt]} px a side: "
                        "write it as .png, or lower --num or --scale")
    items = [r for r in row_keys for _ in range(args.num)]
    seeds = check_seeds(range(args.seed, args.seed + len(items)))  # the last one too, before any work
    images = []
    starts = range(0, len(items), args.batch_size)
    for s in tqdm(starts, desc="batches", unit="batch"):
        e = s + args.batch_size
        images.append(pipe.sample(seed=seeds[s:e], **{key: items[s:e]}, **opts).images.cpu())
    images = torch.cat(images)  # (len(items), 3, R, R)
    rows = list(images.split(args.num))
    out = save_grid(rows, args.out, row_labels=row_labels, scale=args.scale)
    if args.save_each:
        d = Path(args.save_each)
        d.mkdir(parents=True, exist_ok=True)
        for j, img in enumerate(to_pil(images)):
            tag = f"p{j // args.num}" if args.prompts else f"c{items[j]}"
            img.save(d / f"{tag}_{j:04d}.png")
    print(f"wrote {out} ({len(items)} image{'s' if len(items) != 1 else ''})"
          + (f" and one PNG per image in {args.save_each}" if args.save_each else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
