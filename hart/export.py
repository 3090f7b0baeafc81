"""``hart export``: copy a model folder with smaller weight files, for shipping.

Examples::

    hart export --model runs/gen --out models/fm-small --storage int8
    hart export --model runs/tok --out models/tok16 --storage fp16
    hart export --model runs/gen --tokenizer runs/tok-stage2 --out models/fm --storage int8
    hart export --model runs/gen --out models/fm --diff-temperature 0.6
    hart export --model runs/gen --tokenizer runs/tok3 --out models/fm --grayscale on
    hart export --model runs/gen --out models/fm-pca --residual-pca 256 --data fashion-mnist

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

``--residual-pca K --data SPEC`` fits the top K principal components of the tokenizer's
residual maps (latent - f_hat of the true ids, z x n x n values each) on ``--pca-num`` images
of the data's train split, evenly spaced, and stores them with the generator (fp16 in any
storage; 1 MB at K 256 for an 8 x 8 x 32 map); the generator then projects its residual head's
draws onto them and drops the rest of each draw, wherever it samples. ``--residual-pca 0``
removes a stored basis.

``--grayscale on|off`` sets the tokenizer's grayscale output (its decoder's channel mean; see
``hart train-tokenizer``, which measures it on the training data for new runs): the way to
give it to a tokenizer trained before it existed, without training it again.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

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


@torch.no_grad()
def fit_residual_pca(tok, dataset, num: int, k: int, batch_size: int = 200,
                     transform=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean (D,) and the top ``k`` principal directions (D, k), orthonormal columns, of the
    residual maps of ``num`` images of ``dataset`` (evenly spaced), D = z x n x n.
    ``transform``, when given, maps each batch of residual maps (B, z, n, n) first (e.g. into
    a head's target units)."""
    from tqdm import tqdm

    num = min(num, len(dataset))
    idx = torch.linspace(0, len(dataset) - 1, num).round().long().tolist()
    total, outer = None, None
    for s in tqdm(range(0, num, batch_size), desc="residual maps", leave=False, dynamic_ncols=True):
        x = torch.stack([dataset[i][0] for i in idx[s:s + batch_size]])
        r = tok.encode(x).residual
        r = (transform(r) if transform is not None else r).flatten(1).double()  # (B, D)
        total = r.sum(0) if total is None else total + r.sum(0)
        outer = r.T @ r if outer is None else outer + r.T @ r
    mean = total / num
    cov = outer / num - torch.outer(mean, mean)
    _, vec = torch.linalg.eigh(cov)  # ascending
    return mean.float(), vec[:, -k:].flip(1).float().contiguous()


def export(model, out, storage: str = "int8", overwrite: bool = False, tokenizer=None,
           diff_temperature: float | None = None, grayscale: bool | None = None,
           residual_pca: int | None = None, data: str | None = None, pca_num: int = 30000,
           data_dir=None) -> Path:
    from hart.common.io import prepare_out_dir, resolve_dir, write_models

    if diff_temperature is not None and not (diff_temperature >= 0 and math.isfinite(diff_temperature)):
        raise UserError(f"--diff-temperature must be >= 0, got {diff_temperature}")
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
    if tokenizer is not None:
        if "tokenizer" not in models:
            raise UserError("--tokenizer replaces the tokenizer of a model folder (tokenizer/ + generator/)")
        new = load_folder(resolve_dir(tokenizer))
        check_same_tokens(models["tokenizer"], new, tokenizer)
        models["tokenizer"] = new
    if diff_temperature is not None:
        gen = models.get("generator", models.get(""))
        if gen is None or getattr(gen, "diffusion", None) is None:
            raise UserError("--diff-temperature is a setting of the residual head: give a generator that has one")
        gen.config = gen.config.replace(diff_temperature=diff_temperature)
    if residual_pca is not None:
        set_residual_pca(models, residual_pca, data, pca_num, data_dir)
    if grayscale is not None:
        tok = models.get("tokenizer", models.get(""))
        if tok is None or not hasattr(tok.config, "grayscale"):
            raise UserError("--grayscale is a setting of the tokenizer's decoder: give a folder that has a tokenizer")
        tok.config = tok.config.replace(grayscale=grayscale)
    write_models(out, models, storage)
    return out


def set_residual_pca(models: dict, k: int, data: str | None, num: int, data_dir=None) -> None:
    """Give the generator of ``models`` a residual basis of ``k`` components (0: none), in place."""
    from hart.common.data import make_dataset
    from hart.model import HARTGenerator

    gen, tok = models.get("generator"), models.get("tokenizer")
    if gen is None or tok is None or gen.diffusion is None:
        raise UserError("--residual-pca needs a model folder (tokenizer/ + generator/) whose generator has a residual head")
    if not 0 <= k <= gen.config.residual_dim:
        raise UserError(f"--residual-pca must be in 0..{gen.config.residual_dim} (the residual map's values), not {k}")
    if num < 1:
        raise UserError(f"--pca-num must be at least 1, not {num}")
    basis = ("residual_mean", "residual_basis")  # the rest (a map head's residual_metric too) is kept
    state = {n: v for n, v in gen.state_dict().items() if n not in basis}
    new = HARTGenerator(gen.config.replace(residual_pca=k))
    missing, unexpected = new.load_state_dict(state, strict=False)
    if unexpected or any(n not in basis for n in missing):
        raise UserError(f"the generator's weights do not fit its config: {(unexpected or missing)[:3]}")
    if k:
        if not data:
            raise UserError("--residual-pca fits the basis on training images: give --data SPEC (e.g. fashion-mnist)")
        dataset = make_dataset(data, "train", tok.config.resolution, data_dir)
        mean, basis = fit_residual_pca(tok, dataset, num, k)
        new.residual_mean.copy_(mean)
        new.residual_basis.copy_(basis)
    models["generator"] = new.eval()


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hart export", description="Copy a model folder with smaller weight files (fp16 or int8).",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("Examples::", 1)[1],
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
    p.add_argument("--residual-pca", type=int, default=None, metavar="K",
                   help="project the residual head's draws onto the top K principal components of the "
                        "tokenizer's residual maps, fitted on --data (0: remove a stored basis)")
    p.add_argument("--data", default=None, help="data spec whose train split the --residual-pca basis is fitted on")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--pca-num", type=int, default=30000, help="images the basis is fitted on (default 30000)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    return p


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    out = export(args.model, args.out, args.storage, args.overwrite, args.tokenizer, args.diff_temperature,
                 None if args.grayscale is None else args.grayscale == "on", args.residual_pca, args.data,
                 args.pca_num, args.data_dir)
    print(f"wrote {out}: {folder_bytes(out) / 1e6:.1f} MB ({args.storage} weights)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
