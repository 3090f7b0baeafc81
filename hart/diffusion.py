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


class TokenMix(nn.Module):
    """x + gate * depthwise 3x3 conv(LN(x)) across one image's token grid.

    Rows are whole images in raster order: (B * grid^2, W). ``gate`` is a per-channel
    vector that starts at zero, so a head with mixing starts as the per-token head; the
    block's MLP after it mixes the channels. 11 W parameters: cheap enough to bundle.
    """

    def __init__(self, width: int, grid: int):
        super().__init__()
        self.grid = grid
        self.ln = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.conv = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.gate = nn.Parameter(torch.zeros(width))

    def reset_parameters(self) -> None:
        self.conv.reset_parameters()
        nn.init.zeros_(self.gate)  # identity at init

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, W) -> (N, W)
        n, W = self.grid, x.shape[1]
        if x.shape[0] % (n * n):
            raise ValueError(f"a mixing head takes whole {n}x{n} token grids; got {x.shape[0]} rows")
        g = self.ln(x).view(-1, n, n, W).permute(0, 3, 1, 2)  # (B, W, n, n)
        h = self.conv(g.contiguous()).permute(0, 2, 3, 1).reshape(-1, W)
        return x + self.gate * h


class GridAttention(nn.Module):
    """x + gate * self-attention(LN(x) + pos) across one image's whole token grid.

    Rows are whole images in raster order: (B * grid^2, W). Every token sees every other
    token of its image (none of another's), with a learned position per grid cell; heads of
    about 64 channels (width // 64 of them, fewer where that does not divide the width).
    ``gate`` starts at zero, as :class:`TokenMix`'s: the per-token head at init.
    4 W^2 + (grid^2 + 5) W parameters.
    """

    def __init__(self, width: int, grid: int):
        super().__init__()
        self.grid, self.heads = grid, max(1, width // 64)
        while width % self.heads:
            self.heads -= 1
        self.ln = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.pos = nn.Parameter(torch.zeros(grid * grid, width))
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.gate = nn.Parameter(torch.zeros(width))

    def reset_parameters(self) -> None:
        nn.init.normal_(self.pos, std=0.02)
        nn.init.zeros_(self.gate)  # identity at init

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, W) -> (N, W)
        L, W = self.grid * self.grid, x.shape[1]
        if x.shape[0] % L:
            raise ValueError(f"a mixing head takes whole {self.grid}x{self.grid} token grids; got {x.shape[0]} rows")
        h = self.ln(x).view(-1, L, W) + self.pos  # (B, L, W)
        q, k, v = self.qkv(h).view(h.shape[0], L, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, heads, L, W / heads)
        return x + self.gate * self.proj(a.transpose(1, 2).reshape(-1, W))


MIXES = {"conv": TokenMix, "attn": GridAttention}


class ResBlock(nn.Module):
    """x + gate * MLP(modulate(LN(x), shift, scale)); shift/scale/gate from the condition.
    With ``grid`` a token mix (``mix``: :class:`TokenMix` or :class:`GridAttention`) runs
    first, so that the tokens of one image see each other."""

    def __init__(self, width: int, grid: int = 0, mix: str = "conv"):
        super().__init__()
        self.mix = MIXES[mix](width, grid) if grid else None
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # (N, W), (N, W)
        if self.mix is not None:
            x = self.mix(x)
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
        grid: 0 (HART, MAR): every token denoised on its own. n > 0: the rows are whole n x n
            grids of one image each, denoised jointly (a token mix in every block), so that a
            draw is coherent across the image's tokens; :func:`diffusion_loss` then draws one
            timestep per grid.
        mix: with ``grid``, ``conv`` (:class:`TokenMix`, a 3x3 neighbourhood) or ``attn``
            (:class:`GridAttention`, the whole grid).
    """

    def __init__(self, channels: int, cond_channels: int, width: int, depth: int, learn_sigma: bool = False,
                 grid: int = 0, mix: str = "conv"):
        super().__init__()
        self.channels = channels
        self.learn_sigma = learn_sigma
        self.grid = grid
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(cond_channels, width)
        self.input_proj = nn.Linear(channels, width)
        self.res_blocks = nn.ModuleList(ResBlock(width, grid, mix) for _ in range(depth))
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
            if blk.mix is not None:
                blk.mix.reset_parameters()
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Predict the noise.

        Args:
            x: (N, z) noisy tokens x_t (with ``grid``: N = B * grid^2, whole grids).
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
        h = self.n2(self.c1(F.silu(self.n1(x)))) * (1 + scale) + shift
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
    """Denoiser of a whole n x n residual map given f_hat (ours, issue 12; ``diff_mix="map"``).

    What image diffusion models use for such a map, in place of HART's per-token MLP: dense
    3x3 convolutions over the grid (every block mixes space and channels), self-attention
    over the grid every third block, and f_hat, the discrete latent of the drawn ids, as input
    channels beside the noisy residual; the transformer's per-token condition enters through a
    1x1 convolution. Measured (README, session 23): its deterministic draws recover 0.36 of the
    hybrid FD gain on 2,000 test images, where no per-token head recovered more than 0.12.

    Same interface as :class:`DiffusionHead` with ``grid``: rows are whole n x n grids in
    raster order; ``cond`` (N, C + z) is the transformer condition with f_hat's z channels
    (already divided by ``fhat_scale``) appended (:meth:`HARTGenerator.diffusion_cond`).
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


