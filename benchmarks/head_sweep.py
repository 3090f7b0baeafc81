"""Probe: which head sampler setting recovers most of the hybrid FD gain (``fd_recovered``)?

    python benchmarks/head_sweep.py --num 2000 ddim:8:0.6 ddim:8:0.3 ddim:8:0 ddim:32:0.6 iddpm:8:1 mean:8:0.6

As ``hart eval-residual`` with the true last-scale ids and teacher-forced hidden states (see
its doc), but the expensive parts are shared: the tokenizer, the transformer and the
discrete / hybrid decodes run once per batch, then every setting draws its own head sample
for every last-scale token. A setting is ``SAMPLER:STEPS:TEMPERATURE`` (``ddim``: the
temperature scales the start noise, 0 starts from zero; ``iddpm``: it scales the per-step
noise), or ``mean:STEPS:TEMPERATURE`` for the mean of 8 DDIM samples (not a sample: the
conditional mean's decode, for reference). Each setting draws from its own generator seeded
with ``--seed``, so a row does not depend on which rows run beside it. A fourth field
``half`` keeps the draw on one checkerboard colour of the last-scale grid (i + j even) and
zeroes the other (``benchmarks/residual_oracle.py --neighbours``: with true residuals, half
and zeros give the whole hybrid gain), e.g. ``ddim:8:0.6:half``. A field ``pcaK`` projects the
draw onto the top K principal components of the residual maps, as ``hart export --residual-pca
K`` makes the model do (``ddim:8:0:pca256``; the basis is fitted once on ``--pca-num`` training
images with ``hart.export.fit_residual_pca``, the largest K asked for, and truncated for the
others: principal directions nest); ``mpcaK`` does the same in the head's target units (the
decoder metric of ``--diff-metric decoder``: directions that matter to the decoder count
more), which no exported model does yet. Settings that differ only in ``half`` / ``pcaK`` share
one draw, so a K sweep costs decodes, not head samples.

``--start S`` scores test images S .. S+num-1: pick settings on one range (e.g. ``--start
2000``) and report the chosen one on another (``--start 0``), so the reported row is not the
best of several tries on the same images.

One line per decode: ``name psnr=X fd=X r2=X code_corr=X lat_fd=X var=X recovered=X`` with
``recovered = (fd_discrete - fd) / (fd_discrete - fd_hybrid)`` and ``code_corr`` the
correlation (over all tokens and channels) of the drawn residual with the last-scale code's
own contribution to f_hat; the hybrid row gives it for the true residual. A head trained on
its own drawn ids (``residual_from_sampled``) learns to pull back the code it is given, which
is right where the code was a wrong draw and wrong where it is the true one.

``lat_fd`` judges the draws as a distribution before any decoding: the Frechet distance
between the drawn and the true residuals (divided by the model's ``residual_scale``), taken
over 2x2 patches of the last-scale grid (4 z-vectors side by side: the joint form of
neighbours, not only each token's), 0 for a perfect sampler up to sampling noise (the
``hybrid`` row gives that noise: the true residuals of the first half of the images against
those of the second). ``var`` is the draws' total variance over the true residual's (1 for
a perfect sampler; the conditional mean has less).
"""
from __future__ import annotations

import argparse

import torch

from decode_scores import DecodeScores  # benchmarks/ is on the path when run as a script
from hart.common.data import labelled_batch, make_dataset
from hart.model import project_on_basis
from residual_oracle import second_colour
from sampling.eval_residual import NUM_MEAN, _R2, head_draws, load_models, true_ids_cond
from sampling.fid.stats import FeatureStats, frechet_distance


def patches(res: torch.Tensor) -> torch.Tensor:
    """(B, z, n, n) residuals -> (B * (n // 2)^2, 4 z) non-overlapping 2x2 patches."""
    B, z, n, _ = res.shape
    m = n // 2
    p = res[:, :, : 2 * m, : 2 * m].reshape(B, z, m, 2, m, 2).permute(0, 2, 4, 1, 3, 5)
    return p.reshape(B * m * m, z * 4)


def lat_fd(a: FeatureStats, b: FeatureStats) -> float:
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def parse_setting(text: str) -> tuple[str, int, float, bool, int, bool]:
    """``SAMPLER:STEPS:TEMPERATURE[:half][:pcaK|:mpcaK]`` -> (sampler, steps, temperature, half,
    K or 0, whether the projection is in target units)."""
    usage = f"setting {text!r}: SAMPLER:STEPS:TEMPERATURE[:half][:pcaK|:mpcaK]"
    parts = text.split(":")
    if len(parts) < 3:
        raise SystemExit(usage)
    sampler, steps, temp = parts[:3]
    if sampler not in ("ddim", "iddpm", "mean"):
        raise SystemExit(f"setting {text!r}: sampler must be ddim, iddpm or mean")
    half, k, metric = False, 0, False
    for extra in parts[3:]:
        m = extra.startswith("mpca")
        digits = extra[4:] if m else extra[3:]
        if extra == "half" and not half:
            half = True
        elif extra.startswith(("pca", "mpca")) and digits.isdigit() and int(digits) > 0 and not k:
            k, metric = int(digits), m
        else:
            raise SystemExit(usage)
    try:
        return sampler, int(steps), float(temp), half, k, metric
    except ValueError:
        raise SystemExit(usage) from None


def project(s: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor, k: int) -> torch.Tensor:
    """(B, z, n, n) draws -> their projection on the first k columns of basis (D, K), as the
    model's ``project_residual`` does with a basis of k columns."""
    return project_on_basis(s, mean, basis[:, :k].contiguous())


