"""Probe: can the tokenizer's PatchGAN discriminator tell real images from the decoder's output?

    python benchmarks/disc_probe.py --tokenizer runs/tok-h3 --steps 400

A GAN loss only sharpens the decoder if its discriminator separates real images from the
reconstructions. This trains a fresh discriminator against a frozen tokenizer's decodes (the
exact latent, ``hybrid``, or ``discrete`` with ``--decode discrete``) for ``--steps`` steps in
each of these ways, and reports on held-out images:

- ``batch/separate``: BatchNorm, real and fake batches in separate forward passes (what
  ``hart train-tokenizer`` did up to session 11, as taming-transformers does);
- ``batch/joint``: BatchNorm, real and fake in one forward pass (shared batch statistics);
- ``none``: no normalization layers;
- ``detail`` (session 20): ``tokenizer.losses.detail_critic``, what ``hart train-tokenizer
  --disc-input detail`` trains: a conditional critic given each image's discrete decode beside
  the detail (image or decode, minus the discrete decode, x10, on the 8-bit grid);
- ``features`` (session 26, with ``--lpips-weights FILE``): ``tokenizer.losses.FeatureDiscriminator``,
  what ``--disc-input features`` trains: an MLP on the standardised channel means and stds of
  that file's frozen VGG16 features (fit to 1,024 of the train images first);
- ``control``: ``batch/separate`` against a Gaussian blur (``--control-blur`` pixels) of the
  real images instead of the decodes, to show the probe can succeed.

Per variant: the hinge loss over the last 50 training steps (1.0 is a discriminator that
separates nothing) and the accuracy of the sign of its mean patch logit on ``--num`` held-out
real images and their decodes (0.5 is chance), in the mode it trains in (BatchNorm on the
batch's statistics: in eval mode its running statistics blur real and fake together). One line per variant:
``norm/passes d_loss=X acc=X``.
"""
from __future__ import annotations

import argparse

import torch

from hart.common.data import make_dataset
from fd_sensitivity import gaussian_blur  # benchmarks/ is on the path when run as a script
from tokenizer import HybridTokenizer
from tokenizer.losses import LPIPS, FeatureDiscriminator, PatchDiscriminator, detail_critic, detail_input, hinge_d_loss


@torch.no_grad()
def decode_all(tok: HybridTokenizer, x: torch.Tensor, which: str, batch: int = 200) -> torch.Tensor:
    out = []
    for i in range(0, len(x), batch):
        code = tok.encode(x[i:i + batch])
        lat = code.f_hat + code.residual if which == "hybrid" else code.f_hat
        out.append(tok.decode_latent(lat).clamp(-1, 1))
    return torch.cat(out)


def load(data, idx) -> torch.Tensor:
    return torch.stack([data[int(i)][0] for i in idx])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--decode", default="hybrid", choices=["hybrid", "discrete"])
    p.add_argument("--train-num", type=int, default=4000, help="train images (and their decodes) the probe sees")
    p.add_argument("--num", type=int, default=1000, help="held-out test images to score on")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--disc-gain", type=float, default=10.0, help="the detail critic's amplification")
    p.add_argument("--control-blur", type=float, default=0.6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lpips-weights", default=None, help="adds the 'features' variant on this file's VGG16")
    p.add_argument("--variants", nargs="*", default=None,
                   help="run only these (batch/separate batch/joint none detail features control); default all")
    a = p.parse_args(argv)

    torch.manual_seed(a.seed)
    tok = HybridTokenizer.from_pretrained(a.tokenizer).requires_grad_(False).eval()
    res = tok.config.resolution
    train = make_dataset(a.data, "train", res, a.data_dir)
    test = make_dataset(a.data, "test", res, a.data_dir)
    g = torch.Generator().manual_seed(a.seed)
    xr = load(train, torch.randperm(len(train), generator=g)[:a.train_num])
    xt = load(test, torch.arange(min(a.num, len(test))))
    fr, ft = decode_all(tok, xr, a.decode), decode_all(tok, xt, a.decode)
    br, bt = decode_all(tok, xr, "discrete"), decode_all(tok, xt, "discrete")  # the detail critic's condition
    nl = 3 if res >= 64 else 2
    blurred = (gaussian_blur(xr, a.control_blur), gaussian_blur(xt, a.control_blur))
    runs = [("batch/separate", "batch", False, fr, ft), ("batch/joint", "batch", True, fr, ft),
            ("none", "none", False, fr, ft), ("detail", "detail", False, fr, ft),
            (f"control blur {a.control_blur:g}", "batch", False, *blurred)]
    if a.lpips_weights:
        runs.insert(4, ("features", "features", False, fr, ft))
        lpips = LPIPS.from_file(a.lpips_weights)
    if a.variants is not None:
        runs = [r for r in runs if r[0].split(" ")[0] in a.variants]
    for name, norm, joint, fake_train, fake_test in runs:
        torch.manual_seed(a.seed)
        if norm == "features":
            disc = FeatureDiscriminator(lpips).train()
            disc.fit(xr[:1024])
            judge = lambda x, i, base: disc(x)  # noqa: E731
        elif norm == "detail":
            disc = detail_critic(res).train()
            judge = lambda x, i, base: disc(detail_input(base[i], x, a.disc_gain))  # noqa: E731
        else:
            disc = PatchDiscriminator(tok.config.in_channels, ndf=64, n_layers=nl, norm=norm).train()
            judge = lambda x, i, base: disc(x)  # noqa: E731
        opt = torch.optim.AdamW(disc.parameters(), lr=a.lr, betas=(0.5, 0.9), weight_decay=0.0)
        losses = []
        for _ in range(a.steps):
            i = torch.randint(0, len(xr), (a.batch_size,), generator=g)
            j = torch.randint(0, len(xr), (a.batch_size,), generator=g)
            real, fake = xr[i], fake_train[j]
            if joint:
                lr_, lf = disc(torch.cat([real, fake])).chunk(2)
            else:
                lr_, lf = judge(real, i, br), judge(fake, j, br)
            loss = hinge_d_loss(lr_, lf)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        with torch.no_grad():  # scored as it trains (BatchNorm on batch statistics, the same passes)
            if joint:
                sr, sf = disc(torch.cat([xt, fake_test])).flatten(1).mean(1).chunk(2)
            else:
                every = torch.arange(len(xt))
                sr, sf = judge(xt, every, bt).flatten(1).mean(1), judge(fake_test, every, bt).flatten(1).mean(1)
        acc = 0.5 * ((sr > 0).float().mean() + (sf <= 0).float().mean()).item()
        tail = losses[-50:]
        print(f"{name} d_loss={sum(tail) / len(tail):.4f} acc={acc:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
