"""Probe: does a text-to-image generator underfit, overfit, or ignore its prompt?

Teacher-forced cross-entropy per scale on
  - ``seen``: scenes from the training token cache (the first N),
  - ``fresh``: new scenes of the train split (indices past the cache: same distribution, never seen),
  - ``heldout``: scenes of the heldout split (unseen colour x shape pairs and relations),
  - ``fresh/wrong``: the fresh scenes with each image paired with another scene's prompt.
seen << fresh means memorisation (more data helps); fresh ~ seen means underfitting (more
steps / width help); wrong - fresh per scale is how much the prompt informs each scale.

    python benchmarks/probe_t2i_fit.py --model runs/shapes --tokens runs/shapes-tokens --num 1024
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from hart.common.data import make_dataset
from hart.model import HARTGenerator
from hart.text import PromptCache, text_encoder_for
from hart.tokens import TokenCache, encode_dataset, split_scales
from sampling.pipeline import model_folder
from tokenizer import HybridTokenizer


@torch.no_grad()
def per_scale_ce(gen, tok, ids, cond, batch: int = 128) -> torch.Tensor:
    """Mean CE per scale (K,) over the rows of ids (N, L)."""
    pns = tok.config.patch_nums
    sums = torch.zeros(len(pns))
    for s in range(0, ids.shape[0], batch):
        part = split_scales(ids[s:s + batch], pns)
        c = [t[s:s + batch] for t in cond]
        out = gen(c, tok.teacher_inputs(part))
        ce = F.cross_entropy(out.logits.float().transpose(1, 2), torch.cat(part, 1), reduction="none")  # (B, L)
        for k, chunk in enumerate(ce.split([p * p for p in pns], dim=1)):
            sums[k] += chunk.mean(1).sum()
    return sums / ids.shape[0]


def encode_split(tok, split: str, start: int, num: int, res: int):
    """ids (num, L) and captions of shapes scenes start..start+num-1 of ``split``."""
    data = torch.utils.data.Subset(make_dataset("shapes", split, res), range(start, start + num))
    out = encode_dataset(tok, data, progress=False)
    return out["ids"].long(), [out["captions"][i] for i in out["labels"]]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--tokens", required=True, help="the token cache the model trained on")
    p.add_argument("--num", type=int, default=1024)
    p.add_argument("--fresh-start", type=int, default=None,
                   help="first train-split index of the fresh scenes (default: the cache's size)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    folder = model_folder(a.model)
    gen = HARTGenerator.from_pretrained(folder / "generator").eval()
    tok = HybridTokenizer.from_pretrained(folder / "tokenizer").eval()
    prompts = PromptCache(text_encoder_for(gen.config))
    cache = TokenCache(a.tokens)
    n = min(a.num, len(cache))
    rows = [cache[i] for i in range(n)]
    seen_ids = torch.stack([r[0] for r in rows]).long()
    seen_cond = [torch.stack([r[2][0] for r in rows]), torch.stack([r[2][1] for r in rows])]
    res = tok.config.resolution
    fresh_ids, fresh_caps = encode_split(tok, "train", a.fresh_start or len(cache), n, res)
    held_ids, held_caps = encode_split(tok, "heldout", 0, n, res)
    fresh_cond = list(prompts(fresh_caps))
    wrong_cond = [t.roll(1, 0) for t in fresh_cond]
    rep = {
        "seen": per_scale_ce(gen, tok, seen_ids, seen_cond),
        "fresh": per_scale_ce(gen, tok, fresh_ids, fresh_cond),
        "heldout": per_scale_ce(gen, tok, held_ids, list(prompts(held_caps))),
        "fresh/wrong": per_scale_ce(gen, tok, fresh_ids, wrong_cond),
    }
    pns = tok.config.patch_nums
    w = [p * p for p in pns]
    print(f"{'set':12s} " + " ".join(f"{f'{p}x{p}':>6s}" for p in pns) + "   mean(tok)")
    for k, v in rep.items():
        mean = float((v * torch.tensor(w)).sum() / sum(w))
        print(f"{k:12s} " + " ".join(f"{x:6.3f}" for x in v.tolist()) + f"   {mean:.3f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({k: v.tolist() for k, v in rep.items()}, f, indent=1)


if __name__ == "__main__":
    main()
