"""Probe: a residual head trained as a one-step generator with the energy score of its decodes.

    python benchmarks/energy_head_probe.py train --steps 1000 --out runs/energy-head --dtype fp32   # 27 min, 2 threads
    python benchmarks/energy_head_probe.py eval runs/energy-head/head1000.pt --num 2000 --temps 1,0.5,0  # 20 min
    python benchmarks/energy_head_probe.py train --steps 1000 --out runs/gan-head --dtype fp32 --adv 1   # session 20, stopped at 400
    python benchmarks/energy_head_probe.py eval runs/gan-head/head250.pt --num 1000 --temps 1,0     # 9 min, 1 thread

Sessions 18-19's experiment for #12 (README: "An energy-score head") (not a model the CLI can ship). Every diffusion head so far
learned the part of the residual the codes predict and recovered at most 0.10 of the hybrid FD
gain; the gain needs draws from p(residual | codes) that the *decoder* cannot tell from true
ones. So this head is judged where it matters during training: a whole-grid head (the
``DiffusionHead`` architecture with ``--mix attn``, timestep fixed at 0) maps noise z and the
true-ids condition (``sampling.eval_residual.true_ids_cond``, frozen bundled transformer) to a
residual in one forward, and its two draws per image are decoded by the frozen bundled
decoder and scored with the energy score against the hybrid decode:
``E|D(f_hat + r1) - y| - 0.5 E|D(f_hat + r1) - D(f_hat + r2)|`` (a strictly proper scoring
rule: its minimum is the true conditional distribution; Gneiting & Raftery 2007, and the
energy-score AR heads of Shao et al. 2025). ``train`` caches the codes, conditions and targets
of the first ``--num`` training images once (bf16), then trains (AdamW, ``--dtype`` autocast).
``eval`` prints PSNR, FD-EffNet (first ``--num`` test images against 10,000 train images, the
statistics cached as ``hart fid`` caches them), r2 and ``recovered`` as head_sweep.py does, and
the held-out energy score (two draws per image). ``--adv W`` (session 20) adds W times the
hinge loss of a conditional critic (``tokenizer.losses.detail_critic``) that is trained beside
the head to tell the hybrid decode from the decodes of f_hat + draw, given the discrete decode
and the detail each adds.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from tqdm import tqdm

from decode_scores import DecodeScores  # benchmarks/ is on the path when run as a script
from hart.common.data import labelled_batch, make_dataset
from hart.common.io import atomic_file
from hart.diffusion import DiffusionHead
from sampling.eval_residual import _R2, load_models, true_ids_cond
from tokenizer.losses import detail_critic, detail_input, hinge_d_loss, hinge_g_loss


def make_head(gen, mix: str) -> DiffusionHead:
    c = gen.config
    return DiffusionHead(c.z_channels, c.width, c.diff_width, c.diff_depth, grid=c.patch_nums[-1], mix=mix)


def draw(head, gen, cond: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """cond (N, C), z (N, zc) with N = B * n^2 -> (B, zc, n, n) residuals in latent units."""
    n = gen.config.patch_nums[-1]
    out = head(z, torch.zeros(z.shape[0], dtype=torch.long), cond).float() * gen.config.target_scale
    return out.view(-1, n * n, z.shape[1]).permute(0, 2, 1).reshape(-1, z.shape[1], n, n)


def energy_terms(X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """X (k, B, D) k decodes per image (k = 2, or 1 for a point), y (B, D) the target -> (fit, spread),
    each a mean over the batch: the energy score is fit - 0.5 * spread (lower is better)."""
    fit = (X - y.unsqueeze(0)).pow(2).sum(-1).add(1e-8).sqrt().mean()
    spread = (X[0] - X[1]).pow(2).sum(-1).add(1e-8).sqrt().mean() if X.shape[0] == 2 else X.new_zeros(())
    return fit, spread


def train(args) -> None:
    tok, gen, _ = load_models(args.model)
    for q in list(tok.parameters()) + list(gen.parameters()):
        q.requires_grad_(False)
    ds = make_dataset("fashion-mnist", "train", tok.config.resolution, None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / f"cache{args.num}.pt"
    if cache.is_file():
        F, C, Y = torch.load(cache)
    else:
        F, C, Y = [], [], []
        with torch.no_grad():
            for s in tqdm(range(0, args.num, 100), desc="cache"):
                x, lab = labelled_batch(ds, range(s, min(args.num, s + 100)))
                code = tok.encode(x)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    C.append(true_ids_cond(tok, gen, code, lab).to(torch.bfloat16))
                F.append(code.f_hat)
                Y.append(tok.decode_latent(code.f_hat + code.residual).to(torch.bfloat16))
        F, C, Y = map(torch.cat, (F, C, Y))
        with atomic_file(cache) as tmp:
            torch.save((F, C, Y), tmp)
    torch.manual_seed(args.seed)
    head = make_head(gen, args.mix)
    opt = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))
    g = torch.Generator().manual_seed(args.seed)
    B, L, zc = args.batch_size, C.shape[1], gen.config.z_channels
    if args.adv > 0:
        critic = detail_critic()
        opt_d = torch.optim.Adam(critic.parameters(), lr=args.disc_lr, betas=(0.5, 0.9))
    t0 = time.time()
    for step in range(args.steps):
        idx = torch.randint(0, F.shape[0], (B,), generator=g)
        f_hat, cond, y = F[idx], C[idx].float().reshape(B * L, -1), Y[idx].float()
        z = torch.randn(2 * B * L, zc, generator=g)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
            r = draw(head, gen, cond.repeat(2, 1), z)  # (2B, zc, n, n)
            img = tok.decode_latent(f_hat.repeat(2, 1, 1, 1) + r).float()  # (2B, 3, R, R)
        fit, spread = energy_terms(img.view(2, B, -1), y.view(B, -1))
        loss = args.energy * (fit - 0.5 * spread)
        log = f"energy {fit.item() - 0.5 * spread.item():.4f} fit {fit.item():.3f} spread {spread.item():.3f}"
        if args.adv > 0:
            with torch.no_grad():
                base = tok.decode_latent(f_hat).repeat(2, 1, 1, 1)
            real = critic(detail_input(base[:B], y, args.critic_gain))
            fake = critic(detail_input(base, img.detach(), args.critic_gain))
            d_loss = hinge_d_loss(real, fake)
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
            g_loss = hinge_g_loss(critic(detail_input(base, img, args.critic_gain)))
            loss = loss + args.adv * g_loss
            log += (f" d {d_loss.item():.3f} g {g_loss.item():.3f}"
                    f" real {real.mean().item():+.2f} fake {fake.mean().item():+.2f}")
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 25 == 0:
            print(f"{step} loss {loss.item():.4f} {log} {time.time() - t0:.0f}s", flush=True)
        if (step + 1) % 250 == 0:
            with atomic_file(out / f"head{step + 1}.pt") as tmp:
                torch.save(head.state_dict(), tmp)


@torch.no_grad()
def evaluate(args) -> None:
    tok, gen, _ = load_models(args.model)
    head = make_head(gen, args.mix)
    head.load_state_dict(torch.load(args.ckpt))
    head.eval()
    ds = make_dataset("fashion-mnist", "test", tok.config.resolution, None)
    temps = [float(t) for t in args.temps.split(",")]
    names = ["discrete", "hybrid"] + [f"T{t:g}" for t in temps]
    scores = DecodeScores(names, "fashion-mnist", tok.config.resolution, 10000)
    r2 = {k: _R2() for k in names[2:]}
    energy = {k: [0.0, 0.0] for k in names if k != "hybrid"}  # summed fit, spread (discrete: spread 0)
    g = torch.Generator().manual_seed(args.seed)
    for s in tqdm(range(0, args.num, 100), desc="eval"):
        x, lab = labelled_batch(ds, range(s, min(args.num, s + 100)))
        code = tok.encode(x)
        cond = true_ids_cond(tok, gen, code, lab).flatten(0, 1)
        dec = {"discrete": tok.decode_latent(code.f_hat), "hybrid": tok.decode_latent(code.f_hat + code.residual)}
        y, b = dec["hybrid"].flatten(1), x.shape[0]
        energy["discrete"][0] += energy_terms(dec["discrete"].flatten(1)[None], y)[0].item() * b
        for t, k in zip(temps, names[2:]):
            z = torch.randn(2, cond.shape[0], gen.config.z_channels, generator=g) * t
            r, r_b = draw(head, gen, cond, z[0]), draw(head, gen, cond, z[1])
            r2[k].add(code.residual, r)
            dec[k] = tok.decode_latent(code.f_hat + r)
            fit, spread = energy_terms(torch.stack([dec[k], tok.decode_latent(code.f_hat + r_b)]).flatten(2), y)
            energy[k][0] += fit.item() * b
            energy[k][1] += spread.item() * b
        for k, img in dec.items():
            scores.add(k, img, x)
    fd = scores.fd()
    gain = fd["discrete"] - fd["hybrid"]
    for k in names:
        extra = f" r2={r2[k].value():.3f} recovered={(fd['discrete'] - fd[k]) / gain:.3f}" if k in r2 else ""
        es = ""
        if k in energy:
            fit, spread = (v / args.num for v in energy[k])
            es = f" energy={fit - 0.5 * spread:.3f} (fit {fit:.3f} spread {spread:.3f})"
        print(f"{k:>9} psnr={scores.psnr(k):.2f} fd={fd[k]:.3f}{extra}{es}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the energy-score head")
    t.add_argument("--out", required=True, help="folder for the cache and the head checkpoints")
    t.add_argument("--steps", type=int, default=1500)
    t.add_argument("--num", type=int, default=12000, help="training images cached")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--energy", type=float, default=1.0, help="weight of the energy score")
    t.add_argument("--adv", type=float, default=0.0,
                   help="weight of a conditional PatchGAN's hinge loss on (discrete decode, decode) pairs (0: off)")
    t.add_argument("--disc-lr", type=float, default=2e-4)
    t.add_argument("--critic-gain", type=float, default=10.0, help="how much the critic's detail input is amplified")
    t.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"),
                   help="autocast dtype of the training step (bf16 pays only on CPUs with avx512_bf16 or AMX)")
    e = sub.add_parser("eval", help="score a checkpoint on the test split")
    e.add_argument("ckpt")
    e.add_argument("--num", type=int, default=2000)
    e.add_argument("--temps", default="1", help="noise scales, comma-separated")
    for q in (t, e):
        q.add_argument("--model", default=None, help="model folder (default: the bundled model)")
        q.add_argument("--mix", default="attn", choices=("conv", "attn"))
        q.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    train(args) if args.cmd == "train" else evaluate(args)
    return 0


if __name__ == "__main__":
    main()
