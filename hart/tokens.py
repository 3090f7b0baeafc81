"""Token cache: encode a dataset once so generator epochs skip the encoder.

Examples:
    hart extract-tokens --tokenizer runs/tok --data fashion-mnist --split train --out runs/fm-tokens
    hart train --tokenizer runs/tok --tokens runs/fm-tokens --preset fm-s --out runs/gen

    hart extract-tokens --tokenizer runs/shapes-tok --data shapes --out runs/shapes-tokens

A cache folder holds ``tokens.safetensors`` (``ids`` (N, L) with every scale's ids
concatenated, ``residual`` (N, z, n, n) float16, ``labels`` (N,)) and ``meta.json`` (the
dataset, its class names, and a fingerprint of the tokenizer weights, so a cache is never
used with a tokenizer that did not make it). A captioned dataset (``shapes``, ``emoji``,
``captions:PATH``) also gets ``captions.json``, its U distinct captions as text, which
``labels`` index. The encoder is not run here: the trainer encodes each batch's captions in
the step with the model's own encoder and prompt length, so one cache serves any text model
(docs/experiments.md has what that costs a step and saves on disk). Caches written before hold
the embeddings instead
(``context`` (U, T, D) float16 and ``context_mask`` (U, T)); they load and train as they did,
for a model of the encoder and T they were made with (``hart train`` refuses another in one line).
"""
from __future__ import annotations

import argparse
import hashlib

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from hart.data.datasets import add_data_arguments, data_split, make_dataset
from hart.data.sources import is_captioned
from hart.common.errors import UserError, cli_entry
from hart.common.fs import prepare_out_dir
from hart.common.io import WEIGHTS_NAME, atomic_dir, component_dir, read_json, resolve_dir, write_json
from tokenizer import HybridTokenizer

TOKENS_NAME = "tokens.safetensors"
CAPTIONS_NAME = "captions.json"
EXAMPLES = 6  # distinct captions kept as a text model's example prompts
EXAMPLE_MAX_CHARS = 80  # an example prompt is a label of a grid and a demo button: a short caption


def pick_examples(captions) -> list:
    """Up to ``EXAMPLES`` distinct captions, in order, of at most ``EXAMPLE_MAX_CHARS``
    characters (the shortest ones when none is that short)."""
    distinct = list(dict.fromkeys(captions))
    short = [c for c in distinct if len(c) <= EXAMPLE_MAX_CHARS]
    return (short or sorted(distinct, key=len))[:EXAMPLES]


