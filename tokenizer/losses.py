"""Tokenizer training losses: reconstruction, PatchGAN hinge, optional LPIPS.

LPIPS needs VGG16 + LPIPS' linear-layer weights, which cannot be downloaded here. It runs
only when the user gives a weights file (``--lpips-weights``): one ``.safetensors`` or
``.pth`` holding torchvision's ``vgg16().features`` keys (``features.{N}.weight/bias``) and
the lpips package's ``lin{0..4}.model.1.weight``.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from hart.common.errors import UserError


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in [-1, 1] (peak-to-peak 2). (B, ...) -> (B,)."""
    mse = (x.float().clamp(-1, 1) - y.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-10))


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 + L2."""
    return F.l1_loss(recon, target) + F.mse_loss(recon, target)


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix NLayerDiscriminator, BatchNorm): ndf 64, n_layers 3 as in HART's tokenizer."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False),
                       nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
        self.main = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x):  # (B, 3, R, R) -> (B, 1, r, r) patch logits
        return self.main(x)


class FeatureDiscriminator(nn.Module):
    """A discriminator on frozen VGG16 features (after Projected GAN, Sauer et al. 2021): each
    image is judged by the channel means and standard deviations of the LPIPS network's relu1_2,
    relu2_2, relu3_3 and relu4_3 maps (1,920 numbers), standardised with real images' statistics
    (``fit``, once, before training; buffers, so they travel with the discriminator's state),
    through a two-layer MLP. A linear probe on these numbers tells real images from the shipped
    tokenizer's 33 dB decodes on 65% of held-out images, where a pixel PatchGAN learns nothing
    (docs/experiments.md, "a discriminator for the decoder"). The VGG16 is held outside the module's parameters and
    state (frozen, never saved with the discriminator); gradients still flow through it to the
    decoder. Input in [-1, 1], put on the 8-bit grid first (real images lie on it).
    (B, 3, R, R) -> (B, 1) logits."""

    TAPS = (0, 1, 2, 3)

    def __init__(self, lpips: "LPIPS", width: int = 256):
        super().__init__()
        object.__setattr__(self, "net", lpips)  # not a submodule: no parameters, no state_dict keys
        dim = 2 * sum((64, 128, 256, 512, 512)[t] for t in self.TAPS)
        self.register_buffer("mu", torch.zeros(dim))
        self.register_buffer("sd", torch.ones(dim))
        self.head = nn.Sequential(nn.Linear(dim, width), nn.LeakyReLU(0.2), nn.Linear(width, 1))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) -> (B, dim): per tapped map, the channel means, then the channel stds."""
        f = self.net.taps(to_8bit_st(x))
        maps = [f[t].float() for t in self.TAPS]
        return torch.cat([m.mean((2, 3)) for m in maps] + [m.std((2, 3)) for m in maps], 1)

    @torch.no_grad()
    def fit(self, images: torch.Tensor, batch: int = 256) -> None:
        """Standardise with these real images' pooled features (mean and std of each number)."""
        p = torch.cat([self.pooled(images[i:i + batch]) for i in range(0, len(images), batch)])
        self.mu.copy_(p.mean(0))
        self.sd.copy_(p.std(0) + 1e-6)

    def forward(self, x):
        return self.head((self.pooled(x) - self.mu) / self.sd)


def to_8bit_st(x: torch.Tensor) -> torch.Tensor:
    """x in [-1, 1] rounded to the 256 levels of an 8-bit image, straight-through: real images
    lie on that grid, so a critic must not be able to tell a decode by its being off it."""
    q = ((x.float() + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1
    return x + (q - x).detach()


def laplacian_energy(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [-1, 1] -> (B,) mean squared 3x3 Laplacian of the channel mean: the
    image's fine detail (blur lowers it, added detail or noise raises it)."""
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=x.dtype, device=x.device)
    return F.conv2d(x.mean(1, keepdim=True), k.view(1, 1, 3, 3)).pow(2).mean(dim=(1, 2, 3))


def sharpness_loss(recon: torch.Tensor, target: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Mean over the batch of the squared log ratio of each reconstruction's Laplacian energy
    to its image's: zero when the decode has the image's amount of fine detail, whatever the
    detail is. L1 + L2 alone reward blur (E[x | latent] is smoother than x); a critic alone
    over-sharpened (docs/experiments.md); this term holds the amount in between."""
    r, t = laplacian_energy(recon.float()), laplacian_energy(target.float())
    return (torch.log(r + eps) - torch.log(t + eps)).pow(2).mean()


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1 - real_logits.float()).mean() + F.relu(1 + fake_logits.float()).mean())


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.float().mean()


# ----------------------------------------------------------------------------- LPIPS

_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_LPIPS_TAPS = (3, 8, 15, 22, 29)  # features index of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3


class LPIPS(nn.Module):
    """LPIPS (Zhang et al. 2018) with VGG16 features, frozen. Input in [-1, 1]."""

    def __init__(self):
        super().__init__()
        layers, c = [], 3
        for v in _VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, 1, 1), nn.ReLU(inplace=False)]
                c = v
        self.features = nn.Sequential(*layers)
        self.lins = nn.ModuleList(nn.Conv2d(ch, 1, 1, bias=False) for ch in (64, 128, 256, 512, 512))
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    @classmethod
    def from_file(cls, path) -> "LPIPS":
        path = Path(path)
        if not path.is_file():
            raise UserError(f"LPIPS weights file {path} not found")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            from hart.common.io import load_state

            state = load_state(path)
        return cls.from_state(state, str(path))

    @classmethod
    def from_state(cls, state: dict, where: str = "the LPIPS weights") -> "LPIPS":
        """The file's key layout (torchvision's ``features.N.*``, lpips' ``linK.model.1.weight``)
        -> a loaded model; missing or misshapen keys are refused in one line naming ``where``."""
        model = cls()
        remap = {}
        for k, v in state.items():
            if k.startswith("lin") and k.endswith(".model.1.weight"):
                remap[f"lins.{int(k[3])}.weight"] = v
            elif k.startswith("features."):
                remap[k] = v
        from hart.common.io import check_state_matches

        check_state_matches(model.state_dict(), remap, where)
        model.load_state_dict(remap)
        return model

    def taps(self, x):
        """(B, 3, H, W) in [-1, 1] -> the five tapped feature maps."""
        h, out = (x - self.shift) / self.scale, []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in _LPIPS_TAPS:
                out.append(h)
            if i >= _LPIPS_TAPS[-1]:
                break
        return out

    def forward(self, x, y):  # (B, 3, H, W) x2 -> (B,)
        d = 0
        for lin, fx, fy in zip(self.lins, self.taps(x), self.taps(y)):
            fx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fy = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            d = d + lin((fx - fy) ** 2).mean((2, 3))
        return d.flatten()
