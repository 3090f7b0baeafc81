"""Probe: a convolutional diffusion head over the whole residual map, conditioned on f_hat (issue 12).

    python benchmarks/pca_head_probe.py cache --num 30000 --out runs/pca-head     # the shared cache
    python benchmarks/grid_head_probe.py train --cache runs/pca-head/cache.pt --out runs/grid-head --steps 3000
    python benchmarks/grid_head_probe.py eval runs/grid-head/head3000.pt --num 1000 --draws ddim:8:0 \
        --project runs/pca-head/head3000.pt      # also each draw projected on the PCA head's components

Every head so far was a per-token MLP (HART's, MAR's) with at most a light mix across the grid
(a gated depthwise 3x3, or one attention layer per block) on a condition that is the
transformer's hidden state; ``residual_oracle.py`` says the FD gain lives in how the 64 tokens'
residuals go together. This head is what image diffusion models use for such a map: dense 3x3
convolutions over the 8 x 8 grid (every block mixes space and channels), self-attention over the
grid, and f_hat itself (a function of the true ids) as input channels beside the noisy residual.
The target is the residual divided by its per-channel standard deviation over the training
maps (``--metric channel``), or the residual in the decoder's metric (``--metric decoder``: each
cell's residual times G^(1/2), G = E[J^T J] of the decoder's Jacobian on one cell's channels, so
that the loss weighs each direction by how much it moves the pixels); either scaled to unit
variance. Epsilon prediction (or v, ``--prediction``) on
``hart.diffusion``'s 1000-step cosine schedule (diffusers); sampled with DDIM (``ddim``) or
diffusers' ancestral DDPM (``ddpm``). An epsilon head's DDIM draws blow up with many steps
(at the first step, t 981 of 50, the x0 estimate multiplies the epsilon error by 34: the
first run's draws had 3.4 times the residual's variance at 50 steps); use 8.

``eval`` prints the draws' r2 and variance against the true residual, then PSNR, FD-EffNet
(2,000 test images max, against 10,000 train images, as ``hart eval-residual --fd``) and
``recovered`` for f_hat, the hybrid and the draws (``decode_scores.score_residual_draws``).
Measured (README, session 22): its draws fit the residual better than any earlier head's and
decode worse (ancestral draws with the residual's variance: recovered -4.0); projected on the
top 256 principal components of the maps, its cold draws recover 0.30 (-0.17 unprojected).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from decode_scores import score_residual_draws  # benchmarks/ is on the path when run as a script
from pca_head_probe import load_projector
from probe_train import train_loop
from hart.common.io import atomic_file
from hart.diffusion import MapAttention, MapBlock, make_sample_scheduler, make_train_scheduler, timestep_embedding


class GridHead(nn.Module):
    """eps(noisy residual map, t, f_hat): (B, z, n, n) x2 -> (B, z, n, n). The blocks are
    ``hart.diffusion.MapHead``'s (the head this probe became in the model, ``--diff-mix map``),
    conditioned on f_hat alone."""

    def __init__(self, z: int, width: int = 96, depth: int = 6, attn_every: int = 3, prediction: str = "epsilon"):
        super().__init__()
        self.width, self.prediction = width, prediction
        self.temb = nn.Sequential(nn.Linear(width, 4 * width), nn.SiLU(), nn.Linear(4 * width, 4 * width))
        self.inp = nn.Conv2d(2 * z, width, 3, padding=1)
        self.blocks = nn.ModuleList(MapBlock(width, 4 * width) for _ in range(depth))
        self.attns = nn.ModuleDict({str(i): MapAttention(width) for i in range(depth) if (i + 1) % attn_every == 0})
        for blk in self.blocks:  # the identity at init, as hart.diffusion.MapHead's
            nn.init.zeros_(blk.c2.weight)
            nn.init.zeros_(blk.c2.bias)
        for a in self.attns.values():
            nn.init.zeros_(a.attn.out_proj.weight)
        self.out_n = nn.GroupNorm(8, width)
        self.out = nn.Conv2d(width, z, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        # target = A r per cell (z x z), r = A_inv y: per-channel 1/std (--metric channel) or the
        # decoder's metric G^(1/2) (--metric decoder), scaled so that the target has unit variance
        self.register_buffer("A", torch.eye(z))
        self.register_buffer("A_inv", torch.eye(z))
        self.register_buffer("f_std", torch.ones(()))  # std of f_hat

    def forward(self, x: torch.Tensor, t: torch.Tensor, f_hat: torch.Tensor) -> torch.Tensor:
        te = self.temb(timestep_embedding(t, self.width))
        h = self.inp(torch.cat([x, f_hat / self.f_std], 1))
        for i, blk in enumerate(self.blocks):
            h = blk(h, te)
            if str(i) in self.attns:
                h = self.attns[str(i)](h)
        return self.out(F.silu(self.out_n(h)))

    def target(self, res: torch.Tensor) -> torch.Tensor:  # (B, z, n, n) latent units -> target units
        return torch.einsum("ij,bjhw->bihw", self.A, res)

    def untarget(self, y: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ij,bjhw->bihw", self.A_inv, y)

    def set_metric(self, M: torch.Tensor, res: torch.Tensor) -> None:
        """A = M^(1/2) scaled so that A r has unit mean variance over ``res`` (B, z, n, n)."""
        lam, U = torch.linalg.eigh(M.double())
        A = U @ torch.diag(lam.clamp_min(1e-12).sqrt()) @ U.T
        A = A / torch.einsum("ij,bjhw->bihw", A.float(), res).pow(2).mean().sqrt()
        self.A.copy_(A.float())
        self.A_inv.copy_(torch.linalg.inv(A).float())

    @torch.no_grad()
    def sample(self, f_hat: torch.Tensor, temp: float, g: torch.Generator, steps: int = 50,
               sampler: str = "ddim") -> torch.Tensor:
        """(B, z, n, n) f_hat -> (B, z, n, n) residual draws (in latent units)."""
        if sampler == "ddim":
            sch = make_sample_scheduler()
            sch = type(sch).from_config(sch.config, prediction_type=self.prediction)
        else:
            from diffusers import DDPMScheduler

            sch = DDPMScheduler.from_config(make_train_scheduler().config, variance_type="fixed_small",
                                            prediction_type=self.prediction)
        sch.set_timesteps(steps)
        x = torch.randn(f_hat.shape, generator=g) * temp
        for t in sch.timesteps:
            eps = self(x, torch.full((x.shape[0],), int(t), dtype=torch.long), f_hat)
            x = sch.step(eps, t, x, generator=g).prev_sample if sampler == "ddpm" else sch.step(eps, t, x).prev_sample
        return self.untarget(x)


def decoder_metric(model, latents: torch.Tensor, draws: int = 4) -> torch.Tensor:
    """(z, z) E[J_c^T J_c]: the decoder's pixel metric on one cell's channels, from
    vector-Jacobian products with Gaussian pixel vectors at ``latents`` (B, z, n, n) (the true
    latent f_hat + residual); the cross-cell terms are left out."""
    from sampling.pipeline import model_folder
    from tokenizer.model import HybridTokenizer

    tok = HybridTokenizer.from_pretrained(model_folder(model) / "tokenizer").eval().requires_grad_(False)
    z = latents.shape[1]
    G = torch.zeros(z, z, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    for s in range(0, latents.shape[0], 100):
        f = latents[s:s + 100].clone().requires_grad_(True)
        img = tok.decode_latent(f)
        for k in range(draws):
            (gr,) = torch.autograd.grad(img, f, torch.randn(img.shape, generator=g), retain_graph=k < draws - 1)
            gg = gr.permute(0, 2, 3, 1).reshape(-1, z).double()
            G += gg.T @ gg
    return (G / (latents.shape[0] * latents[0, 0].numel() * draws)).float()


def train(args) -> None:
    data = torch.load(args.cache)
    Ft, Rt = (t.float() for t in data["train"])
    Fv, Rv = (t.float() for t in data["test"])
    torch.manual_seed(args.seed)
    model = GridHead(Ft.shape[1], args.width, args.depth, prediction=args.prediction)
    if args.metric == "decoder":
        M = decoder_metric(args.model, Ft[:400] + Rt[:400])
    else:
        M = torch.diag(1 / Rt.transpose(0, 1).flatten(1).var(1))
    model.set_metric(M, Rt[:5000])
    model.f_std.copy_(Ft.std())
    print(f"params {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M; metric {args.metric}; "
          f"f_hat std {model.f_std:.4f}", flush=True)
    Ct, Cv = model.target(Rt), model.target(Rv)
    tr = make_train_scheduler()
    g = torch.Generator().manual_seed(args.seed)

    def loss_on(C, Fh, gen, training):
        t = torch.randint(0, 1000, (C.shape[0],), generator=gen)
        noise = torch.randn(C.shape, generator=gen)
        with torch.autocast("cpu", torch.bfloat16, enabled=args.dtype == "bf16"):
            out = model(tr.add_noise(C, noise, t), t, Fh)
        return F.mse_loss(out.float(), noise if args.prediction == "epsilon" else tr.get_velocity(C, noise, t))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save(step):
        with atomic_file(out / f"head{step}.pt") as tmp:
            torch.save({"state": model.state_dict(), "width": args.width, "depth": args.depth,
                        "prediction": args.prediction, "z": Ft.shape[1], "cache": str(args.cache)}, tmp)

    train_loop(list(model.parameters()), loss_on, (Ct, Ft), (Cv, Fv), args.steps, args.batch_size, args.lr, g, save)


@torch.no_grad()
def evaluate(args) -> None:
    ck = torch.load(args.ckpt)
    model = GridHead(ck["z"], ck["width"], ck["depth"], prediction=ck.get("prediction", "epsilon"))
    model.load_state_dict(ck["state"])
    model.eval()
    data = torch.load(args.cache or ck["cache"])
    Fv, Rv = (t[:args.num].float() for t in data["test"])
    ks = [int(k) for k in args.project_k.split(",")] if args.project_k else [None]
    projectors = {(f":pca{k}" if k else ":pca"): load_projector(args.project, k) for k in ks} if args.project else {}
    draws = {}
    for spec in args.draws.split(","):
        sampler, steps, temp = spec.split(":")
        g = torch.Generator().manual_seed(args.seed)
        D = torch.cat([model.sample(Fv[s:s + 250], float(temp), g, int(steps), sampler)
                       for s in range(0, args.num, 250)])
        r2 = 1 - (D - Rv).pow(2).sum() / Rv.pow(2).sum()
        var = D.pow(2).sum() / Rv.pow(2).sum()
        print(f"{spec}: r2 {r2:.3f} var {var:.3f}", flush=True)
        draws[spec] = D
        for tag, project in projectors.items():  # the same draw projected onto the top K principal components
            draws[spec + tag] = project(D)
            print(f"{spec}{tag}: r2 {1 - (draws[spec + tag] - Rv).pow(2).sum() / Rv.pow(2).sum():.3f}", flush=True)
    score_residual_draws(args.model, Fv, Rv, draws, start=data.get("test_start", 0))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--cache", default="runs/pca-head/cache.pt", help="pca_head_probe.py cache's file")
    t.add_argument("--out", default="runs/grid-head")
    t.add_argument("--width", type=int, default=96)
    t.add_argument("--depth", type=int, default=6)
    t.add_argument("--steps", type=int, default=3000)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=5e-4)
    t.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    t.add_argument("--prediction", choices=["epsilon", "v_prediction"], default="epsilon",
                   help="what the network predicts (v: no blow-up of x0 near zero SNR)")
    t.add_argument("--metric", choices=["channel", "decoder"], default="channel",
                   help="target units: per-channel unit variance, or the decoder's pixel metric")
    t.add_argument("--model", default=None, help="model folder whose decoder gives the metric (default: bundled)")
    t.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("eval")
    e.add_argument("ckpt")
    e.add_argument("--cache", default=None, help="default: the cache the head was trained on")
    e.add_argument("--model", default=None, help="model folder whose tokenizer decodes (default: bundled)")
    e.add_argument("--num", type=int, default=1000)
    e.add_argument("--draws", default="ddim:8:1,ddpm:50:1", help="comma-separated sampler:steps:temperature")
    e.add_argument("--project", default=None,
                   help="a pca_head_probe.py checkpoint: also score each draw projected onto its K components")
    e.add_argument("--project-k", default=None,
                   help="comma-separated numbers of components to project on (default: all of --project's)")
    e.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    {"train": train, "eval": evaluate}[args.cmd](args)
    return 0


if __name__ == "__main__":
    main()
