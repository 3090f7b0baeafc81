"""The ``hart`` command: a thin router. Each subcommand is the ``main(argv)`` of the module
that owns it, imported only when that subcommand runs, so ``hart --help`` starts fast.

    hart train-tokenizer --preset fm-32 --data fashion-mnist --out runs/tok
    hart eval-tokenizer --model runs/tok --data fashion-mnist --split test
    hart train --tokenizer runs/tok --preset fm-s --data fashion-mnist --out runs/gen
    hart generate --model runs/gen --class 3 --num 8 --out grid.png
    hart convert var --vae vae_ch160v4096z32.pth --var var_d16.pth --out models/var-d16
    hart plot runs/gen runs/gen-nohead --out curves.png
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train-tokenizer": ("tokenizer.train", "train the hybrid tokenizer"),
    "eval-tokenizer": ("tokenizer.evaluate", "PSNR and codebook usage of a tokenizer on a dataset split"),
    "extract-tokens": ("hart.tokens", "pre-encode a dataset once into a token cache for generator training"),
    "train": ("hart.train", "train the generator (single process or torchrun)"),
    "eval-residual": ("sampling.eval.residual", "how much of the tokenizer's residual the diffusion head recovers"),
    "eval-alignment": ("sampling.eval.alignment", "prompt alignment of a text-to-image model (shapes checker)"),
    "generate": ("sampling.generate", "generate a grid of images (PNG, JPEG...) from a model folder"),
    "fid": ("sampling.eval.fid.cli", "Frechet distance (FID / FD-EffNet) of a model or an image folder"),
    "demo": ("demo.app", "Gradio demo on a model folder"),
    "convert": ("hart.convert", "convert official VAR / HART checkpoints into model folders"),
    "export": ("hart.export", "copy a model folder with smaller (fp16 / int8 / int4) weight files"),
    "plot": ("hart.plot", "draw the training curves of one or more runs (metrics.jsonl) as a PNG"),
}

# What a command borrows from a higher layer, handed to its main() as keyword arguments
# ("module:attribute"). The router is the one place that loads modules of every layer by
# name: `hart train` (hart layer) gets the sampler of its sample grids from sampling, and the
# bundled models by name (--init default-t2i; export's and eval-tokenizer's --model too).
WIRING = {
    "train": {"sampler": "sampling.previews:sample_images", "model_folder": "sampling.pipeline:model_folder"},
    "export": {"model_folder": "sampling.pipeline:model_folder"},
    "eval-tokenizer": {"model_folder": "sampling.pipeline:model_folder"},
}


def usage() -> str:
    lines = ["usage: hart <command> [options]", "", "commands:"]
    lines += [f"  {name:<18} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "hart <command> --help shows the options of a command; hart --version the version."]
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"hart {version('hart-open')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            print("hart (not installed: pip install -e .)")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    from hart.common.errors import UserError, fault_line

    try:  # each main already says its own errors in one line (cli_entry); this catches the rest
        module = importlib.import_module(COMMANDS[name][0])
        return module.main(rest, **{k: _load(v) for k, v in WIRING.get(name, {}).items()})
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    except OSError as e:  # permission denied, a full disk, a read-only file system: one line, exit 1
        print(f"error: {fault_line(e)}", file=sys.stderr)
        raise SystemExit(1) from None


def _load(target: str):
    mod, attr = target.split(":")
    return getattr(importlib.import_module(mod), attr)


if __name__ == "__main__":
    sys.exit(main())
