"""Token cache: encode a dataset once so generator epochs skip the encoder.

Examples:
    hart extract-tokens --tokenizer runs/tok --data fashion-mnist --split train --out runs/fm-tokens
    hart train --tokenizer runs/tok --tokens runs/fm-tokens --preset fm-s --out runs/gen

A cache folder holds ``tokens.safetensors`` (``ids`` (N, L) with every scale's ids
concatenated, ``residual`` (N, z, n, n) float16, ``labels`` (N,)) and ``meta.json`` (the
dataset, its class names, and a fingerprint of the tokenizer weights, so a cache is never
used with a tokenizer that did not make it).
"""
from __future__ import annotations

import argparse
import hashlib

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from hart.common.data import add_data_arguments, make_dataset
from hart.common.errors import UserError, cli_entry
from hart.common.io import WEIGHTS_NAME, atomic_dir, read_json, resolve_dir, write_json
from tokenizer import HybridTokenizer

TOKENS_NAME = "tokens.safetensors"


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


class TokenCache(torch.utils.data.Dataset):
    """Items: (ids (L,) long, residual (z, n, n) float32, label int)."""

    def __init__(self, path):
        path = resolve_dir(path)
        self.meta = read_json(path / "meta.json")
        try:
            t = load_file(str(path / TOKENS_NAME))
        except FileNotFoundError:
            raise UserError(f"{path} is not a token cache (missing {TOKENS_NAME}); make one with hart extract-tokens") from None
        self.ids, self.residual, self.labels = t["ids"], t["residual"], t["labels"]
        self.classes = tuple(self.meta.get("classes", ()))

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.ids[i].long(), self.residual[i].float(), int(self.labels[i])

    def check_tokenizer(self, tokenizer_dir) -> None:
        fp = tokenizer_fingerprint(tokenizer_dir)
        if self.meta.get("tokenizer_fingerprint") != fp:
            raise UserError(
                f"the token cache was made with another tokenizer ({self.meta.get('tokenizer')}); "
                f"re-run hart extract-tokens with --tokenizer {tokenizer_dir}"
            )


@torch.no_grad()
def encode_dataset(tokenizer: HybridTokenizer, dataset, batch_size: int = 256, device="cpu",
                   progress: bool = True) -> dict:
    """Encode every image: returns the tensors a cache file holds."""
    ids, res, labels = [], [], []
    V = tokenizer.config.codebook_size
    id_dtype = torch.int16 if V <= 32767 else torch.int32
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for x, y in tqdm(loader, desc="encode", disable=not progress):
        code = tokenizer.encode(x.to(device))
        ids.append(torch.cat(code.ids, 1).to(id_dtype).cpu())
        res.append(code.residual.to(torch.float16).cpu())
        labels.append(y.long())
    return {"ids": torch.cat(ids), "residual": torch.cat(res), "labels": torch.cat(labels)}


@cli_entry
def main(argv=None):
    p = argparse.ArgumentParser(prog="hart extract-tokens", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True, help="tokenizer folder (from hart train-tokenizer)")
    add_data_arguments(p, split_default="train")
    p.add_argument("--out", required=True, help="cache folder to write")
    p.add_argument("--batch-size", type=int, default=256)
    args = p.parse_args(argv)
    tok = HybridTokenizer.from_pretrained(args.tokenizer)
    dataset = make_dataset(args.data, args.split, tok.config.resolution, args.data_dir)
    tensors = encode_dataset(tok, dataset, args.batch_size)
    with atomic_dir(args.out) as tmp:
        save_file(tensors, str(tmp / TOKENS_NAME))
        write_json(tmp / "meta.json", {
            "data": args.data, "split": args.split, "num": len(dataset),
            "classes": list(getattr(dataset, "classes", [])),
            "tokenizer": str(args.tokenizer), "tokenizer_fingerprint": tokenizer_fingerprint(args.tokenizer),
            "patch_nums": list(tok.config.patch_nums),
        })
    print(f"wrote {len(dataset)} token sequences ({tok.config.num_tokens} tokens each) to {args.out}")
    return 0


if __name__ == "__main__":
    main()
