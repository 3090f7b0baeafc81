"""VQGAN-style encoder and decoder (the layout of VAR's and HART's tokenizer).

Parameter names follow the LDM/VQGAN layout the official checkpoints use, so converted
weights load without renaming: ``down.{i}.block.{j}.{norm1,conv1,norm2,conv2,nin_shortcut}``,
``down.{i}.downsample.conv``, ``down.{last}.attn.{j}``, ``mid.{block_1,attn_1,block_2}``;
the decoder's ``up.{i}`` is resolution level ``i`` (``up.{last}`` is the lowest resolution
and runs first, ``up.0`` runs last with no upsample).
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F


def Normalize(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=1e-6, affine=True)


class Upsample2x(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Downsample2x(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 2, 0)

    def forward(self, x):
        # asymmetric pad (left 0, right 1, top 0, bottom 1) as in VQGAN
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = Normalize(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2 = Normalize(cout)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over pixels, one 1x1 conv for q, k and v."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = Normalize(c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x):  # (B, C, H, W)
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).unbind(1)  # (B, C, HW) each
        h = F.scaled_dot_product_attention(
            q.transpose(1, 2)[:, None], k.transpose(1, 2)[:, None], v.transpose(1, 2)[:, None]
        )  # (B, 1, HW, C)
        h = h[:, 0].transpose(1, 2).reshape(B, C, H, W)
        return x + self.proj_out(h)


def _mid(c: int, dropout: float, attn: bool) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(c, c, dropout)
    mid.attn_1 = AttnBlock(c) if attn else nn.Identity()
    mid.block_2 = ResnetBlock(c, c, dropout)
    return mid


class Encoder(nn.Module):
    """(B, in_channels, R, R) -> (B, z, R/ds, R/ds)."""

    def __init__(self, config):
        super().__init__()
        c = config
        n = len(c.ch_mult)
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, 1, 1)
        mult = (1,) + tuple(c.ch_mult)
        self.down = nn.ModuleList()
        for i in range(n):
            cin, cout = c.ch * mult[i], c.ch * c.ch_mult[i]
            level = nn.Module()
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            for _ in range(c.num_res_blocks):
                level.block.append(ResnetBlock(cin, cout, c.dropout))
                cin = cout
                if i == n - 1 and c.using_sa:
                    level.attn.append(AttnBlock(cout))
            if i != n - 1:
                level.downsample = Downsample2x(cout)
            self.down.append(level)
        top = c.ch * c.ch_mult[-1]
        self.mid = _mid(top, c.dropout, c.using_mid_sa)
        self.norm_out = Normalize(top)
        self.conv_out = nn.Conv2d(top, c.z_channels, 3, 1, 1)

    def forward(self, x):
        h = self.conv_in(x)
        for i, level in enumerate(self.down):
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """(B, z, r, r) -> (B, in_channels, r*ds, r*ds), not clamped."""

    def __init__(self, config):
        super().__init__()
        c = config
        n = len(c.ch_mult)
        cin = c.ch * c.ch_mult[-1]
        self.conv_in = nn.Conv2d(c.z_channels, cin, 3, 1, 1)
        self.mid = _mid(cin, c.dropout, c.using_mid_sa)
        up = [None] * n
        for i in reversed(range(n)):
            cout = c.ch * c.ch_mult[i]
            level = nn.Module()
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            for _ in range(c.num_res_blocks + 1):
                level.block.append(ResnetBlock(cin, cout, c.dropout))
                cin = cout
                if i == n - 1 and c.using_sa:
                    level.attn.append(AttnBlock(cout))
            if i != 0:
                level.upsample = Upsample2x(cout)
            up[i] = level
        self.up = nn.ModuleList(up)
        self.norm_out = Normalize(cin)
        self.conv_out = nn.Conv2d(cin, c.in_channels, 3, 1, 1)

    def forward(self, z):
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for level in reversed(self.up):
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
