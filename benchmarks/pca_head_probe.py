"""Probe: a residual head that draws the whole residual map in whitened PCA coordinates (issue 12).

    python benchmarks/pca_head_probe.py cache --num 30000 --out runs/pca-head
    python benchmarks/pca_head_probe.py train --out runs/pca-head --steps 3000
    python benchmarks/pca_head_probe.py eval runs/pca-head/head3000.pt --num 1000

``residual_oracle.py --structure`` showed that the projection of the true residual map onto
the top 256 principal components of the training maps keeps the whole hybrid FD gain (1,000
test images: recovered 1.02; 64 components 0.55), and that the part within 2 x 2 blocks keeps
it too (1.10): the gain lies in directions of small variance as much as large. Every head so
far learned with an epsilon MSE in latent units, where those directions weigh little. This
head denoises the K whitened coefficients of the whole map (each of unit variance over the
training maps, so every direction weighs the same in the loss), conditioned on f_hat through a
small CNN (f_hat is a function of the true ids; the transformer is not used). It reuses
``hart.diffusion``'s ``DiffusionHead`` (one row per image, ``grid=0``), loss and DDIM scheduler.

``cache`` encodes the first ``--num`` training images and the first 2,000 test images once;
``train`` fits the PCA on the training maps and trains (AdamW, one checkpoint per 500 steps,
written atomically, with the PCA basis); ``eval`` prints, before decoding, the draws' r2 and a
Frechet distance to the true coefficients in whitened space (``coef_fd``, with the floor of
true coefficients of one half of the images against the other's), then PSNR, FD-EffNet (as
``hart eval-residual --fd``) and ``recovered`` for f_hat, the hybrid, the K-component oracle,
and the head's draws at each ``--temps`` (the DDIM start noise scaled by T; 0: one point).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from decode_scores import score_residual_draws  # benchmarks/ is on the path when run as a script
from probe_train import train_loop
from hart.common.data import make_dataset
from hart.common.io import atomic_file
from hart.diffusion import DiffusionHead, diffusion_loss, make_sample_scheduler, make_train_scheduler
from sampling.fid.stats import frechet_distance
from sampling.pipeline import model_folder
from tokenizer.model import HybridTokenizer


class FhatEncoder(nn.Module):
    """(B, z, n, n) f_hat -> (B, C) condition."""

    def __init__(self, z: int, n: int, width: int = 128, out: int = 512):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(z, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.GELU(),
            nn.Flatten(), nn.Linear(2 * width * ((n + 1) // 2) ** 2, out),
        )

    def forward(self, f_hat: torch.Tensor) -> torch.Tensor:
        return self.net(f_hat)


class PCAHead(nn.Module):
    def __init__(self, z: int, n: int, k: int, width: int, depth: int):
        super().__init__()
        self.enc = FhatEncoder(z, n)
        self.head = DiffusionHead(k, 512, width, depth)
        self.register_buffer("mu", torch.zeros(z * n * n))
        self.register_buffer("basis", torch.zeros(z * n * n, k))  # columns: components
        self.register_buffer("std", torch.ones(k))

    def to_coef(self, res: torch.Tensor) -> torch.Tensor:  # (B, z, n, n) -> (B, k) whitened
        return ((res.flatten(1) - self.mu) @ self.basis) / self.std

    def from_coef(self, c: torch.Tensor, shape) -> torch.Tensor:  # (B, k) -> (B, z, n, n)
        return ((c * self.std) @ self.basis.T + self.mu).view(c.shape[0], *shape)

    @torch.no_grad()
    def sample(self, f_hat: torch.Tensor, temp: float, g: torch.Generator, steps: int = 50) -> torch.Tensor:
        sch = make_sample_scheduler()
        sch.set_timesteps(steps)
        cond = self.enc(f_hat)
        x = torch.randn(f_hat.shape[0], self.head.channels, generator=g) * temp
        for t in sch.timesteps:
            eps = self.head(x, torch.full((x.shape[0],), int(t), dtype=torch.long), cond)
            x = sch.step(eps, t, x).prev_sample
        return x


def load_projector(path, k: int | None = None):
    """A ``train`` checkpoint -> the function that projects residual maps (B, z, n, n) onto its
    first ``k`` (default: all K) principal components (mu + P P^T (r - mu)): what a head's draws
    keep of those directions."""
    st = torch.load(path)["state"]
    mu, basis = st["mu"], st["basis"]  # (z n n,), (z n n, K) orthonormal columns, by variance
    if k is not None:
        if not 0 < k <= basis.shape[1]:
            raise SystemExit(f"error: --project-k {k}: the checkpoint {path} has {basis.shape[1]} components")
        basis = basis[:, :k]

    def project(maps: torch.Tensor) -> torch.Tensor:
        flat = maps.flatten(1).float() - mu.to(maps.device)
        return ((flat @ basis.to(maps.device)) @ basis.T.to(maps.device) + mu.to(maps.device)).view_as(maps).to(maps.dtype)

    return project


@torch.no_grad()
def encode(tok, ds, num: int, batch: int = 200, start: int = 0):
    F, R = [], []
    for s in tqdm(range(start, start + num, batch), desc="encode"):
        x = torch.stack([ds[i][0] for i in range(s, min(start + num, s + batch))])
        code = tok.encode(x)
        F.append(code.f_hat.half())
        R.append(code.residual.half())
    return torch.cat(F), torch.cat(R)


def cache(args) -> None:
    tok = HybridTokenizer.from_pretrained(model_folder(args.model) / "tokenizer").eval()
    r = tok.config.resolution
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train = make_dataset("fashion-mnist", "train", r, None)
    test = make_dataset("fashion-mnist", "test", r, None)
    if not 0 <= args.test_start <= len(test) - args.test_num:
        raise SystemExit(f"error: --test-start {args.test_start}: the test split has {len(test)} images")
    Fv, Rv = encode(tok, test, args.test_num, start=args.test_start)
    data = {"test": (Fv, Rv), "test_start": args.test_start}
    if args.num:  # --num 0: a held-out test cache only (eval --cache)
        data["train"] = encode(tok, train, min(args.num, len(train)))
    with atomic_file(out / "cache.pt") as tmp:
        torch.save(data, tmp)


def fit_pca(model: PCAHead, R: torch.Tensor) -> None:
    flat = R.float().flatten(1)
    mu = flat.mean(0)
    c = flat - mu
    val, vec = torch.linalg.eigh(c.T @ c / c.shape[0])
    k = model.basis.shape[1]
    model.mu.copy_(mu)
    model.basis.copy_(vec[:, -k:].flip(1))
    model.std.copy_(val[-k:].flip(0).clamp_min(1e-12).sqrt())


def train(args) -> None:
    data = torch.load(Path(args.out) / "cache.pt")
    Ft, Rt = data["train"]
    Fv, Rv = data["test"]
    z, n = Ft.shape[1], Ft.shape[2]
    torch.manual_seed(args.seed)
    model = PCAHead(z, n, args.k, args.width, args.depth)
    fit_pca(model, Rt)
    kept = model.std.pow(2).sum() / (Rt.float().flatten(1) - model.mu).pow(2).sum(1).mean()
    print(f"{args.k} components keep {kept:.3f} of the residual's variance", flush=True)
    with torch.no_grad():
        Ct = model.to_coef(Rt.float())
        Cv = model.to_coef(Rv.float())
    g = torch.Generator().manual_seed(args.seed)
    tr = make_train_scheduler()

    def loss_on(C, Fh, gen, training):
        return diffusion_loss(model.head, C, model.enc(Fh.float()), batch_mul=args.batch_mul if training else 2,
                              scheduler=tr, generator=gen)

    def save(step):
        with atomic_file(Path(args.out) / f"head{step}.pt") as tmp:
            torch.save({"state": model.state_dict(), "k": args.k, "width": args.width, "depth": args.depth,
                        "z": z, "n": n}, tmp)

    train_loop(list(model.parameters()), loss_on, (Ct, Ft), (Cv, Fv), args.steps, args.batch_size, args.lr, g, save)


def coef_fd(a: torch.Tensor, b: torch.Tensor) -> float:
    def st(x):
        x = x.double()
        return x.mean(0).numpy(), torch.cov(x.T).numpy()
    return float(frechet_distance(*st(a), *st(b)))


@torch.no_grad()
def evaluate(args) -> None:
    ck = torch.load(args.ckpt)
    model = PCAHead(ck["z"], ck["n"], ck["k"], ck["width"], ck["depth"])
    model.load_state_dict(ck["state"])
    model.eval()
    data = torch.load(Path(args.ckpt).parent / "cache.pt")
    Fv, Rv = (t[:args.num].float() for t in data["test"])
    shape = Fv.shape[1:]
    C = model.to_coef(Rv)
    temps = [float(t) for t in args.temps.split(",")]
    draws = {}
    h = args.num // 2
    print(f"coef_fd floor (true coefficients, one half of the images against the other): {coef_fd(C[:h], C[h:]):.3f}")
    for t in temps:
        g = torch.Generator().manual_seed(args.seed)
        D = torch.cat([model.sample(Fv[s:s + 250], t, g, args.ddim_steps) for s in range(0, args.num, 250)])
        r2 = 1 - (model.from_coef(D, shape) - Rv).pow(2).sum() / Rv.pow(2).sum()
        var = D.pow(2).sum(1).mean() / C.pow(2).sum(1).mean()
        print(f"T {t}: r2 {r2:.3f} coef_fd {coef_fd(D, C):.3f} var {var:.3f}", flush=True)
        draws[f"draw-T{t}"] = model.from_coef(D, shape)
    if args.oracle:
        draws = {"oracle": model.from_coef(C, shape), **draws}
    score_residual_draws(args.model, Fv, Rv, draws, start=data.get("test_start", 0))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cache")
    c.add_argument("--model", default=None)
    c.add_argument("--num", type=int, default=30000, help="training images (0: a test cache only)")
    c.add_argument("--test-start", type=int, default=0, help="first test image (default 0)")
    c.add_argument("--test-num", type=int, default=2000)
    c.add_argument("--out", default="runs/pca-head")
    t = sub.add_parser("train")
    t.add_argument("--out", default="runs/pca-head")
    t.add_argument("--k", type=int, default=256)
    t.add_argument("--width", type=int, default=512)
    t.add_argument("--depth", type=int, default=4)
    t.add_argument("--steps", type=int, default=3000)
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--batch-mul", type=int, default=2)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("eval")
    e.add_argument("ckpt")
    e.add_argument("--model", default=None)
    e.add_argument("--num", type=int, default=1000)
    e.add_argument("--temps", default="1,0")
    e.add_argument("--ddim-steps", type=int, default=50)
    e.add_argument("--no-oracle", dest="oracle", action="store_false",
                   help="skip the decode of the true residual's K-component projection")
    e.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    {"cache": cache, "train": train, "eval": evaluate}[args.cmd](args)
    return 0


if __name__ == "__main__":
    main()
