"""``hart fid``: Fréchet distance and KID of a model's samples or of a set of images.

Examples::

    # 10k class-balanced samples of a model against fashion-mnist's train split (offline features)
    hart fid --model runs/fm --num 10000 --ref fashion-mnist:train --features effnet-lite0 --out fid.json
    # standard FID with clean-fid's Inception file, 50k samples on 8 GPUs (each rank does its slice)
    torchrun --nproc_per_node 8 -m sampling.eval.fid -- --model runs/fm --num 50000 --ref fashion-mnist \\
        --features inception --inception-weights ~/weights/inception-2015-12-05.pt
    # any folder of images against a folder, a dataset split, or saved statistics
    hart fid --images samples/ --ref real_images/ --features effnet-lite0
    hart fid --images samples/ --ref stats/fm_train.npz --features effnet-lite0
    # a text-to-image model: sample j draws prompt j % P of the file (one prompt per line)
    hart fid --model runs/shapes --prompts prompts.txt --num 2000 --ref shapes:test --features effnet-lite0
    # the real-data floor: fashion-mnist test split against 10k images of the train split
    hart fid --images fashion-mnist:test --ref fashion-mnist:train --ref-num 10000 --resolution 32 \\
        --features effnet-lite0

Protocol (clean-fid's "clean" mode, see :mod:`sampling.eval.features`): uint8 RGB images, a PIL
bicubic resize of each channel to the extractor's input size (299 for Inception, 224 for
EfficientNet-lite0), pooled features; mean and covariance are accumulated
as float64 sums, so memory does not grow with the number of images. KID (cubic polynomial
kernel, 100 subsets of up to 1000) uses a reservoir of at most 5000 features per set.
Inception features give FID; EfficientNet-lite0 features give FD-EffNet (not comparable).

``--ref`` and ``--images`` take the data specs of every command (``fashion-mnist[:split]``,
``synthetic[:split]``, ``folder:PATH`` with one subfolder per class, resized like ``--data``),
or ``images:PATH`` / a bare folder: its image files (searched recursively) as they are;
``--ref`` also takes a ``.npz`` of statistics (this command's, or any file with ``mu`` and
``sigma``). The statistics of a data spec are cached in ``--cache-dir`` as .npz, keyed by
dataset, split, resolution, extractor and count (a ``folder:`` / ``captions:`` spec's also by
its files' names, sizes and times, so a changed folder is embedded again); a bare folder is
embedded each time (``--save-stats`` keeps its statistics). ``--images`` takes a folder or a
``DATASET[:split]``. A model's sample j has class ``j % num_classes`` and seed ``--seed + j``,
whatever the batch size or the number of ranks.

``--out`` writes JSON: ``metric`` (FID or FD-EffNet), ``score``, ``kid`` and ``kid_std`` (None
where every KID subset is the whole of both sets), ``features``, ``feature_dim``, ``num`` and
``skipped`` (the images scored and those unreadable), ``ref`` (``source``, ``n``, ``cached``,
``skipped``, ``cache``) and ``settings``.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from hart.common.args import add_device_argument, examples_epilog
from hart.common.errors import UserError, cli_entry
from hart.common.fs import output_file
from sampling.eval.fid.embed import (default_cache_dir, reference_stats, stats_from_generator, stats_from_images,
                                     unreadable_note)
from sampling.eval.fid.sources import first_image_size, image_set, parse_source
from sampling.eval.fid.stats import FeatureStats, check_compatible, require_samples, score
from sampling.options import add_sampling_arguments, as_sampled, sampling_options


def build_parser() -> argparse.ArgumentParser:
    from sampling.eval.features import FEATURES

    p = argparse.ArgumentParser(
        prog="hart fid", description="Fréchet distance (FID with Inception, FD-EffNet with EfficientNet-lite0) "
        "and KID of a model's samples or of a set of images.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=examples_epilog(__doc__),
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="model folder (tokenizer/ + generator/): generate --num samples")
    what.add_argument("--images", help="score these images: a folder (recursive) or DATASET[:split]")
    p.add_argument("--num", type=int, default=None,
                   help="samples to generate (--model, default 10000) or images to use (--images, default all)")
    p.add_argument("--ref", required=True, help="DATASET[:split] (fashion-mnist, synthetic), a folder, or a .npz")
    p.add_argument("--ref-num", type=int, default=None, help="use the first N reference images (default all)")
    p.add_argument("--features", choices=FEATURES, default="inception",
                   help="inception (FID, needs inception-2015-12-05.pt; the default) or effnet-lite0 (FD-EffNet, "
                        "offline)")
    p.add_argument("--inception-weights", default=None, metavar="PATH",
                   help="clean-fid's inception-2015-12-05.pt (file or folder; default: clean-fid's cache /tmp)")
    p.add_argument("--resolution", type=int, default=None,
                   help="image size of dataset references (default: the model's, else the folder images')")
    p.add_argument("--batch-size", type=int, default=50, help="images per forward (default 50)")
    p.add_argument("--out", default="fid.json", help="result JSON (default fid.json)")
    p.add_argument("--save-stats", default=None, metavar="NPZ", help="also save the scored set's statistics")
    p.add_argument("--cache-dir", default=None,
                   help="reference statistics cache (default $HART_CACHE/fid or ~/.cache/hart/fid)")
    p.add_argument("--data-dir", default=None, help="folder of the fashion-mnist IDX files")
    p.add_argument("--min-samples", type=int, default=None,
                   help="fewest images per set (default feature dim + 1, for a full-rank covariance)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers reading/resizing images")
    add_device_argument(p)
    g = p.add_argument_group("sampling (--model)")
    g.add_argument("--seed", type=int, default=0, help="seed of sample 0 (default 0)")
    g.add_argument("--prompts", default=None, metavar="FILE",
                   help="text models: one prompt per line; sample j draws prompt j %% P")
    add_sampling_arguments(g)
    g.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32", help="transformer compute dtype")
    g.add_argument("--cuda-graph", action="store_true",
                   help="GPU: replay each batch's whole sampling run as one CUDA graph (captured once per batch size)")
    g.add_argument("--text-encoder-path", default=None, help="text models: the encoder's folder (default: the config's)")
    return p


def _check_args(args) -> None:
    for name in ("num", "ref_num", "batch_size", "resolution"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {v}")
    if args.min_samples is not None and args.min_samples < 2:
        raise UserError(f"--min-samples must be >= 2 (a covariance needs two images), got {args.min_samples}")
    if args.workers < 0:
        raise UserError(f"--workers must be >= 0, got {args.workers}")
    output_file(args.out)  # writable before any image is embedded
    if args.save_stats:
        output_file(args.save_stats, "--save-stats")


def _print_result(result: dict) -> None:
    kid = result.get("kid")
    std = result["kid_std"]
    kid_txt = f"  KID {kid:.5f}" + (f" ± {std:.5f}" if std is not None else "") if kid is not None else ""
    print(f"{result['metric']} {result['score']:.4f}{kid_txt}  ({result['num']} images vs {result['ref']['source']}"
          f" ({result['ref'].get('n')}), {result['features']} features)")


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    _check_args(args)
    options = asdict(sampling_options(args))  # validated before anything is loaded
    ref_source = parse_source(args.ref, allow_stats=True, flag="--ref")
    img_source = parse_source(args.images, allow_stats=False, flag="--images") if args.images else None

    from hart.common.dist import init_distributed
    from hart.common.io import write_json
    from sampling.eval.features import load_extractor

    dist = init_distributed(args.device)
    try:
        extractor = load_extractor(args.features, args.inception_weights, dist.device)
        min_samples = args.min_samples or extractor.dim + 1
        settings = {"features": args.features, "batch_size": args.batch_size, "world_size": dist.world_size,
                    "protocol": f"clean: uint8 RGB, PIL bicubic per channel to {extractor.input_size}, "
                                f"{extractor.dim}-d pooled features"}

        pipe, prompts = None, None
        if args.model:
            num = args.num or 10000
            require_samples(num, min_samples, f"--num {num}", extractor.metric, extractor.dim)
            from sampling import HARTPipeline

            pipe = HARTPipeline.from_pretrained(args.model, device=dist.device, dtype=args.dtype,
                                                cuda_graph=args.cuda_graph, text_encoder_path=args.text_encoder_path)
            if args.sampling is None and pipe.generator.config.display.sampling:  # the model's own preset
                options = asdict(sampling_options(args, pipe.generator.config.display.sampling))
            if pipe.is_text != bool(args.prompts):
                raise UserError(f"{args.model} is text-conditioned: pass --prompts FILE" if pipe.is_text else
                                f"{args.model} is class-conditional: drop --prompts")
            if args.prompts:
                from sampling.generate import read_prompts

                prompts = read_prompts(args.prompts)
                pipe.text_encoder.warn_long(prompts)  # once, for the whole file
                settings["prompts"] = args.prompts
            resolution = pipe.tokenizer.config.resolution
            if args.resolution and args.resolution != resolution:
                raise UserError(f"--resolution {args.resolution} differs from the model's {resolution} px")
            settings.update(model=args.model, num=num, seed=args.seed, dtype=args.dtype,
                            **as_sampled(options, pipe.generator.config))
        else:
            resolution = args.resolution
            for src in (img_source, ref_source):
                if resolution is None and src.kind == "folder":
                    resolution = first_image_size(src.files)
            if resolution is None and ref_source.kind == "stats":
                resolution = FeatureStats.load(ref_source.path).meta.get("resolution")
            if resolution is None:
                raise UserError("cannot tell the image size for the dataset: pass --resolution")
            settings.update(images=img_source.label, num=args.num)
            # counted before the reference is embedded: too few images is one line at once
            images = image_set(img_source, resolution, args.num, extractor.input_size, args.data_dir)
            if args.num and len(images) < args.num and dist.is_main:
                print(f"note: {img_source.label} has {len(images)} images, fewer than --num {args.num}: scoring "
                      f"all {len(images)}", file=sys.stderr)
            require_samples(len(images), min_samples, img_source.label, extractor.metric, extractor.dim)
        settings["resolution"] = resolution

        ref, ref_info = reference_stats(ref_source, extractor, resolution, args.ref_num, args.batch_size, dist,
                                        args.cache_dir or default_cache_dir(), args.data_dir, args.workers,
                                        min_samples)
        check_compatible(FeatureStats(extractor.dim), ref, ref_source.label, extractor.name, resolution)

        if pipe is not None:
            stats = stats_from_generator(pipe, num, extractor, pipe.generator.config.num_classes, args.batch_size,
                                         args.seed, dist, options, prompts=prompts)
            skipped = 0
        else:
            stats, skipped = stats_from_images(images, extractor, args.batch_size, dist, args.workers)
            if stats.n == 0:
                raise UserError(f"no readable images in {img_source.label} ({skipped} unreadable)")
            if skipped and dist.is_main:
                print(f"warning: skipped {skipped} unreadable image(s) in {img_source.label}{unreadable_note(images)}",
                      file=sys.stderr)
            require_samples(stats.n, min_samples, img_source.label, extractor.metric, extractor.dim)
        if not dist.is_main:
            return 0

        result = score(stats, ref, extractor.metric)
        result.update(features=extractor.name, feature_dim=extractor.dim, num=stats.n, skipped=skipped,
                      ref=ref_info, settings=settings)
        _print_result(result)
        write_json(args.out, result)
        if args.save_stats:
            stats.meta = {"extractor": extractor.name, "source": args.model or img_source.label,
                          "resolution": resolution, "num": stats.n}
            stats.save(args.save_stats)
        print(f"wrote {args.out}")
        return 0
    finally:
        dist.close()


if __name__ == "__main__":
    raise SystemExit(main())
