"""The residual head's diffusion: schedules, loss and sampler (the heads: :mod:`hart.heads`).

The head models, per token, the continuous residual the discrete tokens miss
(HART sec. 3.2), in target units (:func:`hart.heads.to_target`). It predicts the noise epsilon of a
1000-step cosine schedule (``squaredcos_cap_v2``, beta capped at 0.999, as MAR). The
schedules come from diffusers: :class:`diffusers.DDPMScheduler` for training (``add_noise``)
and :class:`diffusers.DDIMScheduler` for the few-step sampler; HART's released heads sample
with iDDPM's respaced ancestral chain, :class:`IDDPMHeadScheduler` (a diffusers scheduler).

Pure module: no file I/O, device and dtype follow the inputs, randomness only from an
explicit ``torch.Generator`` (or the default one when ``generator=None``).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerOutput

BETA_SCHEDULE = "squaredcos_cap_v2"  # MAR's "cosine": alpha_bar = cos^2((t/T + s)/(1 + s) pi/2)


# ----------------------------------------------------------------------------- schedules

def make_train_scheduler(num_train_timesteps: int = 1000):
    """diffusers DDPMScheduler with the cosine schedule (used for ``add_noise`` only)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=BETA_SCHEDULE, clip_sample=False)


def make_sample_scheduler(num_train_timesteps: int = 1000, prediction: str = "epsilon"):
    """diffusers DDIMScheduler with the same betas as training, for a head that predicts
    ``prediction`` (``epsilon`` or ``v_prediction``).

    ``leading`` with ``steps_offset=1`` (8 steps: 876, 751, ..., 1) keeps the first step off
    the near-zero-SNR end of the capped cosine schedule: at t=999 alpha_bar is ~2e-9 and an
    epsilon-predicting head's tiny errors are multiplied by ~1/sqrt(alpha_bar) in x0.
    """
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=num_train_timesteps, beta_schedule=BETA_SCHEDULE, clip_sample=False,
        set_alpha_to_one=True, timestep_spacing="leading", steps_offset=1, prediction_type=prediction,
    )


def _randn(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    dev = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=dev, dtype=torch.float32).to(like.device, like.dtype)


# ----------------------------------------------------------------------------- loss

def diffusion_loss(
    head: nn.Module,
    target: torch.Tensor,
    cond: torch.Tensor,
    batch_mul: int = 4,
    scheduler=None,
    generator: torch.Generator | None = None,
    prediction: str = "epsilon",
) -> torch.Tensor:
    """Epsilon- (or v-) prediction MSE, ``batch_mul`` noise draws per token (MAR's diffusion_batch_mul).

    Args:
        head: a head of :mod:`hart.heads`.
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
    group = head.grid ** 2 if head.grid else 1  # a map head denoises a whole grid at one noise level
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


class IDDPMHeadScheduler(SchedulerMixin, ConfigMixin):
    """HART's head sampler as a diffusers scheduler: iDDPM's respacing of the capped cosine
    schedule (:func:`iddpm_timesteps`, alpha_bar in float64 as iDDPM computes it) and its
    ancestral step (:func:`iddpm_step`: x0 clipped to [-1, 1], learned-range variance when the
    model outputs 2z channels, fixed-small otherwise).

    diffusers' ``DDPMScheduler`` with these timesteps, ``clip_sample=True`` and
    ``variance_type="learned_range"`` writes the same step, but its alpha_bar is float32 and it
    draws the step noise from one RNG for the whole batch; here the caller passes the noise
    (``variance_noise``), one draw per image, so an image depends on its own seed only.
    """

    config_name = "scheduler_config.json"
    order = 1

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, max_beta: float = 0.999):
        self.alphas_cumprod = cosine_alphas_cumprod(num_train_timesteps, max_beta)
        self.timesteps = torch.zeros(0, dtype=torch.long)
        self.num_inference_steps = None

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        self.num_inference_steps = num_inference_steps
        ts = iddpm_timesteps(self.config.num_train_timesteps, num_inference_steps)
        self.timesteps = torch.tensor(ts, dtype=torch.long, device=device)

    def previous_timestep(self, timestep) -> int:
        """The next timestep of the respaced chain after ``timestep``, -1 after the last."""
        ts = self.timesteps.tolist()
        i = ts.index(int(timestep))
        return ts[i + 1] if i + 1 < len(ts) else -1

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             variance_noise: torch.Tensor | None = None, temperature: float = 1.0,
             generator: torch.Generator | None = None, return_dict: bool = True):
        """x_t -> x_prev. ``variance_noise`` (N, z), the step's standard normal noise (drawn
        from ``generator`` when not given; unused at the last step), scaled by ``temperature``."""
        prev = self.previous_timestep(timestep)
        if prev >= 0 and variance_noise is None:
            variance_noise = _randn(sample.shape, sample, generator)
        x = iddpm_step(sample, model_output, int(timestep), prev, self.alphas_cumprod, variance_noise, temperature)
        return SchedulerOutput(prev_sample=x) if return_dict else (x,)


def make_head_scheduler(head):
    """The sampling scheduler of a head config (``hart.config`` section ``head``): diffusers'
    DDIM (:func:`make_sample_scheduler`) or :class:`IDDPMHeadScheduler`."""
    if head.sampler == "iddpm":
        return IDDPMHeadScheduler(head.train_steps)
    return make_sample_scheduler(head.train_steps, prediction=head.prediction)


@torch.no_grad()
def sample_residual(
    head: nn.Module,
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
        scheduler: ``ddim``: a DDIMScheduler (default: :func:`make_sample_scheduler`);
            ``iddpm``: an :class:`IDDPMHeadScheduler` (default: a new one).
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
        if scheduler is None:
            scheduler = IDDPMHeadScheduler(num_train_timesteps)
        elif not isinstance(scheduler, IDDPMHeadScheduler):
            raise ValueError(f"the iddpm sampler takes an IDDPMHeadScheduler, not a {type(scheduler).__name__}")
        scheduler.set_timesteps(steps)
        ts = scheduler.timesteps.tolist()
        x = noise.to(cond.device, torch.float32)
        for i, t in enumerate(ts):
            nz = None
            if i + 1 < len(ts):
                nz = step_noise[i] if step_noise is not None else _randn(x.shape, x, generator)
            x = scheduler.step(predict(x, t), t, x, variance_noise=nz, temperature=temperature).prev_sample
        return x
    if sampler != "ddim":
        raise ValueError(f"sampler must be ddim or iddpm, got {sampler!r}")
    if scheduler is None:
        scheduler = make_sample_scheduler(num_train_timesteps, prediction=prediction)
    elif not hasattr(scheduler.config, "prediction_type"):
        raise ValueError(f"the ddim sampler takes a DDIMScheduler, not a {type(scheduler).__name__}")
    elif scheduler.config.prediction_type != prediction:
        raise ValueError(f"the scheduler predicts {scheduler.config.prediction_type}, the head {prediction}")
    scheduler.set_timesteps(steps)
    x = noise.to(cond.device, torch.float32) * temperature  # (N, z)
    for t in scheduler.timesteps:
        eps = predict(x, t)[:, :head.channels]
        step_noise_t = _randn(x.shape, x, generator) * temperature if eta > 0 else None
        x = scheduler.step(eps, t, x, eta=eta, variance_noise=step_noise_t).prev_sample
    return x
