"""PSNR and FD-EffNet of several named decodes against one train-split reference: the
bookkeeping that the decode probes (head_sweep.py, residual_oracle.py) share."""
from __future__ import annotations

import torch

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
