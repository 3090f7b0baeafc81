"""Residual diffusion head (HART, after MAR's SimpleMLPAdaLN) and its loss / sampler.

The head models, per token, the continuous residual the discrete tokens miss
(HART sec. 3.2): target = residual / residual_scale. It predicts the noise epsilon of a
1000-step cosine schedule (``squaredcos_cap_v2``, beta capped at 0.999, as MAR). The
schedules come from diffusers: :class:`diffusers.DDPMScheduler` for training (``add_noise``)
and :class:`diffusers.DDIMScheduler` for the few-step sampler; diffusers is imported
lazily, so importing this module (and :mod:`hart.model`) stays fast.

Pure module: no file I/O, device and dtype follow the inputs, randomness only from an
explicit ``torch.Generator`` (or the default one when ``generator=None``).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

BETA_SCHEDULE = "squaredcos_cap_v2"  # MAR's "cosine": alpha_bar = cos^2((t/T + s)/(1 + s) pi/2)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (N,) timesteps (DDPM / DiT convention: [cos | sin]) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (N, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """Sinusoidal(256) -> Linear -> SiLU -> Linear."""

    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # (N,) -> (N, W)
        emb = timestep_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype)
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
    """Per-token noise predictor eps(x_t, t, cond) (MAR's SimpleMLPAdaLN, epsilon only).

    Args:
        channels: token channels (the tokenizer's z).
        cond_channels: condition channels (the transformer width C).
        width, depth: MLP width and number of AdaLN res blocks (HART: 1024, 6).
    """

    def __init__(self, channels: int, cond_channels: int, width: int, depth: int):
        super().__init__()
        self.channels = channels
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(cond_channels, width)
        self.input_proj = nn.Linear(channels, width)
        self.res_blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.final_layer = FinalLayer(width, channels)
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
            (N, z) epsilon prediction.
        """
        h = self.input_proj(x)  # (N, W)
        y = self.time_embed(t) + self.cond_embed(cond)  # (N, W)
        for blk in self.res_blocks:
            h = blk(h, y)
        return self.final_layer(h, y)


# ----------------------------------------------------------------------------- schedules

def make_train_scheduler(num_train_timesteps: int = 1000):
    """diffusers DDPMScheduler with the cosine schedule (used for ``add_noise`` only)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=BETA_SCHEDULE, clip_sample=False)


def make_sample_scheduler(num_train_timesteps: int = 1000, timestep_spacing: str = "leading"):
    """diffusers DDIMScheduler with the same betas as training.

    ``leading`` with ``steps_offset=1`` (8 steps: 876, 751, ..., 1) keeps the first step off
    the near-zero-SNR end of the capped cosine schedule: at t=999 alpha_bar is ~2e-9 and an
    epsilon-predicting head's tiny errors are multiplied by ~1/sqrt(alpha_bar) in x0.
    """
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=num_train_timesteps, beta_schedule=BETA_SCHEDULE, clip_sample=False,
        set_alpha_to_one=True, timestep_spacing=timestep_spacing,
        steps_offset=1 if timestep_spacing == "leading" else 0, prediction_type="epsilon",
    )


def _randn(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    dev = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=dev, dtype=torch.float32).to(like.device, like.dtype)


# ----------------------------------------------------------------------------- loss

def diffusion_loss(
    head: DiffusionHead,
    target: torch.Tensor,
    cond: torch.Tensor,
    batch_mul: int = 4,
    scheduler=None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Epsilon-prediction MSE, ``batch_mul`` noise draws per token (MAR's diffusion_batch_mul).

    Args:
        head: the :class:`DiffusionHead`.
        target: (N, z) clean tokens (already divided by ``residual_scale``).
        cond: (N, C) per-token condition (gradients flow into it).
        scheduler: a diffusers DDPMScheduler (default: :func:`make_train_scheduler`).
        generator: source of timesteps and noise (its device may differ from the inputs').
    Returns:
        scalar loss (mean over tokens, draws and channels).
    """
    if scheduler is None:
        scheduler = make_train_scheduler()
    target = target.repeat(batch_mul, 1)  # (N*m, z)
    cond = cond.repeat(batch_mul, 1)  # (N*m, C)
    n = target.shape[0]
    dev = generator.device if generator is not None else target.device
    t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=generator, device=dev).to(target.device)
    noise = _randn(target.shape, target, generator)
    x_t = scheduler.add_noise(target, noise, t)  # sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
    eps = head(x_t, t, cond)
    return F.mse_loss(eps.float(), noise.float())


# ----------------------------------------------------------------------------- sampler

def guide(eps_c: torch.Tensor, eps_u: torch.Tensor, cfg: float) -> torch.Tensor:
    """Guidance, with the meaning ``cfg`` has for the logits: (1 + cfg) eps_c - cfg eps_u.

    cfg = 0 is the conditional prediction alone; HART's head uses this form; MAR's
    ``u + s (c - u)`` is s = 1 + cfg.
    """
    return eps_c + cfg * (eps_c - eps_u)


@torch.no_grad()
def sample_residual(
    head: DiffusionHead,
    cond: torch.Tensor,
    cond_uncond: torch.Tensor | None = None,
    cfg: float = 0.0,
    steps: int = 8,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    eta: float = 0.0,
    scheduler=None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw one token per condition row with DDIM; guidance on the noise prediction.

    Args:
        cond: (N, C) conditions.
        cond_uncond: (N, C) unconditional conditions; with ``cfg > 0`` the prediction is
            :func:`guide` (batched as one (2N) forward).
        cfg: guidance, same meaning as for the logits (0: none).
        steps: DDIM steps (HART: 8).
        generator: source of the start noise (unless ``noise`` is given) and of the per-step
            noise when ``eta > 0``.
        temperature: scales the start noise (and the per-step noise when ``eta > 0``).
        eta: DDIM eta (0: deterministic ODE given the start noise; 1: ancestral, as MAR).
        scheduler: a DDIMScheduler (default: :func:`make_sample_scheduler`); its
            ``set_timesteps`` is called here.
        noise: (N, z) start noise, for callers that draw it per image from their own RNGs.
    Returns:
        (N, z) samples in target units (multiply by ``residual_scale`` for the residual).
    """
    if scheduler is None:
        scheduler = make_sample_scheduler()
    scheduler.set_timesteps(steps)
    use_cfg = cond_uncond is not None and cfg != 0.0
    n = cond.shape[0]
    if noise is None:
        noise = _randn((n, head.channels), cond, generator)
    x = noise.to(cond.device, torch.float32) * temperature  # (N, z)
    c = torch.cat([cond, cond_uncond], 0) if use_cfg else cond  # (2N or N, C)
    for t in scheduler.timesteps:
        xin = torch.cat([x, x], 0) if use_cfg else x
        tt = torch.full((xin.shape[0],), int(t), device=cond.device, dtype=torch.long)
        eps = head(xin.to(c.dtype), tt, c).float()
        if use_cfg:
            eps = guide(*eps.chunk(2, 0), cfg)
        step_noise = _randn(x.shape, x, generator) * temperature if eta > 0 else None
        x = scheduler.step(eps, t, x, eta=eta, variance_noise=step_noise).prev_sample
    return x
