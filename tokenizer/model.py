"""HybridTokenizer: images <-> multi-scale token ids + continuous residual."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from hart.common.models import ConfigMixin, HARTModelMixin, ModelMixin  # noqa: F401 (diffusers finds the mixins here)
from tokenizer.config import TokenizerConfig
from tokenizer.modules import Decoder, Encoder
from tokenizer.quant import MultiScaleQuantizer


@dataclass
class TokenizerCode:
    """What :meth:`HybridTokenizer.encode` returns.

    ids:      K LongTensors (B, pn*pn), one per scale, row-major over the pn x pn grid
    residual: (B, z, n, n) continuous remainder, latent - f_hat (None: discrete only)
    f_hat:    (B, z, n, n) discrete latent, kept to save recomputing it from ids
    """

    ids: list
    residual: Optional[torch.Tensor] = None
    f_hat: Optional[torch.Tensor] = None


@dataclass
class TokenizerTrainOutput:
    recon: torch.Tensor  # (B, 3, R, R), unclamped
    latent: torch.Tensor  # (B, z, n, n) encoder latent f
    f_hat: torch.Tensor  # (B, z, n, n) discrete latent
    ids: list
    vq_loss: torch.Tensor


class HybridTokenizer(HARTModelMixin):
    """A diffusers model (:class:`hart.common.models.HARTModelMixin`): the ``vae`` of the pipeline."""

    config_class = TokenizerConfig

    def __init__(self, config: TokenizerConfig | None = None, **fields):
        super().__init__(config, **fields)
        config = self.config
        z = config.z_channels
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(z, z, 3, 1, 1)
        self.post_quant_conv = nn.Conv2d(z, z, 3, 1, 1)
        self.quantize = MultiScaleQuantizer(config)

    # ------------------------------------------------------------------ basic maps

    def latent(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, R, R) in [-1, 1] -> encoder latent f (B, z, n, n)."""
        return self.quant_conv(self.encoder(images)).float()

    def decode_latent(self, f: torch.Tensor) -> torch.Tensor:
        """(B, z, n, n) -> images (B, 3, R, R) clamped to [-1, 1]."""
        return self.to_image(self.decoder(self.post_quant_conv(f))).clamp(-1, 1)

    def to_image(self, out: torch.Tensor) -> torch.Tensor:
        """The decoder's output (B, C, R, R) -> the image: its channel mean when the data has no colour."""
        return out.mean(1, keepdim=True).expand_as(out) if self.config.grayscale else out

    @property
    def codebook(self) -> torch.Tensor:
        """(V, z)."""
        return self.quantize.embedding

    # ------------------------------------------------------------------ public API

    def encode(self, images: torch.Tensor) -> TokenizerCode:
        f = self.latent(images)
        q = self.quantize(f)
        f_hat = q.f_hat.detach()
        return TokenizerCode(ids=q.ids, residual=f - f_hat, f_hat=f_hat)

    def decode(self, code: TokenizerCode, use_residual: bool = True) -> torch.Tensor:
        f_hat = code.f_hat if code.f_hat is not None else self.ids_to_fhat(code.ids)
        if use_residual and code.residual is not None:
            f_hat = f_hat + code.residual
        return self.decode_latent(f_hat)

    def decode_ids(self, ids: list) -> torch.Tensor:
        """Discrete-only decode."""
        return self.decode_latent(self.ids_to_fhat(ids))

    def code_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """Codebook vectors of ids. (B, N) -> (B, N, z)."""
        return self.codebook[ids]

    def next_scale_input(self, k: int, f_hat: Optional[torch.Tensor], ids_k: Optional[torch.Tensor],
                         vectors: Optional[torch.Tensor] = None):
        """Add scale k's ids to f_hat; return (f_hat, the next scale's input).

        ids_k (B, pn_k^2); f_hat (B, z, n, n) or None at k = 0. The next input is
        area_down(f_hat) at pn_{k+1} as (B, pn_{k+1}^2, z), or None after the last scale.
        ``vectors`` (B, pn_k^2, z), when given, replace the ids' codebook vectors (VAR's
        smoothing adds soft mixtures of codes).
        """
        n = self.config.latent_size
        if vectors is not None:
            h = self.quantize.vector_contribution(vectors, k, n)
        else:
            h = self.quantize.contribution(ids_k, k, n)
        f_hat = h if f_hat is None else f_hat + h
        pns = self.config.patch_nums
        if k + 1 >= len(pns):
            return f_hat, None
        pn = pns[k + 1]
        nxt = F.interpolate(f_hat, size=(pn, pn), mode="area")
        return f_hat, nxt.flatten(2).transpose(1, 2)  # (B, pn*pn, z)

    def ids_to_fhat(self, ids: list) -> torch.Tensor:
        """K id tensors -> discrete latent f_hat (B, z, n, n)."""
        f_hat = None
        for k, ids_k in enumerate(ids):
            f_hat, _ = self.next_scale_input(k, f_hat, ids_k)
        return f_hat

    def last_scale_change(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """How f_hat changes when the last scale's ids ``old`` are replaced by ``new`` (both
        (B, n*n)): h_K(new) - h_K(old) -> (B, z, n, n). The scales before do not depend on it."""
        K, n = len(self.config.patch_nums), self.config.latent_size
        return self.quantize.contribution(new, K - 1, n) - self.quantize.contribution(old, K - 1, n)

    def teacher_inputs(self, ids: list) -> torch.Tensor:
        """Teacher-forcing inputs for scales 1..K-1: (B, L - 1, z), L = sum pn^2."""
        f_hat, out = None, []
        for k, ids_k in enumerate(ids[:-1]):
            f_hat, nxt = self.next_scale_input(k, f_hat, ids_k)
            out.append(nxt)
        return torch.cat(out, 1)

    # ------------------------------------------------------------------ training

    def forward(self, images: torch.Tensor, discrete: Optional[torch.Tensor] = None) -> TokenizerTrainOutput:
        """Training pass. ``discrete`` (B,) bool picks, per image, the decoder input:
        True -> discrete f_hat (straight-through to the encoder), False -> the exact latent
        (f_hat + residual), HART's hybrid training. Default: all discrete.
        """
        f = self.latent(images)
        q = self.quantize(f)
        f_st = f + (q.f_hat - f).detach()  # straight-through estimator
        if discrete is None:
            z = f_st
        else:
            z = torch.where(discrete.view(-1, 1, 1, 1), f_st, f)
        recon = self.to_image(self.decoder(self.post_quant_conv(z)))
        return TokenizerTrainOutput(recon=recon, latent=f, f_hat=q.f_hat, ids=q.ids, vq_loss=q.vq_loss)
