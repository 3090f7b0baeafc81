"""Multi-scale residual vector quantizer (VAR, Sec. 3.2 / Alg. 1) with HART's residual.

For scales k = 0..K-1 with side pn_k over a latent f of side n:
    z_k   = area_down(f_rest, pn_k)                  (no resize at the last scale)
    ids_k = argmin_v |z_k - e_v|^2
    h_k   = Phi_k(bicubic_up(e[ids_k], n))           (no resize at the last scale)
    f_hat += h_k ;  f_rest -= h_k
HART's residual is f - f_hat: the part the discrete tokens miss.

The codebook lives in vector-quantize-pytorch's ``Codebook``: k-means init on the first
training batch, EMA updates, and re-seeding of dead codes, which is what keeps a VAR-style
codebook from collapsing. The Phi convs are trained by VAR's VQ loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from vector_quantize_pytorch.vector_quantize_pytorch import Codebook


class Phi(nn.Conv2d):
    """Phi(h) = (1 - r) h + r conv3x3(h)."""

    def __init__(self, z: int, ratio: float):
        super().__init__(z, z, 3, 1, 1)
        self.ratio = ratio

    def forward(self, h):
        return h * (1 - self.ratio) + super().forward(h) * self.ratio


class SharedPhi(nn.Module):
    """``num`` Phi convs shared across scales; scale k uses the one whose tick is nearest k/(K-1)."""

    def __init__(self, z: int, ratio: float, num: int):
        super().__init__()
        self.qresi_ls = nn.ModuleList([Phi(z, ratio) for _ in range(num)])
        # VAR's ticks (models/quant.py PhiPartiallyShared), with numpy's linspace and argmin so
        # ties break exactly as in its checkpoints (10 scales: scale 2 ties, and takes conv 1)
        edge = 1 / 3 / num if num == 4 else 1 / 2 / num
        self.ticks = np.linspace(edge, 1 - edge, num)

    def index(self, k: int, K: int) -> int:
        r = k / (K - 1) if K > 1 else 1.0
        return int(np.argmin(np.abs(self.ticks - r)))

    def forward(self, h, k: int, K: int):
        return self.qresi_ls[self.index(k, K)](h)


@dataclass
class QuantOutput:
    ids: list  # K x (B, pn*pn) long
    f_hat: torch.Tensor  # (B, z, n, n) discrete latent, differentiable through Phi
    vq_loss: torch.Tensor  # scalar


class MultiScaleQuantizer(nn.Module):
    def __init__(self, config):
        super().__init__()
        c = config
        self.patch_nums = tuple(c.patch_nums)
        self.phi_last = c.phi_last
        self.beta = c.beta
        self.codebook = Codebook(
            dim=c.z_channels, codebook_size=c.codebook_size, kmeans_init=True, kmeans_iters=10,
            decay=c.codebook_decay, threshold_ema_dead_code=c.dead_code_threshold,
        )
        # usable before training too: k-means re-initialises it on the first training batch
        self.codebook.embed.data.uniform_(-1.0 / c.codebook_size, 1.0 / c.codebook_size)
        self.quant_resi = SharedPhi(c.z_channels, c.phi_ratio, c.num_phi)

    @property
    def embedding(self) -> torch.Tensor:
        """Codebook vectors (V, z)."""
        return self.codebook.embed[0]

    def lookup(self, z_flat: torch.Tensor) -> torch.Tensor:
        """Nearest codebook ids by L2. (N, z) -> (N,)."""
        e = self.embedding.float()
        z = z_flat.float()
        d = z.pow(2).sum(1, keepdim=True) - 2 * z @ e.t() + e.pow(2).sum(1)[None]
        return d.argmin(1)

    def contribution(self, ids: torch.Tensor, k: int, n: int) -> torch.Tensor:
        """h_k = Phi_k(up(e[ids_k])). ids (B, pn*pn) -> (B, z, n, n)."""
        return self.vector_contribution(self.embedding[ids], k, n)

    def vector_contribution(self, vectors: torch.Tensor, k: int, n: int) -> torch.Tensor:
        """Phi_k(up(vectors)) for any vectors in code space, e.g. VAR's soft (smoothed) codes.
        (B, pn*pn, z) -> (B, z, n, n)."""
        B, pn = vectors.shape[0], self.patch_nums[k]
        h = vectors.to(torch.float32).view(B, pn, pn, -1).permute(0, 3, 1, 2)
        if pn != n:
            h = F.interpolate(h, size=(n, n), mode="bicubic")
        K = len(self.patch_nums)
        if k == K - 1 and not self.phi_last:
            return h
        return self.quant_resi(h, k, K)

    def forward(self, f: torch.Tensor) -> QuantOutput:
        """f (B, z, n, n) -> ids per scale, discrete f_hat, VQ loss.

        In training mode the codebook is k-means-initialised once, then updated by EMA with
        the per-scale residuals of every scale together (one update per batch).
        """
        with torch.autocast(f.device.type, enabled=False):  # distances and codebook updates in fp32
            return self._quantize(f.float())

    def _quantize(self, f: torch.Tensor) -> QuantOutput:
        B, z, n, _ = f.shape
        f_nograd = f.detach()
        if self.training and not bool(self.codebook.initted):
            self.codebook.init_embed_(f_nograd.permute(0, 2, 3, 1).reshape(1, -1, z))
        f_rest = f_nograd.clone()
        f_hat = torch.zeros_like(f)
        ids, seen, vq_loss = [], [], f.new_zeros(())
        K = len(self.patch_nums)
        for k, pn in enumerate(self.patch_nums):
            z_k = f_rest if pn == n else F.interpolate(f_rest, size=(pn, pn), mode="area")
            z_flat = z_k.permute(0, 2, 3, 1).reshape(-1, z)  # (B*pn*pn, z)
            idx = self.lookup(z_flat)
            seen.append(z_flat)
            ids.append(idx.view(B, pn * pn))
            h = self.contribution(ids[-1], k, n)
            f_hat = f_hat + h
            f_rest = f_rest - h.detach()
            # VAR's VQ loss: commitment on the encoder, and fit of f_hat (through Phi) to f
            vq_loss = vq_loss + self.beta * F.mse_loss(f_hat.detach(), f) + F.mse_loss(f_hat, f_nograd)
        if self.training:
            with torch.no_grad():
                self.codebook.update_indices(torch.cat(seen), torch.cat([i.flatten() for i in ids]))
        return QuantOutput(ids=ids, f_hat=f_hat, vq_loss=vq_loss / K)