def tokenizer_fingerprint(tokenizer_dir) -> str:
    """sha256 of the tokenizer's weights file (first 16 hex digits)."""
    h = hashlib.sha256()
    with open(resolve_dir(tokenizer_dir) / WEIGHTS_NAME, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def split_scales(ids: torch.Tensor, patch_nums) -> list:
    """(B, L) concatenated ids -> K tensors (B, pn*pn)."""
    return list(ids.split([p * p for p in patch_nums], dim=1))


def cache_meta(path) -> dict:
    """A token cache's meta.json alone (its data, split, count, examples), without its tensors."""
    return read_json(resolve_dir(path) / "meta.json")


class TokenCache(torch.utils.data.Dataset):
    """Items: (ids (L,) long, residual (z, n, n) float32, condition): the label (int), or for a
    captioned cache its caption (str; ``encoded`` False), or for a cache that holds the prompt
    embeddings (the earlier layout; ``encoded`` True) the prompt's (tokens (T, D) float32, mask
    (T,) bool)."""

    def __init__(self, path):
        path = resolve_dir(path)
        self.meta = cache_meta(path)
        try:
            t = load_file(str(path / TOKENS_NAME))
        except FileNotFoundError:
            raise UserError(f"{path} is not a token cache (missing {TOKENS_NAME}); make one with hart extract-tokens") from None
        self.ids, self.residual, self.labels = t["ids"], t["residual"], t["labels"]
        self.classes = tuple(self.meta.get("classes", ()))
        self.context, self.context_mask = t.get("context"), t.get("context_mask")
        self.encoded = self.context is not None
        self.captions = None
        if not self.encoded and "num_captions" in self.meta:
            self.captions = read_json(path / CAPTIONS_NAME, expect=list)
            if len(self.captions) != self.meta.get("num_captions"):
                raise UserError(f"{path / CAPTIONS_NAME} does not hold the cache's {self.meta.get('num_captions')} "
                                f"captions; make the cache again: hart extract-tokens ... --out {path} --overwrite")
        self.captioned = self.encoded or self.captions is not None

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        j = int(self.labels[i])
        if self.encoded:
            return self.ids[i].long(), self.residual[i].float(), (self.context[j].float(), self.context_mask[j].bool())
        if self.captions is not None:
            return self.ids[i].long(), self.residual[i].float(), self.captions[j]
        return self.ids[i].long(), self.residual[i].float(), j

    def check_text_encoder(self, name: str, context_tokens: int) -> None:
        """A cache of encoded prompts (the earlier layout) serves only a model with its encoder and
        prompt length; a cache of captions serves any."""
        if not self.encoded:
            return
        got = (self.meta.get("text_encoder"), self.meta.get("context_tokens"))
        if got != (name, context_tokens):
            raise UserError(f"the token cache is for prompts encoded by {got[0]} at {got[1]} tokens, the model "
                            f"wants {name} at {context_tokens}; make the cache again with hart extract-tokens (a cache of "
                            "captions serves any text model; --overwrite replaces this one)")

    def check_tokenizer(self, tokenizer_dir) -> None:
        fp = tokenizer_fingerprint(tokenizer_dir)
        if self.meta.get("tokenizer_fingerprint") != fp:
            raise UserError(
                f"the token cache was made with another tokenizer ({self.meta.get('tokenizer')}); "
                f"make it again: hart extract-tokens --tokenizer {tokenizer_dir} ... (--overwrite replaces it)"
            )


@torch.no_grad()
def encode_dataset(tokenizer: HybridTokenizer, dataset, batch_size: int = 256, device="cpu",
                   progress: bool = True) -> dict:
    """Encode every image: returns the tensors a cache file holds."""
    ids, res, labels, captions = [], [], [], {}
    V = tokenizer.config.codebook_size
    id_dtype = torch.int16 if V <= 32767 else torch.int32
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for x, y in tqdm(loader, desc="encode", disable=not progress):
        code = tokenizer.encode(x.to(device))
        ids.append(torch.cat(code.ids, 1).to(id_dtype).cpu())
        res.append(code.residual.to(torch.float16).cpu())
        if isinstance(y, (list, tuple)):  # captions: index of the distinct caption
            y = torch.tensor([captions.setdefault(c, len(captions)) for c in y])
        labels.append(y.long())
    out = {"ids": torch.cat(ids), "residual": torch.cat(res), "labels": torch.cat(labels)}
    if captions:
        out["captions"] = list(captions)
    return out


@cli_entry
def main(argv=None):
    p = argparse.ArgumentParser(prog="hart extract-tokens", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True, help="tokenizer folder (from hart train-tokenizer), or a model folder: its tokenizer/")
    add_data_arguments(p, split_default="train")
    p.add_argument("--out", required=True, help="cache folder to write (a new one, or see --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing token cache at --out")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--limit", type=int, default=None, help="encode only the first N images (default all)")
    args = p.parse_args(argv)
    args.split = data_split(args)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be positive, got {args.limit}")
    args.tokenizer = component_dir(args.tokenizer, "tokenizer")  # a model folder's tokenizer/ too
    # written aside and renamed into place at the end
    prepare_out_dir(args.out, args.overwrite, sources=(args.tokenizer,), kind="tokens")
    tok = HybridTokenizer.from_pretrained(args.tokenizer)
    dataset = make_dataset(args.data, args.split, tok.config.resolution, args.data_dir)
    if args.limit is not None:
        captioned, classes = is_captioned(dataset), getattr(dataset, "classes", ())
        dataset = torch.utils.data.Subset(dataset, range(min(args.limit, len(dataset))))
        dataset.captioned, dataset.classes = captioned, classes
    tensors = encode_dataset(tok, dataset, args.batch_size)
    meta = {
        "data": args.data, "split": args.split, "num": len(dataset),
        "classes": list(getattr(dataset, "classes", [])),
        "tokenizer": str(args.tokenizer), "tokenizer_fingerprint": tokenizer_fingerprint(args.tokenizer),
        "patch_nums": list(tok.config.patch_nums),
    }
    captions = tensors.pop("captions", None)
    if captions is not None:
        from hart.text import check_prompts

        captions = check_prompts(captions)
        meta.update(examples=pick_examples(captions), num_captions=len(captions))
    with atomic_dir(args.out) as tmp:
        save_file(tensors, str(tmp / TOKENS_NAME))
        if captions is not None:
            write_json(tmp / CAPTIONS_NAME, captions)
        write_json(tmp / "meta.json", meta)
    print(f"wrote {len(dataset)} token sequences ({tok.config.num_tokens} tokens each) to {args.out}")
    return 0


if __name__ == "__main__":
    main()
