"""PSNR and FD-EffNet of several named decodes against one train-split reference: the
bookkeeping that the decode probes (head_sweep.py, residual_oracle.py) share."""
from __future__ import annotations

import torch
from tqdm import tqdm

from hart.common.images import to_uint8
from sampling.features import clean_batch, load_extractor
from sampling.fid.embed import default_cache_dir, reference_stats
from sampling.fid.sources import parse_source
from sampling.fid.stats import FeatureStats, frechet_distance
from tokenizer.losses import psnr


class DecodeScores:
    """``add(name, images, targets)`` per batch; then ``psnr(name)`` (mean over images) and
    ``fd()`` (FD-EffNet of every name against ``data:train``'s first ``ref_num`` images,
    statistics cached as ``hart fid`` caches them)."""

    def __init__(self, names, data: str, resolution: int, ref_num: int, data_dir=None):
        self.ext = load_extractor("effnet-lite0")
        self.ref, _ = reference_stats(parse_source(f"{data}:train", allow_stats=False), self.ext, resolution,
                                      ref_num, batch_size=100, data_dir=data_dir, cache_dir=default_cache_dir())
        self.stats = {k: FeatureStats(self.ext.dim) for k in names}
        self.sums = dict.fromkeys(names, 0.0)
        self.count = dict.fromkeys(names, 0)

    @torch.no_grad()
    def add(self, name: str, images: torch.Tensor, targets: torch.Tensor) -> None:
        self.sums[name] += psnr(images, targets).sum().item()
        self.count[name] += images.shape[0]
        self.stats[name].add(self.ext(clean_batch(list(to_uint8(images)), self.ext.input_size)))

    def psnr(self, name: str) -> float:
        return self.sums[name] / self.count[name]

    def fd(self) -> dict:
        return {k: frechet_distance(s.mu, s.sigma, self.ref.mu, self.ref.sigma) for k, s in self.stats.items()}

    def mean_term(self) -> dict:
        """FD's first term per name: the squared distance between its feature mean and the reference's."""
        return {k: float(((s.mu - self.ref.mu) ** 2).sum()) for k, s in self.stats.items()}


@torch.no_grad()
def score_residual_draws(model, f_hat: torch.Tensor, residual: torch.Tensor, draws: dict,
                         batch: int = 200, start: int = 0) -> dict:
    """Decode f_hat, f_hat + the true residual and f_hat + each named draw with ``model``'s
    tokenizer (a model folder; None: the bundled default), for the ``len(f_hat)`` test images of
    Fashion-MNIST from ``start`` on (whose encodings f_hat and residual are); print and return
    ``{name: (psnr, fd, recovered)}``, recovered = (fd_discrete - fd) / (fd_discrete - fd_hybrid)."""
    from hart.common.data import make_dataset
    from sampling.pipeline import model_folder
    from tokenizer.model import HybridTokenizer

    tok = HybridTokenizer.from_pretrained(model_folder(model) / "tokenizer").eval()
    test = make_dataset("fashion-mnist", "test", tok.config.resolution, None)
    num = f_hat.shape[0]
    names = ["discrete", "hybrid", *draws]
    scores = DecodeScores(names, "fashion-mnist", tok.config.resolution, 10000)
    for s in tqdm(range(0, num, batch), desc="decode", leave=False, dynamic_ncols=True):
        sl = slice(s, min(num, s + batch))
        xs = torch.stack([test[start + i][0] for i in range(sl.start, sl.stop)])
        fh = f_hat[sl]
        scores.add("discrete", tok.decode_latent(fh), xs)
        scores.add("hybrid", tok.decode_latent(fh + residual[sl]), xs)
        for k, r in draws.items():
            scores.add(k, tok.decode_latent(fh + r[sl]), xs)
    fd = scores.fd()
    gain = fd["discrete"] - fd["hybrid"]
    out = {}
    for k in names:
        rec = (fd["discrete"] - fd[k]) / gain
        out[k] = (scores.psnr(k), fd[k], rec)
        tail = f" recovered={rec:.3f}" if k not in ("discrete", "hybrid") else ""
        print(f"{k:>14} psnr={scores.psnr(k):.2f} fd={fd[k]:.3f}{tail}", flush=True)
    return out
