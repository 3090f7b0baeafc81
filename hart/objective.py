"""The generator's training objective (cross-entropy on the ids + the residual head's
diffusion loss, as one module) and the statistics of the data it is measured in
(:func:`measure_latent_scales`, :func:`measure_decoder_metric`), apart from the training
loop of :mod:`hart.train`.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from hart.diffusion import diffusion_loss, make_train_scheduler
from hart.kernels import sample_from_logits
from hart.model import HARTGenerator
from tokenizer import HybridTokenizer


class TrainingObjective(nn.Module):
    """The whole loss as one module, so DDP sees every parameter used in one forward.

    The tokenizer is frozen and held outside the module tree (DDP does not sync it).
    """

    def __init__(self, model: HARTGenerator, tokenizer: HybridTokenizer, label_smoothing: float = 0.0,
                 freeze_transformer: bool = False):
        super().__init__()
        self.model = model
        self.freeze_transformer = freeze_transformer
        self._tokenizer = (tokenizer,)
        self.label_smoothing = label_smoothing
        c = model.config
        self.train_scheduler = make_train_scheduler(c.head.train_steps) if c.has_head else None

    @property
    def tokenizer(self) -> HybridTokenizer:
        return self._tokenizer[0]

    def forward(self, ids: list, residual: torch.Tensor, cond, generator: torch.Generator):
        """ids: K x (B, pn^2); residual (B, z, n, n); cond: labels (B,) or the encoded prompts
        (tokens (B, T, D), mask (B, T)). Returns (loss, metrics)."""
        c, tok = self.model.config, self.tokenizer
        with torch.no_grad():
            teacher = tok.teacher_inputs(ids)  # (B, L-1, z)
        # condition dropout for CFG: uniform draw (HART's code draws from a normal by mistake)
        drop = torch.rand(residual.shape[0], generator=generator).to(residual.device) < c.training.cond_drop
        with torch.no_grad() if self.freeze_transformer else contextlib.nullcontext():
            out = self.model(cond, teacher, drop)
        target = torch.cat(ids, 1)  # (B, L)
        logits = out.logits.float()
        ce = F.cross_entropy(logits.flatten(0, 1), target.flatten(), label_smoothing=self.label_smoothing)
        metrics = {"ce": ce.detach(), "acc": (logits.argmax(-1) == target).float().mean()}
        loss = ce if not self.freeze_transformer else 0.0
        if c.has_head:
            loss = loss + self.residual_loss(ids, residual, out, generator, metrics)
        return loss, metrics

    def residual_loss(self, ids, residual, out, generator, metrics):
        """Diffusion loss on the last-scale residual (HART), on a random subset of its tokens."""
        c, tok = self.model.config, self.tokenizer
        n = tok.config.latent_size
        N = n * n
        last_logits = out.logits[:, -N:].detach().float()  # (B, N, V)
        gt = ids[-1]
        f_hat = None
        if c.head.mix == "map":  # a map head sees the discrete latent of the ids it corrects
            with torch.no_grad():
                f_hat = tok.ids_to_fhat(ids)
        if c.training.residual_from_sampled:
            # HART: the head corrects the transformer's own choice at the last scale, so the
            # target is latent - (discrete prefix + contribution of the *sampled* ids)
            u = torch.rand(gt.numel(), generator=generator).to(gt.device)
            chosen = sample_from_logits(last_logits.flatten(0, 1), u).view_as(gt)
            with torch.no_grad():
                change = tok.last_scale_change(gt, chosen)
                residual = residual - change
                f_hat = f_hat + change if f_hat is not None else None
        else:
            chosen = gt
        target = self.model.to_target(residual.flatten(2).transpose(1, 2))  # (B, N, z)
        cond = self.model.diffusion_cond(out.hidden[:, -N:], tok.code_vectors(chosen), f_hat)  # (B, N, C[+z])
        if c.head.mix == "map":  # a map head denoises whole grids: every token, in order
            keep = torch.ones(target.shape[:2], dtype=torch.bool, device=target.device)
        else:
            keep = torch.rand(target.shape[:2], generator=generator).to(target.device) < c.training.diff_keep_frac
            keep[:, 0] = True  # never an empty subset
        dl = diffusion_loss(self.model.diffusion, target[keep], cond[keep], c.training.diff_batch_mul,
                            self.train_scheduler, generator, c.head.prediction)
        metrics["diff"] = dl.detach()
        return dl


@torch.no_grad()
def measure_latent_scales(batches, tokenizer: HybridTokenizer | None = None,
                          max_images: int = 2048, progress: bool = True) -> tuple[float, float | None]:
    """RMS of the residual (the head's target scale) and, given ``tokenizer``, of f_hat (the
    discrete latent of the true ids: what a map head divides its f_hat input by), in one pass
    over the first ``max_images`` training images; (residual_rms, None) without a tokenizer."""
    sums, count, bar = [0.0, 0.0], 0, None
    for ids, residual, _ in batches:  # on the fly, these are images encoded now: minutes on a CPU
        if bar is None:  # shown from the first batch on (a bad token cache stops before it)
            bar = tqdm(total=max_images, desc="measuring the latent scales", unit="img", leave=False,
                       disable=not progress)
        sums[0] += residual.double().pow(2).sum().item()
        if tokenizer is not None:
            sums[1] += tokenizer.ids_to_fhat(ids).double().pow(2).sum().item()
        count += residual.numel()
        bar.update(residual.shape[0])
        if count >= max_images * residual[0].numel():
            break
    if bar is not None:
        bar.close()
    rms = [float((v / max(count, 1)) ** 0.5) for v in sums]
    return rms[0], rms[1] if tokenizer is not None else None


def measure_decoder_metric(batches, tokenizer: HybridTokenizer, max_images: int = 512, draws: int = 4,
                           seed: int = 0) -> torch.Tensor:
    """A (z, z) = G^(1/2), scaled so that A r has unit mean square over the residual tokens r of
    the first ``max_images`` training images; G = E[J_c^T J_c], the decoder's pixel metric on
    one latent cell's channels, from vector-Jacobian products with ``draws`` Gaussian pixel
    vectors at each image's exact latent (the cross-cell terms left out)."""
    g = torch.Generator().manual_seed(seed)
    G, res, seen = 0.0, [], 0
    for ids, residual, _ in batches:
        with torch.no_grad():
            f = (tokenizer.ids_to_fhat(ids) + residual).float()
        f.requires_grad_(True)
        with torch.enable_grad():
            img = tokenizer.decode_latent(f)
            for k in range(draws):
                v = torch.randn(img.shape, generator=g).to(img)
                (gr,) = torch.autograd.grad(img, f, v, retain_graph=k < draws - 1)
                gg = gr.permute(0, 2, 3, 1).reshape(-1, f.shape[1]).double()
                G = G + gg.T @ gg
        res.append(residual.detach().double().permute(0, 2, 3, 1).reshape(-1, f.shape[1]))
        seen += f.shape[0]
        if seen >= max_images:
            break
    lam, U = torch.linalg.eigh(G / G.trace())
    A = U @ torch.diag(lam.clamp_min(1e-12).sqrt()) @ U.T
    A = A / (torch.cat(res) @ A.T).pow(2).mean().sqrt()
    return A.float()
