"""The residual heads (HART's per-token MLP after MAR's SimpleMLPAdaLN, and a map head of
ours), their condition and their target units.

The head models the continuous residual that the discrete tokens miss (HART sec. 3.2),
per last-scale token, given the transformer's condition of that token:
:func:`head_condition` makes it; :func:`to_target` / :func:`from_target` convert residuals
between latent units and the units the head is trained in. :func:`build_head` makes the head
a :class:`hart.config.HeadConfig` describes. The schedules, the loss and the sampler live in
:mod:`hart.diffusion`.

Pure module: no file I/O, device and dtype follow the inputs.
"""
from __future__ import annotations


import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.models.embeddings import get_timestep_embedding

from hart.kernels import modulate


class TimestepEmbedder(nn.Module):
    """Sinusoidal(256) -> Linear -> SiLU -> Linear. The sinusoid is DiT's / MAR's [cos | sin] with
    frequencies 10000^(-i / half): diffusers' ``get_timestep_embedding`` with
    ``flip_sin_to_cos=True, downscale_freq_shift=0`` (the same numbers as the formula MAR's and HART's
    heads write out)."""

    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # (N,) -> (N, W)
        emb = get_timestep_embedding(t, self.freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        emb = emb.to(self.mlp[0].weight.dtype)
        return self.mlp(emb)


class ResBlock(nn.Module):
    """x + gate * MLP(modulate(LN(x), shift, scale)); shift/scale/gate from the condition."""

    def __init__(self, width: int):
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # (N, W), (N, W)
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        h = self.mlp(modulate(self.in_ln(x), shift, scale))
        return x + gate * h


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiffusionHead(nn.Module):
    """Per-token noise predictor eps(x_t, t, cond) (MAR's SimpleMLPAdaLN).

    Args:
        channels: token channels (the tokenizer's z).
        cond_channels: condition channels (the transformer width C).
        width, depth: MLP width and number of AdaLN res blocks (HART: 1024, 6).
        learn_sigma: also output iDDPM's learned-range variance value per channel (HART's and
            MAR's released heads: 2 z outputs, epsilon first).
    """

    grid = 0  # every token is denoised on its own (see MapHead for a head of whole maps)

    def __init__(self, channels: int, cond_channels: int, width: int, depth: int, learn_sigma: bool = False):
        super().__init__()
        self.channels = channels
        self.learn_sigma = learn_sigma
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(cond_channels, width)
        self.input_proj = nn.Linear(channels, width)
        self.res_blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.final_layer = FinalLayer(width, 2 * channels if learn_sigma else channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)
        # AdaLN modulations and the output start at zero: every block is the identity at init
        for blk in self.res_blocks:
            nn.init.zeros_(blk.adaLN_modulation[-1].weight)
            nn.init.zeros_(blk.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Predict the noise.

        Args:
            x: (N, z) noisy tokens x_t.
            t: (N,) integer timesteps in [0, T).
            cond: (N, C) per-token condition.
        Returns:
            (N, z) epsilon prediction; (N, 2z) [epsilon | variance value in [-1, 1]] with ``learn_sigma``.
        """
        h = self.input_proj(x)  # (N, W)
        y = self.time_embed(t) + self.cond_embed(cond)  # (N, W)
        for blk in self.res_blocks:
            h = blk(h, y)
        return self.final_layer(h, y)


class MapBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3 -> timestep scale/shift -> GroupNorm -> SiLU -> conv3x3, + x.
    The second conv starts at zero: the identity at init."""

    def __init__(self, width: int, temb: int):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(8, width), nn.Conv2d(width, width, 3, padding=1)
        self.t = nn.Linear(temb, 2 * width)
        self.n2, self.c2 = nn.GroupNorm(8, width), nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # (B, W, n, n), (B, T)
        scale, shift = self.t(t)[:, :, None, None].chunk(2, 1)
        h = modulate(self.n2(self.c1(F.silu(self.n1(x)))), shift, scale)
        return x + self.c2(F.silu(h))


class MapAttention(nn.Module):
    """x + self-attention over the n*n cells of one map (output projection zero at init)."""

    def __init__(self, width: int, heads: int = 4):
        super().__init__()
        self.norm = nn.GroupNorm(8, width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, W, n, n)
        B, W, H, V = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, n*n, W)
        return x + self.attn(h, h, h, need_weights=False)[0].transpose(1, 2).reshape(B, W, H, V)


class MapHead(nn.Module):
    """Denoiser of a whole n x n residual map given f_hat (ours; ``head.mix="map"``).

    What image diffusion models use for such a map, in place of HART's per-token MLP: dense
    3x3 convolutions over the grid (every block mixes space and channels), self-attention
    over the grid every third block, and f_hat, the discrete latent of the drawn ids, as input
    channels beside the noisy residual; the transformer's per-token condition enters through a
    1x1 convolution. Its deterministic draws recovered 0.36 of the hybrid FD gain on 2,000
    Fashion-MNIST test images where no per-token head recovered more than 0.12
    (docs/experiments.md).

    Same interface as :class:`DiffusionHead`, except that the rows are whole n x n grids in
    raster order (``grid``; :func:`hart.diffusion.diffusion_loss` draws one timestep per grid); ``cond`` (N, C + z) is the transformer condition with f_hat's z channels
    (already divided by ``fhat_scale``) appended (:func:`head_condition`).
    """

    learn_sigma = False

    def __init__(self, channels: int, cond_channels: int, width: int, depth: int, grid: int, attn_every: int = 3):
        super().__init__()
        if width % 8:
            raise ValueError(f"a map head's width must be a multiple of 8 (GroupNorm), got {width}")
        self.channels, self.cond_channels, self.grid, self.width = channels, cond_channels, grid, width
        self.time_embed = TimestepEmbedder(4 * width)
        self.input_conv = nn.Conv2d(2 * channels, width, 3, padding=1)  # [x_t, f_hat]
        self.cond_conv = nn.Conv2d(cond_channels, width, 1)
        self.blocks = nn.ModuleList(MapBlock(width, 4 * width) for _ in range(depth))
        self.attns = nn.ModuleDict({str(i): MapAttention(width, max(1, width // 64))
                                    for i in range(depth) if (i + 1) % attn_every == 0})
        self.out_norm = nn.GroupNorm(8, width)
        self.out_conv = nn.Conv2d(width, channels, 3, padding=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)
        nn.init.zeros_(self.cond_conv.weight)  # the transformer's condition starts silent
        nn.init.zeros_(self.cond_conv.bias)
        for blk in self.blocks:  # every block, attention and the output start as the identity / zero
            nn.init.zeros_(blk.c2.weight)
            nn.init.zeros_(blk.c2.bias)
        for a in self.attns.values():
            nn.init.zeros_(a.attn.out_proj.weight)
            nn.init.zeros_(a.attn.out_proj.bias)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    def _maps(self, rows: torch.Tensor) -> torch.Tensor:  # (B n n, c) -> (B, c, n, n)
        n = self.grid
        if rows.shape[0] % (n * n):
            raise ValueError(f"a map head takes whole {n}x{n} token grids; got {rows.shape[0]} rows")
        return rows.view(-1, n, n, rows.shape[1]).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x (N, z) noisy target rows, t (N,) timesteps (one per grid), cond (N, C + z) -> (N, z)."""
        n2, z = self.grid ** 2, self.channels
        if cond.shape[1] != self.cond_channels + z:
            raise ValueError(f"a map head's condition has {self.cond_channels} + {z} (f_hat) channels, "
                             f"got {cond.shape[1]}")
        te = self.time_embed(t[::n2])  # (B, 4W)
        h = self.input_conv(self._maps(torch.cat([x, cond[:, -z:]], 1).to(self.input_conv.weight.dtype)))
        h = h + self.cond_conv(self._maps(cond[:, :-z].to(h.dtype)))
        for i, blk in enumerate(self.blocks):
            h = blk(h, te)
            if str(i) in self.attns:
                h = self.attns[str(i)](h)
        out = self.out_conv(F.silu(self.out_norm(h)))  # (B, z, n, n)
        return out.permute(0, 2, 3, 1).reshape(-1, z)


def build_head(head, z_channels: int, cond_channels: int, grid: int) -> nn.Module:
    """The head of a :class:`hart.config.HeadConfig`: ``mix="none"`` a :class:`DiffusionHead`
    (per token), ``"map"`` a :class:`MapHead` of the ``grid`` x ``grid`` last-scale map."""
    if head.mix == "map":
        return MapHead(z_channels, cond_channels, head.width, head.depth, grid)
    return DiffusionHead(z_channels, cond_channels, head.width, head.depth, head.learn_sigma)


def head_condition(hidden: torch.Tensor, code_embed: torch.Tensor, norm: nn.Module,
                   f_hat: torch.Tensor | None = None, fhat_scale: float | None = None) -> torch.Tensor:
    """Per-token condition of the head (HART): norm(hidden + word_embed(code vector)); a map
    head also gets f_hat / fhat_scale, appended per token.

    Args:
        hidden: (B, N, C) last block output of the last-scale tokens.
        code_embed: (B, N, C) word_embed of the codebook vectors of the drawn ids.
        norm: HART's ``decoder_norm``: the norm after the sum is what lets the head see the
            drawn code (without it the code term is ~1% of the sum's RMS).
        f_hat: (B, z, n, n) the discrete latent of the drawn ids (map heads only).
    Returns:
        (B, N, C), or (B, N, C + z) with ``f_hat``.
    """
    h = norm(hidden + code_embed)
    if f_hat is None:
        return h
    scale = fhat_scale if fhat_scale is not None else 1.0
    return torch.cat([h, (f_hat.flatten(2).transpose(1, 2) / scale).to(h.dtype)], -1)


def to_target(residual: torch.Tensor, metric: torch.Tensor | None, scale: float) -> torch.Tensor:
    """(..., z) residual tokens in latent units -> the head's target units: times the decoder
    metric A (z, z) where the head has one (``head.metric="decoder"``), else divided by ``scale``."""
    if metric is not None:
        return residual @ metric.T.to(residual.dtype)
    return residual / scale


def from_target(target: torch.Tensor, metric: torch.Tensor | None, scale: float,
                inverse: torch.Tensor | None = None) -> torch.Tensor:
    """The inverse of :func:`to_target`: (..., z) head draws -> latent units. ``inverse``: A^-1
    made beforehand (:func:`metric_inverse`; ``linalg.inv`` checks its result on the host, which
    a CUDA graph cannot capture)."""
    if metric is not None:
        return target @ (metric_inverse(metric) if inverse is None else inverse).T.to(target.dtype)
    return target * scale


def metric_inverse(metric: torch.Tensor) -> torch.Tensor:
    """A^-1 (z, z) in float64 of the decoder metric."""
    return torch.linalg.inv(metric.double())
