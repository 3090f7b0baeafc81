"""Merge the per-set statistics of benchmarks/head_ablation.py runs (``--save-stats DIR``).

    python benchmarks/merge_head_sets.py --stats runs/head-sets --ref runs/fm-test-effnet.npz

Prints each set's FD with and without the head (without only, for a model that has none),
the spread over sets, and the FD of all sets together (e.g. 3 sets of 3334 = 10,002 samples).
"""
import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sampling.eval.fid.stats import FeatureStats, frechet_distance  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stats", required=True, help="folder with set{S}_{head,nohead}.npz")
    p.add_argument("--ref", required=True, help="reference statistics (.npz)")
    args = p.parse_args(argv)
    ref = FeatureStats.load(args.ref)
    sets = sorted({int(m.group(1)) for f in Path(args.stats).glob("set*_nohead.npz")
                   if (m := re.match(r"set(\d+)_nohead", f.stem))})
    if not sets:
        raise SystemExit(f"no set*_nohead.npz in {args.stats}")
    with_head = {s for s in sets if (Path(args.stats) / f"set{s}_head.npz").exists()}
    if with_head and with_head != set(sets):
        raise SystemExit(f"{args.stats} mixes sets with and without the head's statistics: one model per folder")
    kinds = ("head", "nohead") if with_head else ("nohead",)
    fd = lambda st: frechet_distance(st.mu, st.sigma, ref.mu, ref.sigma)  # noqa: E731
    per = {k: [FeatureStats.load(Path(args.stats) / f"set{s}_{k}.npz") for s in sets] for k in kinds}
    for i, s in enumerate(sets):
        vals = {k: fd(per[k][i]) for k in kinds}
        line = " ".join(f"fd_{k}={v:.3f}" for k, v in vals.items())
        if len(vals) == 2:
            line += f" delta={vals['nohead'] - vals['head']:.3f}"
        print(f"set={s} n={per['nohead'][i].n} {line}")
    for k in kinds:
        vals = [fd(st) for st in per[k]]
        allst = FeatureStats.combine(per[k])
        print(f"{k}: all n={allst.n} fd={fd(allst):.3f}; per set min {min(vals):.3f} max {max(vals):.3f} "
              f"spread {max(vals) - min(vals):.3f}")


if __name__ == "__main__":
    main()
