"""``hart export``: copy a model folder with smaller weight files, for shipping.

Examples::

    hart export --model runs/gen --out models/fm-small --storage int8
    hart export --model runs/tok --out models/tok16 --storage fp16

``--model`` is a full model folder (``tokenizer/`` + ``generator/``, as ``hart train``
writes) or a single model folder (a tokenizer or a generator). Only the weights are
written (``config.json`` + ``model.safetensors`` per model), not the training state.
``--storage int8`` keeps each large weight matrix / conv kernel as int8 with one scale per
output row and the rest in fp16 (about a quarter of fp32); ``fp16`` halves everything.
Loading restores fp32 weights, so every command reads the result like any model folder.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from hart.errors import UserError, cli_entry


def model_classes() -> dict:
    from hart.model import HARTGenerator
    from tokenizer.model import HybridTokenizer

    return {cls.__name__: cls for cls in (HybridTokenizer, HARTGenerator)}


def load_folder(folder: Path):
    """A single model folder -> its module, whichever class its config.json names."""
    from hart.io import CONFIG_NAME, read_json

    name = read_json(folder / CONFIG_NAME).get("_class")
    classes = model_classes()
    if name not in classes:
        raise UserError(f"{folder}/config.json names {name!r}, not one of {', '.join(classes)}")
    return classes[name].from_pretrained(folder)


def export(model, out, storage: str = "int8", overwrite: bool = False) -> Path:
    from hart.io import prepare_out_dir, resolve_dir, write_models

    src = resolve_dir(model)
    out = prepare_out_dir(out, overwrite)
    if out.resolve() == src.resolve():
        raise UserError("--out must differ from --model")
    subs = [s for s in ("tokenizer", "generator") if (src / s).is_dir()]
    if subs:
        models = {s: load_folder(src / s) for s in subs}
    elif (src / "config.json").is_file():
        models = {"": load_folder(src)}
    else:
        raise UserError(f"{src} is not a model folder: no config.json and no tokenizer/ or generator/")
    write_models(out, models, storage)
    return out


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hart export", description="Copy a model folder with smaller weight files (fp16 or int8).",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("Examples::", 1)[1],
    )
    p.add_argument("--model", required=True, help="model folder (tokenizer/ + generator/) or a single model folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--storage", choices=("fp32", "fp16", "int8"), default="int8", help="weight storage (default int8)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    return p


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    out = export(args.model, args.out, args.storage, args.overwrite)
    print(f"wrote {out}: {folder_bytes(out) / 1e6:.1f} MB ({args.storage} weights)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
