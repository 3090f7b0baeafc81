"""Feature statistics of an image set and the distances between two sets: running
mean / covariance (float64 sums), Fréchet distance, KID, their .npz files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hart.common.errors import UserError

KID_MAX = 5000  # features kept per set for KID (a uniform reservoir sample)
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000
STATS_VERSION = 1


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
    # a distance: rounding in the matrix square root can leave -1e-5 for identical sets
    return max(0.0, float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean))


def kernel_distance(f1, f2, num_subsets: int = KID_SUBSETS, max_subset_size: int = KID_SUBSET_SIZE,
                    seed: int = 0) -> tuple[float, float]:
    """KID (Binkowski et al. 2018): unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3.

    Averaged over ``num_subsets`` random subsets of size m = min(n1, n2, max_subset_size);
    returns (mean, std over subsets); the std is None when both sets are no larger than a
    subset (every subset is then the whole of both: there is no spread to report). NaN when
    either set has fewer than 2 features.
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
    whole = m == len(f1) == len(f2)
    return float(np.mean(vals)), (None if whole else float(np.std(vals)))


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
