"""Train LPIPS features on your own labelled images, for ``hart train-tokenizer --lpips-weights``.

    python scripts/feature_net.py --data fashion-mnist --out runs/lpips-fm.safetensors

LPIPS needs ImageNet VGG16 weights, which cannot be downloaded here. This trains the same
VGG16 layout (with BatchNorm, for a plain 13-conv stack trains badly from scratch) as a
classifier of the dataset's classes, folds each BatchNorm into the conv before it (exact at
eval), and writes the file ``LPIPS.from_file`` reads: ``features.{N}.weight/bias`` of the plain
VGG16 and ``lin{0..4}.model.1.weight`` set to ``--lin`` for every channel (LPIPS' learnt
linear layers need human judgements; a uniform weight is LPIPS' "baseline" variant). The
input is normalised as LPIPS normalises it, so the features see what they were trained on.
Random crops (pad 2) and horizontal flips; bf16 autocast on CPU. Prints the held-out accuracy.
The metadata records the data, the steps and that accuracy.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hart.data.datasets import make_dataset  # noqa: E402
from hart.common.errors import UserError, cli_entry  # noqa: E402
from hart.common.io import atomic_file  # noqa: E402
from tokenizer.losses import LPIPS, _VGG16_CFG  # noqa: E402


def vgg16_bn(num_classes: int) -> nn.Sequential:
    """The LPIPS VGG16 layout with a BatchNorm after each conv, global pool and a linear classifier."""
    layers, c = [], 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, 1, 1), nn.BatchNorm2d(v), nn.ReLU()]
            c = v
    return nn.Sequential(nn.Sequential(*layers), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))


@torch.no_grad()
def fold_to_lpips(net: nn.Sequential, lin: float) -> dict:
    """BatchNorm folded into the conv before it -> the state dict of :class:`LPIPS` (file key names)."""
    state, n, mods = {}, 0, list(net[0])
    i = 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, nn.Conv2d):
            bn = mods[i + 1]
            s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            state[f"features.{n}.weight"] = (m.weight * s[:, None, None, None]).contiguous()
            state[f"features.{n}.bias"] = ((m.bias - bn.running_mean) * s + bn.bias).contiguous()
            n, i = n + 2, i + 3  # plain VGG16: conv, relu
        else:
            n, i = n + 1, i + 1  # max pool
    for k, ch in enumerate((64, 128, 256, 512, 512)):
        state[f"lin{k}.model.1.weight"] = torch.full((1, ch, 1, 1), float(lin))
    return {k: v.float() for k, v in state.items()}


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random 2-pixel shifts (reflect-free: zero pad, as the data's own border) and flips."""
    b, _, h, w = x.shape
    p = F.pad(x, (2, 2, 2, 2), value=-1.0)
    dx, dy = torch.randint(0, 5, (2, b), generator=g)
    out = torch.stack([p[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    flip = torch.rand(b, generator=g) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


@cli_entry
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="fashion-mnist", help="a labelled dataset (fashion-mnist, folder:PATH, ...)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lin", type=float, default=1.0, help="LPIPS' per-channel weight, the same for all (default 1)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise UserError(f"--out {out} must end in .safetensors")
    train = make_dataset(args.data, "train", args.resolution, args.data_dir)
    test = make_dataset(args.data, "test", args.resolution, args.data_dir)
    num_classes = len(train.classes)
    if num_classes < 2:
        raise UserError(f"{args.data} has no classes to learn; give a labelled dataset (fashion-mnist, folder:PATH)")
    g = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    net = vgg16_bn(num_classes)
    norm = LPIPS()  # only for its input normalisation
    steps = int(args.epochs * len(train) / args.batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=steps, pct_start=0.15)
    autocast = dict(device_type="cpu", dtype=torch.bfloat16)
    net.train()
    bar = tqdm(range(steps), desc="feature net", dynamic_ncols=True)
    perm = torch.randperm(len(train), generator=g)
    pos = 0
    for _ in bar:
        if pos + args.batch_size > len(perm):
            perm, pos = torch.randperm(len(train), generator=g), 0
        idx = perm[pos:pos + args.batch_size].tolist()
        pos += args.batch_size
        x = torch.stack([train[i][0] for i in idx])
        y = torch.tensor([train[i][1] for i in idx])
        x = (augment(x, g) - norm.shift) / norm.scale
        with torch.autocast(**autocast):
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    net.eval()
    correct = 0
    with torch.no_grad():
        for s in range(0, len(test), 500):
            idx = range(s, min(len(test), s + 500))
            x = torch.stack([test[i][0] for i in idx])
            y = torch.tensor([test[i][1] for i in idx])
            correct += (net((x - norm.shift) / norm.scale).argmax(1) == y).sum().item()
    acc = correct / len(test)
    state = fold_to_lpips(net, args.lin)
    # the folded plain VGG16 must give the BN net's features: check on a test batch before writing
    lp = LPIPS.from_state(state, "the folded features")
    x = torch.stack([test[i][0] for i in range(16)])
    with torch.no_grad():
        ref = net[0]((x - norm.shift) / norm.scale)
        got = lp.features((x - lp.shift) / lp.scale)
    err = (ref - got).abs().max().item() / ref.abs().max().item()
    if err > 1e-4:
        raise RuntimeError(f"BatchNorm folding is off by {err:.2e} of the feature scale")
    meta = {"data": args.data, "resolution": str(args.resolution), "steps": str(steps),
            "test_accuracy": f"{acc:.4f}", "lin": str(args.lin), "args": json.dumps(vars(args))}
    with atomic_file(out) as tmp:
        save_file(state, str(tmp), metadata=meta)
    print(f"test accuracy {acc:.4f} after {steps} steps; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
