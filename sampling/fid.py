"""``hart fid``: Fréchet distance and KID of a model's samples or of a set of images.

Examples::

    # 10k class-balanced samples of a model against fashion-mnist's train split (offline features)
    hart fid --model runs/fm --num 10000 --ref fashion-mnist:train --features effnet-lite0 --out fid.json
    # standard FID with clean-fid's Inception file, 50k samples on 8 GPUs (each rank does its slice)
    torchrun --nproc_per_node 8 -m sampling.fid --model runs/fm --num 50000 --ref fashion-mnist \\
        --features inception --inception-weights ~/weights/inception-2015-12-05.pt
    # any folder of images against a folder, a dataset split, or saved statistics
    hart fid --images samples/ --ref real_images/ --features effnet-lite0
    hart fid --images samples/ --ref stats/fm_train.npz --features effnet-lite0
    # the real-data floor: fashion-mnist test split against 10k images of the train split
    hart fid --images fashion-mnist:test --ref fashion-mnist:train --ref-num 10000 --resolution 32 \\
        --features effnet-lite0

Protocol (clean-fid's "clean" mode, see :mod:`sampling.features`): uint8 RGB images, a PIL
bicubic resize of each channel to the extractor's input size (299 for Inception, 224 for
EfficientNet-lite0), pooled features; mean and covariance are accumulated
as float64 sums, so memory does not grow with the number of images. KID (cubic polynomial
kernel, 100 subsets of up to 1000) uses a reservoir of at most 5000 features per set.
Inception features give FID; EfficientNet-lite0 features give FD-EffNet (not comparable).

``--ref`` is ``DATASET[:split]`` (fashion-mnist, synthetic; split train by default), a folder
of images (searched recursively), or a ``.npz`` of statistics (this command's, or any file
with ``mu`` and ``sigma``). Dataset statistics are cached in ``--cache-dir`` as .npz, keyed
by dataset, split, resolution, extractor and count. ``--images`` takes a folder or a
``DATASET[:split]``. A model's sample j has class ``j % num_classes`` and seed ``--seed + j``,
whatever the batch size or the number of ranks.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hart.common.errors import UserError, cli_entry
from sampling.options import add_sampling_arguments, sampling_options

IMAGE_SUFFIXES = {".bmp", ".jpg", ".jpeg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"}
KID_MAX = 5000  # features kept per set for KID (a uniform reservoir sample)
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000
STATS_VERSION = 1


# ----------------------------------------------------------------------------- statistics

class FeatureStats:
    """Running mean / covariance of feature vectors, plus a reservoir sample for KID.

    Sums are float64 and taken around a shift (the first batch's mean) so that the
    covariance ``(sum dd^T - n m m^T) / (n - 1)`` does not lose digits to cancellation.
    """

    def __init__(self, dim: int, kid_max: int = KID_MAX, seed: int = 0):
        self.dim, self.kid_max = dim, kid_max
        self.n = 0
        self.shift = None
        self.s1 = np.zeros(dim, np.float64)
        self.s2 = np.zeros((dim, dim), np.float64)
        self.kid = np.zeros((0, dim), np.float32)
        self._seen = 0
        self._rng = np.random.default_rng(seed)
        self._fixed = None  # (mu, sigma) of statistics loaded without a sample count
        self.meta: dict = {}

    def add(self, feats) -> None:
        """Accumulate a batch (B, D) of features (numpy or torch)."""
        if hasattr(feats, "detach"):
            feats = feats.detach().cpu().numpy()
        f = np.asarray(feats, dtype=np.float64).reshape(-1, self.dim)
        if len(f) == 0:
            return
        if self.shift is None:
            self.shift = f.mean(0)
        d = f - self.shift
        self.s1 += d.sum(0)
        self.s2 += d.T @ d
        self.n += len(f)
        self._reservoir(f.astype(np.float32))

    def _reservoir(self, f: np.ndarray) -> None:
        # Algorithm R: after t items, each is kept with probability kid_max / t
        room = self.kid_max - len(self.kid)
        if room > 0:
            self.kid = np.concatenate([self.kid, f[:room]])
            self._seen += min(room, len(f))
            f = f[room:]
        for row in f:
            self._seen += 1
            j = self._rng.integers(0, self._seen)
            if j < self.kid_max:
                self.kid[j] = row

    @property
    def mu(self) -> np.ndarray:
        if self._fixed is not None:
            return self._fixed[0]
        return self.shift + self.s1 / self.n

    @property
    def scatter(self) -> np.ndarray:
        """Sum of centred outer products, sum (x - mu)(x - mu)^T."""
        return self.s2 - np.outer(self.s1, self.s1) / self.n

    @property
    def sigma(self) -> np.ndarray:
        """Unbiased covariance (divides by n - 1, like ``np.cov``)."""
        if self._fixed is not None:
            return self._fixed[1]
        return self.scatter / (self.n - 1)

    @classmethod
    def from_moments(cls, n: int, mu, sigma, kid=None, meta=None) -> "FeatureStats":
        """Statistics known only by their moments (a saved file); ``n`` 0 means unknown."""
        mu = np.asarray(mu, np.float64).reshape(-1)
        sigma = np.asarray(sigma, np.float64)
        st = cls(len(mu))
        st.n, st.shift = int(n), mu
        if st.n >= 2:
            st.s2 = sigma * (st.n - 1)
        else:  # a foreign file without a count: keep the moments as they are
            st._fixed = (mu, sigma)
        if kid is not None:
            st.kid = np.asarray(kid, np.float32).reshape(-1, len(mu))
        st.meta = dict(meta or {})
        return st

    @classmethod
    def combine(cls, parts: list) -> "FeatureStats":
        """Merge the statistics of disjoint sets (Chan et al.'s pairwise update)."""
        parts = [p for p in parts if p.n > 0]
        if not parts:
            raise UserError("no images were embedded")
        n = sum(p.n for p in parts)
        mu = sum(p.n * p.mu for p in parts) / n
        scatter = sum(p.scatter + p.n * np.outer(p.mu - mu, p.mu - mu) for p in parts)
        out = cls.from_moments(n, mu, scatter / max(n - 1, 1), np.concatenate([p.kid for p in parts]))
        out.meta = dict(parts[0].meta)
        return out

    def save(self, path) -> Path:
        """Write ``mu``, ``sigma``, ``n``, ``kid_features`` and ``meta`` (JSON) atomically."""
        from hart.common.io import atomic_file

        path = Path(path)
        with atomic_file(path) as tmp, open(tmp, "wb") as fh:  # a file object: np.savez would append .npz
            np.savez(fh, mu=self.mu, sigma=self.sigma, n=np.int64(self.n), kid_features=self.kid,
                     meta=np.array(json.dumps({**self.meta, "version": STATS_VERSION})))
        return path

    @classmethod
    def load(cls, path) -> "FeatureStats":
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                if "mu" not in z or "sigma" not in z:
                    raise UserError(f"{path} holds no reference statistics (expected arrays mu and sigma)")
                mu, sigma = z["mu"], z["sigma"]
                n = int(z["n"]) if "n" in z else 0
                kid = z["kid_features"] if "kid_features" in z else None
                meta = json.loads(str(z["meta"])) if "meta" in z else {}
        except UserError:
            raise
        except FileNotFoundError:
            raise UserError(f"no such statistics file: {path}") from None
        except Exception as e:
            raise UserError(f"cannot read {path} as .npz statistics ({type(e).__name__}: {e})") from None
        if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
            raise UserError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not fit together")
        return cls.from_moments(n, mu, sigma, kid, meta)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2), numpy only.

    tr((S1 S2)^1/2) = sum of sqrt(eigenvalues of S1^1/2 S2 S1^1/2): that matrix is
    symmetric PSD and has the eigenvalues of S1 S2, so ``eigh`` is enough (no sqrtm and
    no complex round-off, even for singular covariances).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise UserError(f"feature sizes differ: {mu1.shape[0]} vs {mu2.shape[0]}")
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ s2 @ root1
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = np.sqrt(np.clip(ev, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def kernel_distance(f1, f2, num_subsets: int = KID_SUBSETS, max_subset_size: int = KID_SUBSET_SIZE,
                    seed: int = 0) -> tuple[float, float]:
    """KID (Binkowski et al. 2018): unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3.

    Averaged over ``num_subsets`` random subsets of size m = min(n1, n2, max_subset_size);
    returns (mean, std over subsets). NaN when either set has fewer than 2 features.
    """
    f1, f2 = np.asarray(f1, np.float32), np.asarray(f2, np.float32)
    d = f1.shape[1]
    m = min(len(f1), len(f2), max_subset_size)
    if m < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(num_subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        kxx = (np.float64(1) + (x @ x.T) / d) ** 3  # float32 products, float64 kernel sums
        kyy = (np.float64(1) + (y @ y.T) / d) ** 3
        kxy = (np.float64(1) + (x @ y.T) / d) ** 3
        off = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        vals.append(off - 2 * kxy.sum() / (m * m))
    return float(np.mean(vals)), float(np.std(vals))


def check_compatible(stats: FeatureStats, ref: FeatureStats, ref_label: str, extractor_name: str,
                     resolution=None) -> None:
    """One clear line when the reference statistics cannot be compared with ``stats``."""
    if ref.dim != stats.dim:
        raise UserError(f"reference statistics {ref_label} have {ref.dim}-d features but {extractor_name} "
                        f"gives {stats.dim}-d: they were computed with another extractor")
    ref_ext = ref.meta.get("extractor")
    if ref_ext and ref_ext != extractor_name:
        raise UserError(f"reference statistics {ref_label} were computed with {ref_ext} features, this run "
                        f"uses {extractor_name}; pass --features {ref_ext} or recompute the reference")
    ref_res = ref.meta.get("resolution")
    if ref_res and resolution and int(ref_res) != int(resolution):
        raise UserError(f"reference statistics {ref_label} were computed from {ref_res} px images, these "
                        f"are {resolution} px; use matching statistics or --resolution {ref_res}")
    if ref.n and ref.n < 2:
        raise UserError(f"reference statistics {ref_label} come from {ref.n} image(s); at least 2 are needed")


def score(stats: FeatureStats, ref: FeatureStats, metric: str = "FID") -> dict:
    """Fréchet distance (named ``metric``) and KID of ``stats`` against ``ref``."""
    out = {"metric": metric, "score": frechet_distance(stats.mu, stats.sigma, ref.mu, ref.sigma)}
    if len(stats.kid) >= 2 and len(ref.kid) >= 2:
        out["kid"], out["kid_std"] = kernel_distance(stats.kid, ref.kid)
    else:
        out["kid"] = out["kid_std"] = None  # e.g. a foreign .npz with only mu and sigma
    return out


def require_samples(n: int, needed: int, what: str, metric: str, dim: int) -> None:
    if n < needed:
        raise UserError(
            f"{what} has {n} image(s); {metric} needs at least {needed} for a full-rank {dim}-d covariance "
            f"(10000+ recommended): use more images, or lower --min-samples for a smoke test"
        )


# ----------------------------------------------------------------------------- sources

@dataclass
class Source:
    """Where images (or statistics) come from: ``folder``, ``dataset`` or ``stats``."""

    kind: str
    path: str = ""  # folder or .npz
    spec: str = ""  # dataset spec
    split: str = "train"
    files: list = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.spec}:{self.split}" if self.kind == "dataset" else self.path


def parse_source(text: str, allow_stats: bool) -> Source:
    """``DATASET[:split]``, ``folder:PATH``, a folder, or (if allowed) a ``.npz``."""
    from hart.common.data import SPLITS

    if text.startswith("folder:"):
        text = text[len("folder:"):]
        if not text:
            raise UserError("folder: needs a path, e.g. folder:/data/images")
        return folder_source(text)
    if text.endswith(".npz"):
        if not allow_stats:
            raise UserError(f"{text} is a statistics file: pass it as --ref, --images needs images")
        if not Path(text).is_file():
            raise UserError(f"no such statistics file: {text}")
        return Source("stats", path=text)
    if Path(text).is_dir():
        return folder_source(text)
    spec, split = text, "train"
    if ":" in text and text.rsplit(":", 1)[1] in SPLITS:
        spec, split = text.rsplit(":", 1)
    if spec in ("fashion-mnist", "synthetic"):
        return Source("dataset", spec=spec, split=split)
    if "/" in text or Path(text).suffix:
        raise UserError(f"{text} is neither a folder nor a .npz file")
    raise UserError(f"unknown reference {text!r}: give a folder, a .npz of statistics, or fashion-mnist[:split] "
                    "/ synthetic[:split]")


def folder_source(path: str) -> Source:
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"no such folder: {path}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise UserError(f"{path} has no images (looked for {' '.join(sorted(IMAGE_SUFFIXES))}, recursively)")
    return Source("folder", path=str(path), files=files)


def first_image_size(files) -> int | None:
    from PIL import Image

    for p in files[:50]:
        try:
            with Image.open(p) as im:
                return min(im.size)
        except Exception:
            continue
    return None


class _ReadFile:
    def __init__(self, files):
        self.files = files

    def __call__(self, i):
        from PIL import Image

        with Image.open(self.files[i]) as im:
            return np.asarray(im.convert("RGB"))


class _ReadDataset:
    def __init__(self, dataset):
        self.dataset = dataset

    def __call__(self, i):
        return self.dataset[i][0]  # (3, R, R) in [-1, 1]


class CleanImages:
    """Index -> ((3, S, S) float32 in [0, 255] after the clean resize, readable flag).

    ``load(i)`` returns image i as a PIL image, an (H, W, 3) uint8 array or a (3, H, W)
    tensor in [-1, 1]; an image it cannot read is flagged and skipped, not fatal.
    """

    def __init__(self, load, n: int, size: int):
        self.load, self.n, self.size = load, n, size

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        import torch

        from sampling.features import clean_resize, to_uint8_hwc

        try:
            img = to_uint8_hwc(self.load(i))
        except Exception:  # unreadable or undecodable: skipped and counted
            return torch.zeros(3, self.size, self.size), False
        return torch.from_numpy(clean_resize(img, self.size)).permute(2, 0, 1), True


def image_set(source: Source, resolution, num, size: int, data_dir=None) -> CleanImages:
    """The (first ``num``) images of a folder or dataset source, clean-resized to ``size``."""
    if source.kind == "folder":
        files = source.files[:num] if num else source.files
        return CleanImages(_ReadFile(files), len(files), size)
    from hart.common.data import make_dataset

    ds = make_dataset(source.spec, source.split, int(resolution), data_dir)
    n = min(num, len(ds)) if num else len(ds)
    return CleanImages(_ReadDataset(ds), n, size)


# ----------------------------------------------------------------------------- embedding

def _gather(stats: FeatureStats, skipped: int, dist) -> tuple[FeatureStats, int]:
    """Every rank's statistics merged (the same result on each rank)."""
    if dist is None or not dist.enabled:
        return stats, skipped
    import torch.distributed as tdist

    parts = [None] * dist.world_size
    tdist.all_gather_object(parts, (stats, skipped))
    return FeatureStats.combine([p[0] for p in parts]), sum(p[1] for p in parts)


def _rank_slice(n: int, dist) -> range:
    return range(dist.rank, n, dist.world_size) if dist is not None else range(n)


def _progress(total: int, desc: str, dist):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=dist is not None and not dist.is_main,
                dynamic_ncols=True, file=sys.stderr)


def stats_from_images(images: CleanImages, extractor, batch_size: int = 50, dist=None, workers: int = 0,
                      desc: str = "embedding") -> tuple[FeatureStats, int]:
    """Embed a :class:`CleanImages` set (this rank's slice) -> (merged stats, skipped count)."""
    import torch
    from torch.utils.data import DataLoader, Subset

    device = dist.device if dist is not None else "cpu"
    mine = _rank_slice(len(images), dist)
    kid_max = math.ceil(KID_MAX / (dist.world_size if dist is not None else 1))
    stats, skipped = FeatureStats(extractor.dim, kid_max=kid_max), 0
    loader = DataLoader(Subset(images, list(mine)), batch_size=batch_size, num_workers=workers)
    with _progress(len(mine), desc, dist) as bar, torch.inference_mode():
        for x, ok in loader:
            skipped += int((~ok).sum())
            if ok.any():
                stats.add(extractor(x[ok].to(device)))
            bar.update(len(ok))
    return _gather(stats, skipped, dist)


def stats_from_generator(pipe, num: int, extractor, num_classes: int, batch_size: int = 50, seed: int = 0,
                         dist=None, options=None, desc: str = "generating") -> FeatureStats:
    """Generate ``num`` class-balanced samples with ``pipe`` and embed them; nothing is kept.

    ``pipe`` is any callable ``pipe(class_ids=[...], seed=[...], **options) -> list of PIL
    images`` (a :class:`sampling.HARTPipeline`). Sample j has class ``j % num_classes`` and
    seed ``seed + j``; under torchrun, rank r makes samples r, r + world, ...
    """
    import torch

    from sampling.features import clean_batch

    device = dist.device if dist is not None else "cpu"
    mine = list(_rank_slice(num, dist))
    kid_max = math.ceil(KID_MAX / (dist.world_size if dist is not None else 1))
    stats = FeatureStats(extractor.dim, kid_max=kid_max)
    with _progress(len(mine), desc, dist) as bar, torch.inference_mode():
        for s in range(0, len(mine), batch_size):
            js = mine[s:s + batch_size]
            images = pipe(class_ids=[j % num_classes for j in js], seed=[seed + j for j in js], **(options or {}))
            stats.add(extractor(clean_batch(images, extractor.input_size).to(device)))
            bar.update(len(js))
    return _gather(stats, 0, dist)[0]


# ----------------------------------------------------------------------------- reference statistics

def default_cache_dir() -> Path:
    root = os.environ.get("HART_CACHE")
    return (Path(root).expanduser() if root else Path("~/.cache/hart").expanduser()) / "fid"


def cache_path(cache_dir, source: Source, resolution: int, extractor_name: str, num) -> Path:
    slug = re.sub(r"[^A-Za-z0-9.-]+", "_", source.spec)
    return Path(cache_dir) / f"{slug}-{source.split}-{resolution}px-{extractor_name}-{num or 'all'}.npz"


def reference_stats(source: Source, extractor, resolution, num=None, batch_size: int = 50, dist=None,
                    cache_dir=None, data_dir=None, workers: int = 0, min_samples: int = 2):
    """Statistics of ``--ref``: loaded (.npz), read from the cache, or computed (and cached).

    Returns (stats, info dict for the result JSON). Under torchrun every rank gets the stats.
    """
    is_main = dist is None or dist.is_main
    info = {"source": source.label}
    if source.kind == "stats":
        ref = FeatureStats.load(source.path)
        info.update(n=ref.n, file=source.path)
        return ref, info
    cached = None
    if source.kind == "dataset" and cache_dir:
        cached = cache_path(cache_dir, source, resolution, extractor.name, num)
        info["cache"] = str(cached)
        exists = cached.is_file()
        if dist is not None and dist.enabled:  # rank 0 decides, so all ranks take the same branch
            import torch.distributed as tdist

            flag = [exists]
            tdist.broadcast_object_list(flag, src=0)
            exists = flag[0]
        if exists:  # every rank loads it, so every rank can check it and fail the same way
            ref = FeatureStats.load(cached)
            info.update(n=ref.n, cached=True)
            return ref, info
    images = image_set(source, resolution, num, extractor.input_size, data_dir)
    require_samples(len(images), min_samples, f"reference {source.label}", extractor.metric, extractor.dim)
    ref, skipped = stats_from_images(images, extractor, batch_size, dist, workers, desc="reference")
    if skipped and is_main:
        print(f"warning: skipped {skipped} unreadable image(s) in {source.label}", file=sys.stderr)
    if ref.n == 0:
        raise UserError(f"no readable images in {source.label} ({skipped} unreadable)")
    require_samples(ref.n, min_samples, f"reference {source.label}", extractor.metric, extractor.dim)
    ref.meta = {"extractor": extractor.name, "source": source.label, "resolution": resolution, "num": ref.n,
                "skipped": skipped}
    if cached is not None and is_main:
        cached.parent.mkdir(parents=True, exist_ok=True)
        ref.save(cached)
    info.update(n=ref.n, skipped=skipped, cached=False)
    return ref, info


# ----------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    from sampling.features import FEATURES

    p = argparse.ArgumentParser(
        prog="hart fid", description="Fréchet distance (FID with Inception, FD-EffNet with EfficientNet-lite0) "
        "and KID of a model's samples or of a set of images.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("Examples::", 1)[1],
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="model folder (tokenizer/ + generator/): generate --num samples")
    what.add_argument("--images", help="score these images: a folder (recursive) or DATASET[:split]")
    p.add_argument("--num", type=int, default=None,
                   help="samples to generate (--model, default 10000) or images to use (--images, default all)")
    p.add_argument("--ref", required=True, help="DATASET[:split] (fashion-mnist, synthetic), a folder, or a .npz")
    p.add_argument("--ref-num", type=int, default=None, help="use the first N reference images (default all)")
    p.add_argument("--features", choices=FEATURES, default="inception",
                   help="inception (FID, needs inception-2015-12-05.pt) or effnet-lite0 (FD-EffNet, offline)")
    p.add_argument("--inception-weights", default=None, metavar="PATH",
                   help="clean-fid's inception-2015-12-05.pt (file or folder; default: clean-fid's cache /tmp)")
    p.add_argument("--resolution", type=int, default=None,
                   help="image size of dataset references (default: the model's, else the folder images')")
    p.add_argument("--batch-size", type=int, default=50, help="images per forward (default 50)")
    p.add_argument("--out", default="fid.json", help="result JSON (default fid.json)")
    p.add_argument("--save-stats", default=None, metavar="NPZ", help="also save the scored set's statistics")
    p.add_argument("--cache-dir", default=None,
                   help="reference statistics cache (default $HART_CACHE/fid or ~/.cache/hart/fid)")
    p.add_argument("--data-dir", default=None, help="folder of the fashion-mnist IDX files")
    p.add_argument("--min-samples", type=int, default=None,
                   help="fewest images per set (default feature dim + 1, for a full-rank covariance)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers reading/resizing images")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    g = p.add_argument_group("sampling (--model)")
    g.add_argument("--seed", type=int, default=0, help="seed of sample 0 (default 0)")
    add_sampling_arguments(g)
    g.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="transformer compute dtype")
    return p


def _check_args(args) -> None:
    for name in ("num", "ref_num", "batch_size", "resolution"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {v}")
    if args.min_samples is not None and args.min_samples < 2:
        raise UserError(f"--min-samples must be >= 2 (a covariance needs two images), got {args.min_samples}")
    if args.workers < 0:
        raise UserError(f"--workers must be >= 0, got {args.workers}")


def _print_result(result: dict) -> None:
    kid = result.get("kid")
    kid_txt = f"  KID {kid:.5f} ± {result['kid_std']:.5f}" if kid is not None else ""
    print(f"{result['metric']} {result['score']:.4f}{kid_txt}  ({result['num']} images vs {result['ref']['source']}"
          f" ({result['ref'].get('n')}), {result['features']} features)")


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    _check_args(args)
    options = asdict(sampling_options(args))  # validated before anything is loaded
    ref_source = parse_source(args.ref, allow_stats=True)
    img_source = parse_source(args.images, allow_stats=False) if args.images else None

    from hart.common.dist import init_distributed
    from hart.common.io import write_json
    from sampling.features import load_extractor

    dist = init_distributed(args.device)
    try:
        extractor = load_extractor(args.features, args.inception_weights, dist.device)
        min_samples = args.min_samples or extractor.dim + 1
        settings = {"features": args.features, "batch_size": args.batch_size, "world_size": dist.world_size,
                    "protocol": f"clean: uint8 RGB, PIL bicubic per channel to {extractor.input_size}, "
                                f"{extractor.dim}-d pooled features"}

        pipe = None
        if args.model:
            num = args.num or 10000
            require_samples(num, min_samples, f"--num {num}", extractor.metric, extractor.dim)
            from sampling import HARTPipeline

            pipe = HARTPipeline.from_pretrained(args.model, device=dist.device, dtype=args.dtype)
            resolution = pipe.tokenizer.config.resolution
            if args.resolution and args.resolution != resolution:
                raise UserError(f"--resolution {args.resolution} differs from the model's {resolution} px")
            settings.update(model=args.model, num=num, seed=args.seed, dtype=args.dtype, **options)
        else:
            resolution = args.resolution
            for src in (img_source, ref_source):
                if resolution is None and src.kind == "folder":
                    resolution = first_image_size(src.files)
            if resolution is None and ref_source.kind == "stats":
                resolution = FeatureStats.load(ref_source.path).meta.get("resolution")
            if resolution is None:
                raise UserError("cannot tell the image size for the dataset: pass --resolution")
            settings.update(images=img_source.label, num=args.num)
        settings["resolution"] = resolution

        ref, ref_info = reference_stats(ref_source, extractor, resolution, args.ref_num, args.batch_size, dist,
                                        args.cache_dir or default_cache_dir(), args.data_dir, args.workers,
                                        min_samples)
        check_compatible(FeatureStats(extractor.dim), ref, ref_source.label, extractor.name, resolution)

        if pipe is not None:
            stats = stats_from_generator(pipe, num, extractor, pipe.generator.config.num_classes, args.batch_size,
                                         args.seed, dist, options)
            skipped = 0
        else:
            images = image_set(img_source, resolution, args.num, extractor.input_size, args.data_dir)
            require_samples(len(images), min_samples, img_source.label, extractor.metric, extractor.dim)
            stats, skipped = stats_from_images(images, extractor, args.batch_size, dist, args.workers)
            if stats.n == 0:
                raise UserError(f"no readable images in {img_source.label} ({skipped} unreadable)")
            if skipped and dist.is_main:
                print(f"warning: skipped {skipped} unreadable image(s) in {img_source.label}", file=sys.stderr)
            require_samples(stats.n, min_samples, img_source.label, extractor.metric, extractor.dim)
        if not dist.is_main:
            return 0

        result = score(stats, ref, extractor.metric)
        result.update(features=extractor.name, feature_dim=extractor.dim, num=stats.n, skipped=skipped,
                      ref=ref_info, settings=settings)
        _print_result(result)
        write_json(args.out, result)
        if args.save_stats:
            stats.meta = {"extractor": extractor.name, "source": args.model or img_source.label,
                          "resolution": resolution, "num": stats.n}
            stats.save(args.save_stats)
        print(f"wrote {args.out}")
        return 0
    finally:
        dist.close()


if __name__ == "__main__":
    raise SystemExit(main())
