"""Probe: what does FD-EffNet at 32 px reward? Known degradations of real images beside a tokenizer.

    python benchmarks/fd_sensitivity.py --tokenizer runs/tok-h2 --num 2000

For the first N test images it reports PSNR against the originals and FD-EffNet against the
train split's reference (``--ref-num`` images, cached as ``hart fid`` caches them) of:

- ``real``: the images themselves (the floor at this N: FD is biased upwards at small N);
- ``blur s``: a Gaussian blur of standard deviation s pixels (detail lost, shape kept);
- ``noise s``: added Gaussian noise of standard deviation s / 255 (detail added that is not there);
- with ``--tokenizer``: its ``discrete`` (f_hat) and ``hybrid`` (exact latent) decodes.

Read the tokenizer's rows against the degradations of the same PSNR: if a blur of the hybrid
decode's PSNR scores the same FD, the decoder's FD is what that much lost detail costs and a
lower FD needs a higher PSNR; if the blur scores much lower, the decoder adds artefacts that
the metric sees more than the lost detail. ``--post`` adds the hybrid decode post-processed:
``gray`` (channel mean), ``snap`` (values below -0.97 set to black) and both, and both decodes
``stretch``ed (each image's brightest value mapped to white, black kept). Every row also
reports, on the 8-bit images, ``lap`` (mean squared Laplacian of the channel mean: fine
detail; blur lowers it) and ``chroma`` (mean absolute deviation from the channel mean: colour).
``mean`` is FD's first term, the squared distance between the feature means (the rest is the
covariances' term): a shift that every image shares shows there. One line per row:
``name psnr=X fd=X mean=X lap=X chroma=X``.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from hart.common.data import make_dataset
from hart.common.images import to_uint8
from sampling.features import clean_batch, load_extractor
from sampling.fid.embed import default_cache_dir, reference_stats
from sampling.fid.sources import parse_source
from sampling.fid.stats import FeatureStats, frechet_distance
from tokenizer.losses import laplacian_energy, psnr


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, C, H, W) -> the same, blurred by a separable Gaussian (radius 3 sigma, reflect padding)."""
    r = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype)
    C = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(C, 1, 1, 1), groups=C)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).repeat(C, 1, 1, 1), groups=C)


def gray(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> its channel mean, repeated over C."""
    return x.mean(1, keepdim=True).expand_as(x)


def snap(x: torch.Tensor, below: float = -0.97) -> torch.Tensor:
    """Values below ``below`` set to -1 (black)."""
    return torch.where(x < below, torch.full_like(x, -1.0), x)


def stretch(x: torch.Tensor) -> torch.Tensor:
    """Each image mapped affinely so that -1 stays and its brightest value becomes 1."""
    top = x.clamp(-1, 1).amax(dim=(1, 2, 3), keepdim=True)
    return -1 + (x + 1) * (2 / (top + 1).clamp_min(1e-3))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--tokenizer", default=None, help="a tokenizer folder (or a model folder's tokenizer/)")
    p.add_argument("--num", type=int, default=2000)
    p.add_argument("--ref-num", type=int, default=10000)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--blur", type=float, nargs="*", default=[0.4, 0.6])
    p.add_argument("--noise", type=float, nargs="*", default=[2.0, 4.0])
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--post", action="store_true", help="also the decodes post-processed: gray, snapped to black, stretched")
    a = p.parse_args(argv)

    tok = None
    if a.tokenizer:
        from tokenizer import HybridTokenizer

        tok = HybridTokenizer.from_pretrained(a.tokenizer).requires_grad_(False)
        a.resolution = tok.config.resolution
    extractor = load_extractor("effnet-lite0")
    ref, _ = reference_stats(parse_source(f"{a.data}:train", allow_stats=False), extractor, a.resolution,
                             a.ref_num, batch_size=100, data_dir=a.data_dir, cache_dir=default_cache_dir())
    data = make_dataset(a.data, "test", a.resolution, a.data_dir)
    num = min(a.num, len(data))
    g = torch.Generator().manual_seed(0)
    variants = {"real": lambda x: x}
    variants.update({f"blur {s:g}": (lambda x, s=s: gaussian_blur(x, s)) for s in a.blur})
    variants.update({f"noise {s:g}": (lambda x, s=s: x + torch.randn(x.shape, generator=g) * (2 * s / 255))
                     for s in a.noise})
    post = {"hybrid gray": gray, "hybrid snap": snap, "hybrid gray+snap": lambda y: snap(gray(y)),
            "hybrid stretch": stretch, "discrete stretch": stretch} if a.post else {}
    if tok is not None:
        def decodes(x):
            code = tok.encode(x)
            out = {"discrete": tok.decode_latent(code.f_hat), "hybrid": tok.decode_latent(code.f_hat + code.residual)}
            out.update({k: fn(out[k.split()[0]]) for k, fn in post.items()})
            return out
    names = list(variants) + (["discrete", "hybrid", *post] if tok is not None else [])
    stats = {k: FeatureStats(extractor.dim) for k in names}
    sums = dict.fromkeys(names, 0.0)
    laps, chromas = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
    from tqdm import tqdm

    with torch.no_grad():
        for start in tqdm(range(0, num, a.batch_size), desc="fd-sensitivity"):
            x = torch.stack([data[i][0] for i in range(start, min(num, start + a.batch_size))])
            out = {k: fn(x).clamp(-1, 1) for k, fn in variants.items()}
            if tok is not None:
                out.update(decodes(x))
            for k, img in out.items():
                # PSNR of what FD sees: the 8-bit image
                img8 = torch.from_numpy(to_uint8(img)).permute(0, 3, 1, 2).float() / 127.5 - 1
                sums[k] += psnr(img8, x).clamp(max=99.0).sum().item()
                laps[k] += laplacian_energy(img8).sum().item()
                chromas[k] += (img8 - img8.mean(1, keepdim=True)).abs().mean(dim=(1, 2, 3)).sum().item()
                stats[k].add(extractor(clean_batch(list(to_uint8(img)), extractor.input_size)))
    print(f"{num} test images vs {ref.n} train images, FD-EffNet; PSNR against the originals")
    for k in names:
        fd = frechet_distance(stats[k].mu, stats[k].sigma, ref.mu, ref.sigma)
        mean = float(((stats[k].mu - ref.mu) ** 2).sum())
        print(f"{k:16s} psnr={sums[k] / num:.2f} fd={fd:.3f} mean={mean:.3f} lap={laps[k] / num:.4f} "
              f"chroma={chromas[k] / num:.5f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
