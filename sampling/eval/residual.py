"""``hart eval-residual``: how much of the tokenizer's residual does the diffusion head recover?

Examples::

    hart eval-residual --data fashion-mnist --split test --num 256 --out runs/resid     # bundled model
    hart eval-residual --model runs/gen --data fashion-mnist --num 2000 --out runs/resid --fd

For N images of a split, the tokenizer gives the true ids, the discrete latent f_hat and the
true residual r = latent - f_hat. The generator runs teacher-forced on the true ids with the
true labels, and the head draws the residual of every last-scale token given those hidden
states and the true last-scale ids (conditional, no guidance, the model's DDIM steps and
head temperature, ``diff_temperature`` in its config, unless ``--diff-steps`` /
``--diff-temperature`` say otherwise; recorded in residual.json).
Compared decodes:

- ``discrete``: f_hat alone;  ``hybrid``: f_hat + r, the ceiling;
- ``head``: f_hat + one head sample;  ``head_mean``: f_hat + the mean of 8 head samples.

``r2_mean`` = 1 - |r - mean8|^2 / |r - rbar|^2 (rbar: the residual's per-channel mean over the
set): the share of the residual's variance that the head's conditional mean explains.
The same is measured again with the last-scale ids the model draws itself from its
teacher-forced logits (``own``: what the head sees when sampling), against the residual
that those ids leave (latent - f_hat with the drawn ids).

With ``--fd``, FD-EffNet of the discrete, hybrid and head decodes against ``--ref-num``
images of the other split (statistics cached as ``hart fid`` caches them), and
``fd_recovered = (fd_discrete - fd_head) / (fd_discrete - fd_hybrid)``: the share of the
tokenizer's hybrid gain the head's samples recover as a distribution (HART's claim:
plausible detail, not the true detail); n/a when there is no such gain. The same with the
model's own ids: ``fd_recovered_own = (fd_own_discrete - fd_own_head) / (fd_own_discrete -
fd_hybrid)`` (f_own + the residual those ids leave is the exact latent again, so the hybrid
decode is the ceiling of both). A head trained on its own drawn ids (HART's
``residual_from_sampled``, the default) is trained for this second case.

Writes ``OUT/residual.png`` (rows: input | discrete | hybrid | discrete + head) and
``OUT/residual.json``, and ends with one line of ``key=value`` pairs.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hart.data.datasets import labelled_batch, make_dataset
from hart.data.sources import SPLITS
from hart.diffusion import sample_residual
from hart.kernels import sample_from_logits
from hart.common.errors import UserError, cli_entry
from hart.common.fs import output_dir
from hart.common.images import save_grid, to_uint8
from hart.common.io import write_json
from hart.common.loop import check_positive
from sampling.options import head_settings
from tokenizer.losses import psnr

DECODES = ("discrete", "hybrid", "head", "head_mean", "own_discrete", "own_head")
FD_DECODES = ("discrete", "hybrid", "head", "own_discrete", "own_head")
NUM_MEAN = 8  # head samples averaged for r2_mean and head_mean


class _R2:
    """Running |r - pred|^2 and the residual's variance about its per-channel mean."""

    def __init__(self):
        self.sse = 0.0
        self.n = 0
        self.sum = None
        self.sumsq = None

    def add(self, r: torch.Tensor, pred: torch.Tensor) -> None:  # (B, z, n, n) each
        r, pred = r.double(), pred.double()
        self.sse += (r - pred).pow(2).sum().item()
        per_c = r.transpose(0, 1).flatten(1)  # (z, B*n*n)
        s, ss = per_c.sum(1), per_c.pow(2).sum(1)
        self.sum = s if self.sum is None else self.sum + s
        self.sumsq = ss if self.sumsq is None else self.sumsq + ss
        self.n += per_c.shape[1]

    def value(self) -> float:
        sst = (self.sumsq - self.sum.pow(2) / self.n).sum().item()
        return 1.0 - self.sse / max(sst, 1e-30)


def _head_draws(gen, head_cond: torch.Tensor, draws: int, g: torch.Generator, steps: int | None = None,
               temperature: float | None = None) -> torch.Tensor:
    """``draws`` head samples per token. head_cond (B, N, C) -> (draws, B, z, n, n) in latent units.

    steps / temperature: None takes the model's (``config.head.sample_steps`` /
    ``config.head.temperature``), as the model samples; the sampler is the model's
    (``config.head.sampler``)."""
    c = gen.config
    B, N, _ = head_cond.shape
    n = int(round(N ** 0.5))
    cond = head_cond.reshape(B * N, -1).repeat(draws, 1)
    steps, temperature = head_settings(steps, temperature, c)
    x = sample_residual(gen.diffusion, cond, steps=steps, generator=g, sampler=c.head.sampler,
                        num_train_timesteps=c.head.train_steps, temperature=temperature,
                        prediction=c.head.prediction)  # (draws*B*N, z)
    x = gen.from_target(x.float()).view(draws, B, N, -1)
    x = x.permute(0, 1, 3, 2).reshape(draws * B, -1, n, n)
    return x.view(draws, B, -1, n, n)