@torch.no_grad()
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("settings", nargs="+", help="SAMPLER:STEPS:TEMPERATURE, e.g. ddim:8:0.6")
    p.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--num", type=int, default=2000)
    p.add_argument("--ref-num", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", type=int, default=0, help="first test image (default 0)")
    p.add_argument("--pca-num", type=int, default=10000,
                   help="training images the pcaK basis is fitted on (default 10000)")
    args = p.parse_args(argv)
    settings = [parse_setting(s) for s in args.settings]
    from tqdm import tqdm

    tok, gen, folder = load_models(args.model)
    ds = make_dataset(args.data, "test", tok.config.resolution, args.data_dir)
    if not 0 <= args.start < len(ds):
        raise SystemExit(f"--start must be in 0..{len(ds) - 1}, not {args.start}")
    from hart.export import fit_residual_pca

    def target_maps(r):  # (B, z, n, n) latent units <-> the head's target units
        return gen.to_target(r.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(r.shape)

    def latent_maps(t):
        return gen.from_target(t.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(t.shape)

    pca = {}  # metric? -> (mean, basis) for the largest K asked for
    train = None
    for metric in (False, True):
        k_max = max((st[4] for st in settings if st[5] == metric), default=0)
        if k_max > gen.config.residual_dim:
            raise SystemExit(f"pcaK: K must be at most {gen.config.residual_dim} (the residual map's values)")
        if k_max:
            if train is None:
                train = make_dataset(args.data, "train", tok.config.resolution, args.data_dir)
            pca[metric] = fit_residual_pca(tok, train, args.pca_num, k_max,
                                           transform=target_maps if metric else None)
    names = ["discrete", "hybrid"] + args.settings
    scores = DecodeScores(names, args.data, tok.config.resolution, args.ref_num, args.data_dir)
    r2 = {k: _R2() for k in args.settings}
    dots = {k: torch.zeros(3, dtype=torch.float64) for k in ["hybrid"] + args.settings}  # <s, c>, |s|^2, |c|^2
    draw_key = {name: st[:3] for name, st in zip(args.settings, settings)}  # settings sharing a draw
    gens = {key: torch.Generator().manual_seed(args.seed) for key in set(draw_key.values())}
    n_lat = tok.config.latent_size
    scale = float(gen.config.target_scale)
    dim = tok.config.z_channels * 4
    lat = {k: FeatureStats(dim, kid_max=0) for k in ["true", "true_a", "true_b"] + args.settings}

    def add_lat(name, res):
        lat[name].add((patches(res.double()) / scale).numpy())

    num = min(args.num, len(ds) - args.start)
    for start in tqdm(range(0, num, args.batch_size), desc="head-sweep"):
        idx = range(args.start + start, args.start + min(num, start + args.batch_size))
        x, labels = labelled_batch(ds, idx)
        code = tok.encode(x)
        f_hat, r = code.f_hat, code.residual
        cond = true_ids_cond(tok, gen, code, labels)
        dec = {"discrete": tok.decode_latent(f_hat), "hybrid": tok.decode_latent(f_hat + r)}
        c_last = tok.quantize.contribution(code.ids[-1], len(code.ids) - 1, n_lat).double()

        def add_dots(name, res):
            res = res.double()
            dots[name] += torch.stack([(res * c_last).sum(), res.pow(2).sum(), c_last.pow(2).sum()])

        add_dots("hybrid", r)
        add_lat("true", r)
        add_lat("true_a" if start < num // 2 else "true_b", r)
        draws = {}
        for key in dict.fromkeys(draw_key.values()):  # each shared draw once, in a fixed order
            sampler, steps, temp = key
            if sampler == "mean":
                draws[key] = head_draws(gen, cond, NUM_MEAN, gens[key], steps, temp, "ddim").mean(0)
            else:
                draws[key] = head_draws(gen, cond, 1, gens[key], steps, temp, sampler)[0]
        for name, (sampler, steps, temp, half, k, metric) in zip(args.settings, settings):
            s = draws[draw_key[name]]
            if k and metric:
                s = latent_maps(project(target_maps(s), *pca[True], k))
            elif k:
                s = project(s, *pca[False], k)
            if half:  # (B, z, n, n): zero the second checkerboard colour
                s = s * (~second_colour(n_lat)).view(n_lat, n_lat).to(s.dtype)
            r2[name].add(r, s)
            add_dots(name, s)
            add_lat(name, s)
            dec[name] = tok.decode_latent(f_hat + s)
        for k, img in dec.items():
            scores.add(k, img, x)
    fd = scores.fd()
    gain = fd["discrete"] - fd["hybrid"]
    print(f"model={folder} test images {args.start}..{args.start + num - 1} residual_scale={gen.config.residual_scale:.4g} "
          f"model's head: {gen.config.diff_sampler}:{gen.config.diff_sample_steps}:{gen.config.diff_temperature}")
    for k in names:
        extra = ""
        if k in dots:
            sc, ss, cc = dots[k].tolist()
            extra += (f" r2={r2[k].value():.3f}" if k in r2 else "") + f" code_corr={sc / (ss * cc) ** 0.5:.3f}"
            a, b = (lat["true_a"], lat["true_b"]) if k == "hybrid" else (lat[k], lat["true"])
            var = float(lat[k].sigma.trace() / lat["true"].sigma.trace()) if k in lat else 1.0
            extra += f" lat_fd={lat_fd(a, b):.3f} var={var:.3f}"
        if k in r2:
            extra += f" recovered={(fd['discrete'] - fd[k]) / gain:.3f}"
        print(f"{k:>14} psnr={scores.psnr(k):.2f} fd={fd[k]:.3f}{extra}")
    return 0


if __name__ == "__main__":
    main()
