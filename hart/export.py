"""``hart export``: copy a model folder with smaller weight files, for shipping.

Examples::

    hart export --model runs/gen --out models/fm-small --storage int8
    hart export --model runs/tok --out models/tok16 --storage fp16
    hart export --model runs/gen --tokenizer runs/tok-stage2 --out models/fm --storage int8
    hart export --model runs/gen --out models/fm --diff-temperature 0.6
    hart export --model runs/gen --tokenizer runs/tok3 --out models/fm --grayscale on

``--model`` is a full model folder (``tokenizer/`` + ``generator/``, as ``hart train``
writes) or a single model folder (a tokenizer or a generator). Only the weights are
written (``config.json`` + ``model.safetensors`` per model), not the training state.
``--storage int8`` keeps each large weight matrix / conv kernel as int8 with one scale per
output row and the rest in fp16 (about a quarter of fp32); ``int4`` stores the Linear
layers' weights in 4-bit groups of 32 (scale and minimum per group, about a seventh of fp32)
and the rest as ``int8``; ``fp16`` halves everything.
Loading restores fp32 weights, so every command reads the result like any model folder.

``--tokenizer DIR`` swaps in another tokenizer that makes the same tokens: one fine-tuned
from the model's own with ``hart train-tokenizer --init ... --freeze-codebook`` (a sharper
decoder on the same encoder and codebook). Anything else is refused, since the generator
was trained on the tokens of its own tokenizer.

``--diff-temperature T`` records in the generator's config the start-noise scale its
residual head samples with unless a command says otherwise (``hart generate``, ``hart fid``,
``hart eval-residual``, the demo and ``HARTPipeline`` all read it): a setting measured best
for this model ships with its weights.

``--grayscale on|off`` sets the tokenizer's grayscale output (its decoder's channel mean; see
``hart train-tokenizer``, which measures it on the training data for new runs): the way to
give it to a tokenizer trained before it existed, without training it again.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from hart.common.args import examples_epilog
from hart.common.errors import UserError, cli_entry
from hart.common.io import STORAGES


def model_classes() -> dict:
    from hart.model import HARTGenerator
    from tokenizer.model import HybridTokenizer

    return {cls.__name__: cls for cls in (HybridTokenizer, HARTGenerator)}


def load_folder(folder: Path):
    """A single model folder -> its module, whichever class its config.json names."""
    from hart.common.io import CONFIG_NAME, read_json

    name = read_json(folder / CONFIG_NAME).get("_class")
    classes = model_classes()
    if name not in classes:
        raise UserError(f"{folder}/config.json names {name!r}, not one of {', '.join(classes)}")
    return classes[name].from_pretrained(folder)


TOKEN_PARTS = ("encoder.", "quant_conv.", "quantize.")  # what makes the ids and the residual


def check_same_tokens(a, b, where: str) -> None:
    """One line unless tokenizers ``a`` and ``b`` have identical token-making weights."""
    sa, sb = a.state_dict(), b.state_dict()
    keys = sorted(k for k in sa if k.startswith(TOKEN_PARTS))
    differ = [k for k in keys if k not in sb or sa[k].shape != sb[k].shape or not bool((sa[k] == sb[k]).all())]
    # grayscale is what the decoder outputs, not how tokens are made: a decoder stage may set it
    ca, cb = a.config.replace(grayscale=False), b.config.replace(grayscale=False)
    if ca != cb or differ:
        what = "its config" if ca != cb else ", ".join(differ[:3])
        raise UserError(f"{where} does not make the same tokens as the model's tokenizer ({what} differ); "
                        "only a tokenizer fine-tuned with --freeze-codebook from it can replace it")


def export(model, out, storage: str = "int8", overwrite: bool = False, tokenizer=None,
           diff_temperature: float | None = None, grayscale: bool | None = None) -> Path:
    from hart.common.fs import prepare_out_dir
    from hart.common.io import resolve_dir
    from hart.common.models import write_models

    if diff_temperature is not None and not (diff_temperature >= 0 and math.isfinite(diff_temperature)):
        raise UserError(f"--diff-temperature must be >= 0, got {diff_temperature}")
    src = resolve_dir(model)
    out = prepare_out_dir(out, overwrite, sources=(src, tokenizer))
    subs = [s for s in ("tokenizer", "generator") if (src / s).is_dir()]
    if subs:
        models = {s: load_folder(src / s) for s in subs}
    elif (src / "config.json").is_file():
        models = {"": load_folder(src)}
    else:
        raise UserError(f"{src} is not a model folder: no config.json and no tokenizer/ or generator/")
    if tokenizer is not None:
        if "tokenizer" not in models:
            raise UserError("--tokenizer replaces the tokenizer of a model folder (tokenizer/ + generator/)")
        new = load_folder(resolve_dir(tokenizer))
        if type(new) is not type(models["tokenizer"]):
            raise UserError(f"--tokenizer {tokenizer} holds a {type(new).__name__}, not a tokenizer: give a tokenizer "
                            "folder (from hart train-tokenizer --freeze-codebook)")
        check_same_tokens(models["tokenizer"], new, tokenizer)
        models["tokenizer"] = new
    if diff_temperature is not None:
        gen = models.get("generator", models.get(""))
        if gen is None or getattr(gen, "diffusion", None) is None:
            raise UserError("--diff-temperature is a setting of the residual head: give a generator that has one")
        gen.config = gen.config.replace_in("head", temperature=diff_temperature)
    if grayscale is not None:
        tok = models.get("tokenizer", models.get(""))
        if tok is None or not hasattr(tok.config, "grayscale"):
            raise UserError("--grayscale is a setting of the tokenizer's decoder: give a folder that has a tokenizer")
        tok.config = tok.config.replace(grayscale=grayscale)
    write_models(out, models, storage)
    return out


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hart export", description="Copy a model folder with smaller weight files (fp16, int8 or int4).",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=examples_epilog(__doc__),
    )
    p.add_argument("--model", required=True, help="model folder (tokenizer/ + generator/) or a single model folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--storage", choices=STORAGES, default="int8",
                   help="weight storage (default int8; int4: the Linear layers in 4-bit groups of 32, the rest as int8)")
    p.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="ship this tokenizer instead (one fine-tuned from the model's with --freeze-codebook)")
    p.add_argument("--diff-temperature", type=float, default=None, metavar="T",
                   help="record the residual head's default start-noise scale in the generator's config")
    p.add_argument("--grayscale", choices=["on", "off"], default=None,
                   help="set the tokenizer's grayscale output (default: keep it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out that is a model folder written by this tool (never one it reads from)")
    return p


@cli_entry
def main(argv=None, model_folder=None):
    """``model_folder``: a model name or path -> its folder (the bundled models by name); None:
    paths only."""
    args = build_parser().parse_args(argv)
    if model_folder is not None:
        args.model = str(model_folder(args.model))
    out = export(args.model, args.out, args.storage, args.overwrite, args.tokenizer, args.diff_temperature,
                 None if args.grayscale is None else args.grayscale == "on")
    print(f"wrote {out}: {folder_bytes(out) / 1e6:.1f} MB ({args.storage} weights)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
