"""Draw the training curves of one run, or of several side by side, as a PNG.

    hart plot runs/tok                                           # runs/tok/curves.png
    hart plot runs/gen runs/gen-nohead --out curves.png          # an ablation: one line per run
    hart plot runs/gen --metrics loss/ce acc lr --smooth 0.9

Reads ``RUN_DIR/metrics.jsonl`` (written by ``hart train`` and ``hart train-tokenizer``): one
panel per metric, the step on the x axis, one coloured line per run (labelled with the run
folder's name). Needs matplotlib (``pip install 'hart-open[plot]'``).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from hart.common.errors import UserError, cli_entry
from hart.common.fs import output_file
from hart.common.io import atomic_file
from hart.common.metrics import METRICS_NAME, read_metrics

SKIP = ("step", "time")
INSTALL_HINT = "pip install 'hart-open[plot]' (or: pip install matplotlib)"


def load_runs(run_dirs) -> dict[str, list[dict]]:
    """{label: records} for each run folder; one line for a folder without metrics."""
    runs = {}
    for d in run_dirs:
        d = Path(d)
        path = d / METRICS_NAME if d.is_dir() or not d.name.endswith(".jsonl") else d
        if not path.is_file():
            raise UserError(f"{d} has no {METRICS_NAME} (written by hart train / hart train-tokenizer)")
        records = read_metrics(path)
        lines = sum(1 for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip())
        if not records:
            raise UserError(f"{path} holds no logged step yet" + (f" ({lines} line(s) that are not metric records)"
                                                                  if lines else ""))
        if lines > len(records):
            print(f"warning: {path}: {lines - len(records)} line(s) that are not metric records skipped "
                  "(a write cut short by a kill, or an edit)", file=sys.stderr)
        label = (path.parent if path.name == METRICS_NAME else path).name or str(d)
        while label in runs:  # two runs of the same folder name: keep both, apart
            label += "'"
        runs[label] = records
    return runs


def metric_names(runs: dict, wanted=None) -> list[str]:
    """Metrics in first-seen order (or ``wanted``, each checked to exist in some run)."""
    seen = []
    for records in runs.values():
        for r in records:
            seen += [k for k in r if k not in SKIP and k not in seen]
    if wanted:
        missing = [m for m in wanted if m not in seen]
        if missing:
            raise UserError(f"no metric {', '.join(missing)} in these runs; they have: {', '.join(seen)}")
        return list(wanted)
    return seen


def smoothed(values: list[float], weight: float) -> list[float]:
    """TensorBoard's exponential moving average (debiased); weight 0 leaves the values."""
    if weight <= 0:
        return values
    out, avg, n = [], 0.0, 0
    for v in values:
        n += 1
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** n))
    return out


def plot_runs(runs: dict, metrics: list[str], out, smooth: float = 0.0, cols: int = 3) -> Path:
    """One panel per metric, one line per run; written atomically as PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
    except ImportError:
        raise UserError(f"hart plot needs matplotlib, which is not installed; {INSTALL_HINT}") from None
    cols = max(1, min(cols, len(metrics)))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, name in zip(axes.flat, metrics):
        for i, (label, records) in enumerate(runs.items()):
            pts = [(r["step"], r[name]) for r in records if isinstance(r.get(name), (int, float))]
            if pts:
                steps, vals = zip(*pts)
                ax.plot(steps, smoothed(list(vals), smooth), color=f"C{i}", label=label, linewidth=1.4,
                        marker="o" if len(steps) == 1 else None, markersize=4)  # one step: a dot, not nothing
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        vals = [r[name] for rec in runs.values() for r in rec if isinstance(r.get(name), (int, float))]
        if name.startswith("loss") and vals and min(vals) > 0 and max(vals) / min(vals) > 20:
            ax.set_yscale("log")  # a loss falling over decades
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    # one legend for the figure: every run, whichever panels it has lines in
    handles = [Line2D([], [], color=f"C{i}", linewidth=1.4) for i in range(len(runs))]
    legend_h = 0.35 * math.ceil(len(runs) / 4)  # inches
    fig.legend(handles, list(runs), loc="upper center", ncol=min(len(runs), 4), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - legend_h / fig.get_figheight()))
    out = Path(out)
    with atomic_file(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return out


@cli_entry
def main(argv=None):
    intro, examples = __doc__.split("\n\n")[:2]
    p = argparse.ArgumentParser(prog="hart plot", description=intro, epilog="examples:\n" + examples,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (or metrics.jsonl files)")
    p.add_argument("--out", default=None,
                   help="PNG to write (default: RUN_DIR/curves.png for one run, ./curves.png for several)")
    p.add_argument("--metrics", nargs="+", default=None, metavar="NAME",
                   help="only these metrics (default: every metric of the runs)")
    p.add_argument("--smooth", type=float, default=0.0,
                   help="exponential smoothing weight in [0, 1), as TensorBoard's slider (default 0: none)")
    args = p.parse_args(argv)
    if args.out is None:  # one run: beside its metrics, so a second run's plot does not replace it
        one = Path(args.runs[0])
        args.out = str((one.parent if one.suffix == ".jsonl" else one) / "curves.png") if len(args.runs) == 1 \
            else "curves.png"
    if not 0 <= args.smooth < 1:
        raise UserError(f"--smooth must be in [0, 1), got {args.smooth}")
    if not args.out.lower().endswith(".png"):
        raise UserError(f"--out must name a .png file, got {args.out}")
    output_file(args.out)
    runs = load_runs(args.runs)
    metrics = metric_names(runs, args.metrics)
    if not metrics:
        raise UserError("these runs have no metrics to plot")
    out = plot_runs(runs, metrics, args.out, smooth=args.smooth)
    print(f"wrote {out}: {len(metrics)} metrics of {len(runs)} run{'s' if len(runs) > 1 else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
