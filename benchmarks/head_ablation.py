"""What the residual head adds to generated images: FD-EffNet with and without it, same ids.

    python benchmarks/head_ablation.py --model sampling/default_model --num 2000 --sets 3

For each of ``--sets`` disjoint seed sets (set s uses seeds s*N .. s*N + N - 1, class j % 10)
the model samples N images once; each image is decoded twice from the same token ids: with
the head's residual (f_hat + residual, what ``hart generate`` shows) and without (f_hat
alone). Both are scored against the reference statistics (default: the Fashion-MNIST test
split, 10,000 images, cached as ``hart fid`` caches them). The head's effect is the
difference within a set, so the transformer's own variation between sets cancels; the
spread of the sets says how large a difference noise makes. Prints one line per set and a
summary line ``fd_head=... fd_head_spread=... fd_nohead=... fd_nohead_spread=... delta=...
delta_min=... delta_max=...``.

A model without a head (an ablation trained without one, e.g. preset ``fm-s-nohead``) is
scored the same way with the ``nohead`` column only, so that its sets compare with the
head model's sets of the same seeds.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sampling.eval.features import clean_batch, load_extractor  # noqa: E402
from sampling.eval.fid.embed import default_cache_dir, reference_stats  # noqa: E402
from sampling.eval.fid.sources import parse_source  # noqa: E402
from sampling.eval.fid.stats import FeatureStats, frechet_distance  # noqa: E402
from sampling.options import SamplingOptions, as_sampled  # noqa: E402
from sampling.pipeline import HARTPipeline  # noqa: E402
from hart.common.images import to_uint8  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    p.add_argument("--num", type=int, default=2000, help="images per seed set (default 2000)")
    p.add_argument("--sets", type=int, default=3, help="seed sets (default 3)")
    p.add_argument("--first-set", type=int, default=0, help="index of the first seed set (to split sets over processes)")
    p.add_argument("--ref", default="fashion-mnist:test", help="reference (default fashion-mnist:test)")
    p.add_argument("--ref-num", type=int, default=10000)
    p.add_argument("--sampling", default="var-fid", help="sampling preset (default var-fid)")
    p.add_argument("--head-cfg", type=float, default=None, help="guidance of the head (default: the last scale's)")
    p.add_argument("--diff-temperature", type=float, default=None,
                   help="scale of the head's start noise (default: the model's own)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--out", default=None, help="also write the numbers as JSON here")
    p.add_argument("--save-stats", default=None, metavar="DIR",
                   help="keep each set's statistics (DIR/set{S}_{head,nohead}.npz), to merge sets run apart")
    args = p.parse_args(argv)

    pipe = HARTPipeline.from_pretrained(args.model)
    kinds = ("head", "nohead") if pipe.generator.diffusion is not None else ("nohead",)
    opts = vars(SamplingOptions.preset(args.sampling, head_cfg=args.head_cfg, diff_temperature=args.diff_temperature))
    ext = load_extractor("effnet-lite0")
    res = pipe.tokenizer.config.resolution
    ref, _ = reference_stats(parse_source(args.ref, allow_stats=True), ext, res, args.ref_num, 100,
                             cache_dir=default_cache_dir())
    K = pipe.generator.config.num_classes
    rows = []
    for s in range(args.first_set, args.first_set + args.sets):
        t0 = time.time()
        st = {k: FeatureStats(ext.dim) for k in kinds}
        for b in tqdm(range(0, args.num, args.batch_size), desc=f"set {s}", leave=False, dynamic_ncols=True):
            js = range(s * args.num + b, s * args.num + min(args.num, b + args.batch_size))
            with torch.no_grad():
                out = pipe.sample([j % K for j in js], seed=list(js), **opts)
                plain = pipe.tokenizer.decode_latent(out.f_hat) if "head" in st else out.images
            for name, img in (("head", out.images), ("nohead", plain)):
                if name in st:
                    st[name].add(ext(clean_batch(list(to_uint8(img)), ext.input_size)))
        fd = {k: frechet_distance(v.mu, v.sigma, ref.mu, ref.sigma) for k, v in st.items()}
        if args.save_stats:
            Path(args.save_stats).mkdir(parents=True, exist_ok=True)
            for k, v in st.items():
                v.save(Path(args.save_stats) / f"set{s}_{k}.npz")
        rows.append(dict(set=s, seeds=f"{s * args.num}..{(s + 1) * args.num - 1}",
                         **{f"fd_{k}": v for k, v in fd.items()}, seconds=round(time.time() - t0)))
        r = rows[-1]
        if "head" in fd:
            r["delta"] = fd["nohead"] - fd["head"]
        print(f"set={s} seeds={r['seeds']} " + " ".join(f"{k}={r[k]:.3f}" for k in ("fd_head", "fd_nohead", "delta")
                                                        if k in r) + f" ({r['seconds']} s)", flush=True)
    if len(rows) < 2:
        return
    summary = {}
    for k in kinds:
        v = [r[f"fd_{k}"] for r in rows]
        summary.update({f"fd_{k}": statistics.mean(v), f"fd_{k}_spread": max(v) - min(v)})
    if "head" in kinds:
        d = [r["delta"] for r in rows]
        summary.update(delta=statistics.mean(d), delta_min=min(d), delta_max=max(d))
    print(" ".join(f"{k}={v:.3f}" for k, v in summary.items()))
    if args.out:
        Path(args.out).write_text(json.dumps({"sets": rows, "summary": summary, "args": vars(args),
                                              "options": as_sampled(opts, pipe.generator.config)}, indent=2))


if __name__ == "__main__":
    main()