@torch.no_grad()
def evaluate(tok, gen, dataset, num: int, batch_size: int = 64, seed: int = 0, fd_extractor=None,
             preview: int = 8, progress: bool = True, diff_steps: int | None = None,
             diff_temperature: float | None = None) -> dict:
    """Run the probe on the first ``num`` images; see the module doc. Returns the summary dict
    (plus ``"_preview"``: the image rows of the first ``preview`` inputs, and ``"_stats"``:
    FeatureStats per FD decode when ``fd_extractor`` is given). ``diff_steps`` /
    ``diff_temperature``: the head's DDIM steps and temperature (None: the model's)."""
    from tqdm import tqdm

    n_lat = tok.config.latent_size
    g = torch.Generator().manual_seed(seed)
    sums = dict.fromkeys(DECODES, 0.0)
    r2_mean, r2_one, r2_own = _R2(), _R2(), _R2()
    stats = None
    if fd_extractor is not None:
        from sampling.eval.fid.stats import FeatureStats

        stats = {k: FeatureStats(fd_extractor.dim) for k in FD_DECODES}
    rows = None
    for start in tqdm(range(0, num, batch_size), desc="eval-residual", disable=not progress):
        idx = range(start, min(num, start + batch_size))
        x, labels = labelled_batch(dataset, idx)
        code = tok.encode(x)
        f_hat, r = code.f_hat, code.residual  # (B, z, n, n)
        out = gen(labels, tok.teacher_inputs(code.ids))
        N = n_lat * n_lat
        hidden = out.hidden[:, -N:]  # (B, N, C)
        draws = _head_draws(gen, gen.diffusion_cond(hidden, tok.code_vectors(code.ids[-1]), f_hat), NUM_MEAN, g,
                           diff_steps, diff_temperature)
        one, mean = draws[0], draws.mean(0)
        r2_mean.add(r, mean)
        r2_one.add(r, one)
        # the model's own last-scale ids, as HART trains the head and as sampling feeds it
        u = torch.rand(code.ids[-1].numel(), generator=g)
        own = sample_from_logits(out.logits[:, -N:].flatten(0, 1), u).view(-1, N)
        f_own = f_hat + tok.last_scale_change(code.ids[-1], own)
        own_draws = _head_draws(gen, gen.diffusion_cond(hidden, tok.code_vectors(own), f_own), NUM_MEAN, g,
                               diff_steps, diff_temperature)
        r2_own.add(f_hat + r - f_own, own_draws.mean(0))
        dec = {
            "discrete": tok.decode_latent(f_hat), "hybrid": tok.decode_latent(f_hat + r),
            "head": tok.decode_latent(f_hat + one), "head_mean": tok.decode_latent(f_hat + mean),
            "own_discrete": tok.decode_latent(f_own), "own_head": tok.decode_latent(f_own + own_draws[0]),
        }
        for k, img in dec.items():
            sums[k] += psnr(img, x).sum().item()
        if stats is not None:
            from sampling.eval.features import clean_batch

            for k in FD_DECODES:
                stats[k].add(fd_extractor(clean_batch(list(to_uint8(dec[k])), fd_extractor.input_size)))
        if rows is None:
            rows = [t[:preview] for t in (x, dec["discrete"], dec["hybrid"], dec["head"])]
    result = {f"psnr_{k}": sums[k] / num for k in DECODES}
    result.update(r2_mean=r2_mean.value(), r2_one=r2_one.value(), r2_own_mean=r2_own.value(), num_images=num,
                  residual_scale=gen.config.stats.residual_scale, _preview=rows, _stats=stats)
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hart eval-residual", description=__doc__.split("Examples::")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="examples:\n" + __doc__.split("Examples::", 1)[1].split("\n\n")[1])
    p.add_argument("--model", default=None, help="model folder (tokenizer/ + generator/); default: the bundled model")
    p.add_argument("--data", required=True, help="dataset spec (as for hart train), with class labels")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--split", default="test", help="split to probe: train or test (default test)")
    p.add_argument("--num", type=int, default=256, help="images to probe (default 256)")
    p.add_argument("--out", required=True, help="folder for residual.png and residual.json")
    p.add_argument("--fd", action="store_true", help="also FD-EffNet of the decodes against the other split")
    p.add_argument("--ref-num", type=int, default=10000,
                   help="images of the other split for the FD reference (default 10000; cached as hart fid caches)")
    p.add_argument("--min-samples", type=int, default=None,
                   help="--fd: fewest images in --num and --ref-num (default feature dim + 1 = 1281, for a "
                        "full-rank covariance; lower it for a smoke test only)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="seed of the head's draws and of the own-id draws")
    p.add_argument("--diff-steps", type=int, default=None, help="the head's sampling steps (default: the model's)")
    p.add_argument("--diff-temperature", type=float, default=None,
                   help="the head's temperature, >= 0 (default: the model's own; below 1 draws colder)")
    return p


def _load_models(model_dir):
    """(tokenizer, generator, folder) of a model folder, with one-line errors for what cannot be probed."""
    from hart.model import HARTGenerator
    from sampling.pipeline import model_folder
    from tokenizer.model import HybridTokenizer

    folder = model_folder(model_dir)
    if not (folder / "generator").is_dir():
        what = "a tokenizer folder" if (folder / "config.json").is_file() else "not a model folder"
        raise UserError(f"{folder} is {what}: hart eval-residual needs a model folder with tokenizer/ and "
                        "generator/ (as written by hart train)")
    gen = HARTGenerator.from_pretrained(folder / "generator")
    if gen.config.is_text:
        raise UserError(f"the generator in {folder} is a text-to-image model: hart eval-residual probes class-"
                        "conditional models (it conditions on the dataset's labels); for a text model use "
                        "hart eval-alignment")
    if gen.diffusion is None:
        raise UserError(f"the generator in {folder} has no residual head (its config has no head): there is nothing to "
                        "probe; train one with hart train --init ... --freeze-transformer and a preset with a head")
    return HybridTokenizer.from_pretrained(folder / "tokenizer"), gen, folder


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    check_positive(args, "num", "batch_size", "ref_num")
    if args.diff_steps is not None and args.diff_steps < 1:
        raise UserError(f"--diff-steps must be >= 1, got {args.diff_steps}")
    if args.diff_temperature is not None and not (0 <= args.diff_temperature < float("inf")):
        raise UserError(f"--diff-temperature must be >= 0, got {args.diff_temperature}")
    if args.split not in SPLITS:
        raise UserError(f"unknown split {args.split!r}; choose one of: {', '.join(SPLITS)}")
    output_dir(args.out)
    tok, gen, folder = _load_models(args.model)
    dataset = make_dataset(args.data, args.split, tok.config.resolution, args.data_dir)
    num = min(args.num, len(dataset))
    extractor = ref = None
    if args.fd:
        from sampling.eval.features import load_extractor
        from sampling.eval.fid.embed import default_cache_dir, reference_stats
        from sampling.eval.fid.sources import parse_source

        from sampling.eval.fid.stats import require_samples

        extractor = load_extractor("effnet-lite0")
        if args.min_samples is not None and args.min_samples < 2:
            raise UserError(f"--min-samples must be >= 2 (a covariance needs two images), got {args.min_samples}")
        least = args.min_samples or extractor.dim + 1
        require_samples(num, least, f"--num {num}", extractor.metric, extractor.dim)
        other = [s for s in SPLITS if s != args.split][0]
        ref, _ = reference_stats(parse_source(f"{args.data}:{other}", allow_stats=False), extractor,
                                 tok.config.resolution, args.ref_num, batch_size=100, data_dir=args.data_dir,
                                 cache_dir=default_cache_dir(), min_samples=least)
    res = evaluate(tok, gen, dataset, num, args.batch_size, args.seed, extractor,
                   diff_steps=args.diff_steps, diff_temperature=args.diff_temperature)
    steps, temperature = head_settings(args.diff_steps, args.diff_temperature, gen.config)
    rows, stats = res.pop("_preview"), res.pop("_stats")
    if stats is not None:
        from sampling.eval.fid.stats import frechet_distance

        for k in FD_DECODES:
            res[f"fd_{k}"] = frechet_distance(stats[k].mu, stats[k].sigma, ref.mu, ref.sigma)
        for pre, key in (("", "fd_recovered"), ("own_", "fd_recovered_own")):
            gain = res[f"fd_{pre}discrete"] - res["fd_hybrid"]
            # undefined (None, printed n/a) when the exact latent is no closer to the data than f_hat alone
            res[key] = (res[f"fd_{pre}discrete"] - res[f"fd_{pre}head"]) / gain if gain > 0 else None
    out = Path(args.out)
    save_grid(rows, out / "residual.png", row_labels=["input", "discrete", "hybrid", "+ head"], scale=2)
    reference = {"fd_reference": {"data": f"{args.data}:{[s for s in SPLITS if s != args.split][0]}",
                                  "num": ref.n}} if ref is not None else {}
    write_json(out / "residual.json", {**res, "model": str(folder), "data": args.data, "split": args.split,
                                       "diff_steps": steps, "diff_temperature": temperature, **reference})
    keys = ["psnr_discrete", "psnr_hybrid", "psnr_head", "psnr_head_mean", "r2_mean", "r2_one"]
    if stats is not None:
        keys += ["fd_discrete", "fd_hybrid", "fd_head", "fd_recovered"]

    def fmt(k):
        v = res[k]
        if v is None:
            return f"{k}=n/a"
        digits = 2 if "psnr" in k else 3 if k.startswith("fd_") and "recovered" not in k else 4
        return f"{k}={v:.{digits}f}"  # fixed digits: an FD of 10.0002 reads 10.000, not 10

    own = ["psnr_own_discrete", "psnr_own_head", "r2_own_mean"]
    if stats is not None:
        own += ["fd_own_discrete", "fd_own_head", "fd_recovered_own"]
    print(f"own ids: {' '.join(fmt(k) for k in own)}; "
          f"residual_scale={gen.config.stats.residual_scale}; head: {steps} steps, temperature {temperature:g}")
    print(" ".join(fmt(k) for k in keys))
    return 0


if __name__ == "__main__":
    main()
