"""``hart convert``: official VAR / HART checkpoints -> this project's model folders.

Examples::

    hart convert var --vae vae_ch160v4096z32.pth --var var_d16.pth --out models/var-d16
    hart convert var --vae vae_ch160v4096z32.pth --out models/var-vae
    hart convert hart-tokenizer --ckpt hart-0.7b-1024px/tokenizer/pytorch_model.bin --out models/hart-tok
    hart convert hart --ckpt hart-0.7b-1024px --out models/hart-0.7b --text-encoder Qwen2-VL-1.5B-Instruct

``convert var`` with ``--var`` writes a complete model folder (``OUT/tokenizer/`` +
``OUT/generator/``) that ``hart generate --model OUT`` runs; with ``--vae`` alone, and for
``convert hart-tokenizer``, ``OUT`` is a tokenizer folder (``hart eval-tokenizer --model OUT``). ``convert hart`` reads
HART's release folder (``llm/`` with ``config.json`` and ``ema_model.bin`` or
``pytorch_model.bin``, and ``tokenizer/``) and writes a full text-to-image model folder; the
Qwen2 text encoder stays where the user keeps it (``--text-encoder``, recorded in the config,
``--text-encoder-path`` overrides it at run time).

Rules:

* ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` are read with ``torch.load(weights_only=True)``,
  so a file that would need to run code to unpickle is refused; ``.safetensors`` as is.
* Strict: every tensor of the file is consumed (HART's training-only tensors, the ``disc.*``
  discriminator and a ``decoder2`` if present, are recognised and deliberately left out), every shape is checked, and a wrong or partial file
  gets one message listing the missing and unexpected keys in the file's own names.
* Sizes (channels, levels, depth, width, heads, vocabulary) are read off the tensors. The
  scale schedule follows the generator's position table when there is one, otherwise
  ``--resolution`` (VAR's published schedules) or ``--patch-nums``.

The readers of the official tensors and VAR's checkpoints are :mod:`hart.convert_var`; HART's
releases (its names, its config.json, its conditioning) :mod:`hart.convert_hart`.
"""
from __future__ import annotations

import argparse
import re

from hart.common.args import examples_epilog
from hart.common.errors import UserError, cli_entry
from hart.convert_hart import convert_hart, convert_hart_tokenizer
from hart.convert_var import convert_var, parse_patch_nums


# ----------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hart convert", description="Convert official VAR / HART checkpoints into model folders.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=examples_epilog(__doc__),
    )
    sub = p.add_subparsers(dest="what", required=True, metavar="{var,hart-tokenizer,hart}")
    v = sub.add_parser("var", help="VAR tokenizer (vae_ch160v4096z32.pth) [+ transformer var_dN.pth]")
    v.add_argument("--vae", required=True, help="VAR tokenizer checkpoint")
    v.add_argument("--var", default=None, help="VAR transformer checkpoint (omit to write the tokenizer alone)")
    v.add_argument("--resolution", type=int, default=None,
                   help="image size whose published schedule to use when --var does not fix it (default 256)")
    h = sub.add_parser("hart-tokenizer", help="HART hybrid tokenizer checkpoint (vae.* + disc.* keys)")
    h.add_argument("--ckpt", required=True, help="HART tokenizer checkpoint")
    h.add_argument("--resolution", type=int, default=None, help="image size of the scale schedule (default 1024)")
    for s in (v, h):
        s.add_argument("--patch-nums", default=None, help="explicit scale schedule, e.g. 1,2,3,4,5,6,8,10,13,16")
    t = sub.add_parser("hart", help="HART text-to-image release folder (llm/ + tokenizer/, e.g. hart-0.7b-1024px)")
    t.add_argument("--ckpt", required=True, help="the release folder: llm/ (config.json, ema_model.bin) and tokenizer/")
    t.add_argument("--text-encoder", default=None,
                   help="HART's Qwen2 text model folder (its Qwen2-VL-1.5B-Instruct download), recorded in the model's config (--text-encoder-path "
                        "overrides it when sampling)")
    for s in (v, h, t):
        s.add_argument("--out", required=True, help="output folder")
        s.add_argument("--overwrite", action="store_true", help="replace an existing --out that is a model folder written by this tool (never one it reads from)")
    return p


def _summarise(names: list[str]) -> str:
    """['attn_bias_for_masking', 'blocks.0.attn.zero_k_bias', ...] -> a short list with counts."""
    groups: dict[str, int] = {}
    for n in names:
        key = re.sub(r"\.\d+\.", ".*.", n)
        groups[key] = groups.get(key, 0) + 1
    return ", ".join(k if c == 1 else f"{k} (x{c})" for k, c in groups.items())


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.what == "hart":
        out, dropped = convert_hart(args.ckpt, args.out, text_encoder=args.text_encoder, overwrite=args.overwrite)
        print(f"wrote model folder {out} (tokenizer/ + generator/); left out, recomputed or training-only: "
              f"{_summarise(dropped)}")
        if not args.text_encoder:
            print("no --text-encoder given: pass --text-encoder-path PATH/Qwen2-VL-1.5B-Instruct when sampling")
        return 0
    pns = parse_patch_nums(args.patch_nums) if args.patch_nums else None
    if pns and args.resolution is not None:
        raise UserError("give --patch-nums or --resolution, not both (--patch-nums is the whole schedule)")
    if args.what == "var":
        out = convert_var(args.vae, args.out, var=args.var, resolution=args.resolution, patch_nums=pns,
                          overwrite=args.overwrite)
        kind = "model folder (tokenizer/ + generator/)" if args.var else "tokenizer folder"
        print(f"wrote {kind} {out}")
    else:
        out, dropped = convert_hart_tokenizer(args.ckpt, args.out, resolution=1024 if args.resolution is None else args.resolution, patch_nums=pns,
                                              overwrite=args.overwrite)
        print(f"wrote tokenizer folder {out}" + (f" (left out {dropped} training-only tensors)" if dropped else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