# ----------------------------------------------------------------------------- schedules

def make_train_scheduler(num_train_timesteps: int = 1000):
    """diffusers DDPMScheduler with the cosine schedule (used for ``add_noise`` only)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=BETA_SCHEDULE, clip_sample=False)


def make_sample_scheduler(num_train_timesteps: int = 1000, timestep_spacing: str = "leading",
                          prediction: str = "epsilon"):
    """diffusers DDIMScheduler with the same betas as training, for a head that predicts
    ``prediction`` (``epsilon`` or ``v_prediction``).

    ``leading`` with ``steps_offset=1`` (8 steps: 876, 751, ..., 1) keeps the first step off
    the near-zero-SNR end of the capped cosine schedule: at t=999 alpha_bar is ~2e-9 and an
    epsilon-predicting head's tiny errors are multiplied by ~1/sqrt(alpha_bar) in x0.
    """
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=num_train_timesteps, beta_schedule=BETA_SCHEDULE, clip_sample=False,
        set_alpha_to_one=True, timestep_spacing=timestep_spacing,
        steps_offset=1 if timestep_spacing == "leading" else 0, prediction_type=prediction,
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
    prediction: str = "epsilon",
) -> torch.Tensor:
    """Epsilon- (or v-) prediction MSE, ``batch_mul`` noise draws per token (MAR's diffusion_batch_mul).

    Args:
        head: the :class:`DiffusionHead`.
        target: (N, z) clean tokens (already divided by ``residual_scale``); for a head with a
            ``grid``, whole grids in raster order, and one timestep is drawn per grid (the
            sampler denoises a grid at one noise level).
        cond: (N, C) per-token condition (gradients flow into it).
        scheduler: a diffusers DDPMScheduler (default: :func:`make_train_scheduler`).
        generator: source of timesteps and noise (its device may differ from the inputs').
        prediction: what the head predicts: ``epsilon`` (HART, MAR) or ``v_prediction``
            (sqrt(abar) eps - sqrt(1 - abar) x0: no blow-up of the x0 estimate near zero SNR).
    Returns:
        scalar loss (mean over tokens, draws and channels).
    """
    if scheduler is None:
        scheduler = make_train_scheduler()
    target = target.repeat(batch_mul, 1)  # (N*m, z): whole blocks repeated, so grids stay whole
    cond = cond.repeat(batch_mul, 1)  # (N*m, C)
    n = target.shape[0]
    group = head.grid ** 2 if head.grid else 1
    dev = generator.device if generator is not None else target.device
    t = torch.randint(0, scheduler.config.num_train_timesteps, (n // group,), generator=generator, device=dev)
    t = t.to(target.device).repeat_interleave(group)
    noise = _randn(target.shape, target, generator)
    x_t = scheduler.add_noise(target, noise, t)  # sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
    out = head(x_t, t, cond)[:, :head.channels]  # a learned variance (converted HART heads) is not trained here
    want = noise if prediction == "epsilon" else scheduler.get_velocity(target, noise, t)
    return F.mse_loss(out.float(), want.float())


# ----------------------------------------------------------------------------- sampler

def guide(eps_c: torch.Tensor, eps_u: torch.Tensor, cfg: float) -> torch.Tensor:
    """Guidance, with the meaning ``cfg`` has for the logits: (1 + cfg) eps_c - cfg eps_u.

    cfg = 0 is the conditional prediction alone; HART's head uses this form; MAR's
    ``u + s (c - u)`` is s = 1 + cfg.
    """
    return eps_c + cfg * (eps_c - eps_u)


def cosine_alphas_cumprod(num_train_timesteps: int = 1000, max_beta: float = 0.999) -> torch.Tensor:
    """(T,) float64 alpha_bar of the capped cosine schedule, as iDDPM computes it (HART's and
    MAR's ``create_diffusion(noise_schedule="cosine")``); diffusers' ``squaredcos_cap_v2`` in fp32."""
    def f(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    T = num_train_timesteps
    betas = torch.tensor([min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)], dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def iddpm_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """iDDPM's respacing ``space_timesteps(T, str(steps))``, in sampling order (descending):
    8 of 1000 -> 999, 856, 714, 571, 428, 285, 143, 0."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be in [1, {num_train_timesteps}], got {steps}")
    stride = (num_train_timesteps - 1) / (steps - 1) if steps > 1 else 1
    return sorted({round(i * stride) for i in range(steps)}, reverse=True)


def iddpm_step(x: torch.Tensor, out: torch.Tensor, t: int, prev: int, alphas_cumprod: torch.Tensor,
               noise: torch.Tensor | None, temperature: float = 1.0) -> torch.Tensor:
    """One ancestral step of the respaced chain t -> prev (iDDPM ``p_sample``, clip_denoised).

    Args:
        x: (N, z) x_t (fp32).
        out: (N, z) epsilon, or (N, 2z) [epsilon | learned-range variance value in [-1, 1]].
        prev: the next timestep of the respaced chain, -1 after the last.
        noise: (N, z) standard normal noise (unused at the last step).
    Returns:
        (N, z) x_prev.
    """
    z = x.shape[1]
    a_t = float(alphas_cumprod[t])
    a_prev = float(alphas_cumprod[prev]) if prev >= 0 else 1.0
    beta = 1 - a_t / a_prev  # the respaced chain's beta
    eps = out[:, :z].float()
    x0 = ((x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)).clamp(-1, 1)
    mean = (math.sqrt(a_prev) * beta / (1 - a_t)) * x0 + (math.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t)) * x
    if prev < 0:
        return mean  # no noise at t = 0
    min_log = math.log(beta * (1 - a_prev) / (1 - a_t))  # posterior variance
    if out.shape[1] == 2 * z:
        frac = (out[:, z:].float() + 1) / 2  # learned range between the posterior variance and beta
        log_var = frac * math.log(beta) + (1 - frac) * min_log
    else:  # fixed small
        log_var = torch.full_like(x, min_log)
    return mean + torch.exp(0.5 * log_var) * noise.to(x) * temperature


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
    sampler: str = "ddim",
    step_noise: list | None = None,
    num_train_timesteps: int = 1000,
    prediction: str = "epsilon",
) -> torch.Tensor:
    """Draw one token per condition row; guidance on the noise (or v) prediction.

    Args:
        cond: (N, C) conditions.
        cond_uncond: (N, C) unconditional conditions; with ``cfg > 0`` the prediction is
            :func:`guide` (batched as one (2N) forward; a learned variance is the conditional one).
        cfg: guidance, same meaning as for the logits (0: none).
        steps: sampling steps (HART: 8).
        generator: source of the start noise (unless ``noise`` is given) and of the per-step
            noise (unless ``step_noise`` is given).
        temperature: ``ddim``: scales the start noise (and the per-step noise when ``eta > 0``);
            ``iddpm``: scales the per-step noise (iDDPM's / HART's meaning).
        eta: DDIM eta (0: deterministic ODE given the start noise; 1: ancestral).
        scheduler: ``ddim`` only: a DDIMScheduler (default: :func:`make_sample_scheduler`).
        noise: (N, z) start noise, for callers that draw it per image from their own RNGs.
        sampler: ``"ddim"`` (diffusers' DDIM) or ``"iddpm"`` (HART's: ancestral steps on
            :func:`iddpm_timesteps`, x0 clipped, learned-range variance when the head has one).
        step_noise: ``iddpm``: one (N, z) noise per step (the last is unused), per-image RNGs.
        prediction: the head's output, ``epsilon`` or ``v_prediction`` (``ddim`` only).
    Returns:
        (N, z) samples in target units (multiply by ``residual_scale`` for the residual).
    """
    use_cfg = cond_uncond is not None and cfg != 0.0
    n = cond.shape[0]
    if noise is None:
        noise = _randn((n, head.channels), cond, generator)
    c = torch.cat([cond, cond_uncond], 0) if use_cfg else cond  # (2N or N, C)

    def predict(x, t):
        xin = torch.cat([x, x], 0) if use_cfg else x
        tt = torch.full((xin.shape[0],), int(t), device=cond.device, dtype=torch.long)
        out = head(xin.to(c.dtype), tt, c).float()
        if not use_cfg:
            return out
        oc, ou = out.chunk(2, 0)
        eps = guide(oc[:, :head.channels], ou[:, :head.channels], cfg)
        return torch.cat([eps, oc[:, head.channels:]], 1)

    if sampler == "iddpm":
        if prediction != "epsilon":
            raise ValueError("the iddpm sampler takes an epsilon head; sample a v head with ddim")
        ac = cosine_alphas_cumprod(num_train_timesteps)
        ts = iddpm_timesteps(num_train_timesteps, steps)
        x = noise.to(cond.device, torch.float32)
        for i, t in enumerate(ts):
            prev = ts[i + 1] if i + 1 < len(ts) else -1
            nz = None
            if prev >= 0:
                nz = step_noise[i] if step_noise is not None else _randn(x.shape, x, generator)
            x = iddpm_step(x, predict(x, t), t, prev, ac, nz, temperature)
        return x
    if sampler != "ddim":
        raise ValueError(f"sampler must be ddim or iddpm, got {sampler!r}")
    if scheduler is None:
        scheduler = make_sample_scheduler(num_train_timesteps, prediction=prediction)
    elif scheduler.config.prediction_type != prediction:
        raise ValueError(f"the scheduler predicts {scheduler.config.prediction_type}, the head {prediction}")
    scheduler.set_timesteps(steps)
    x = noise.to(cond.device, torch.float32) * temperature  # (N, z)
    for t in scheduler.timesteps:
        eps = predict(x, t)[:, :head.channels]
        step_noise_t = _randn(x.shape, x, generator) * temperature if eta > 0 else None
        x = scheduler.step(eps, t, x, eta=eta, variance_noise=step_noise_t).prev_sample
    return x
