"""The transformer's blocks (VAR's AdaLNSelfAttn and AdaLNBeforeHead, with HART's layout
options): attention with its static KV cache, the MLPs, the AdaLN-modulated norms.

Parameter names follow FoundationVision/VAR (see :mod:`hart.model`). Pure module: shapes in
the docstrings, device and dtype follow the inputs.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from hart import kernels
from hart.attention import attention
from hart.config import GeneratorConfig
from hart.rope import apply_rope_tables

MAX_ATTN_SCALE_LOG = math.log(100.0)  # VAR caps the learned cosine-attention scale at 100


class DropPath(nn.Module):
    """Stochastic depth on the residual branch (per sample), identity at eval."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


# ----------------------------------------------------------------------------- blocks

class SelfAttention(nn.Module):
    """Multi-head attention with q/v biases (no k bias) and optional cosine (l2-norm) attention."""

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        C, H = config.width, config.heads
        self.heads, self.head_dim = H, C // H
        self.l2_norm = config.attn_l2_norm
        self.dropout = config.dropout
        self.mat_qkv = nn.Linear(C, 3 * C, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(C))
        self.v_bias = nn.Parameter(torch.zeros(C))
        self.register_buffer("zero_k_bias", torch.zeros(C))  # persistent: VAR checkpoints hold it
        if self.l2_norm:
            # cosine attention: q, k unit vectors; q scaled by exp(scale_mul) (init 4, cap 100)
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, H, 1, 1), 4.0).log())
            self.scale = 1.0
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.proj = nn.Linear(C, C)
        self.proj_drop = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

        self.cache: tuple[torch.Tensor, torch.Tensor] | None = None  # static (B, H, L, hd) k and v

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None, start: int = 0, rope=None,
                cached: bool = False):
        """
        Args:
            x: (B, T, C) tokens at sequence positions [start, start + T).
            attn_bias: additive mask over the keys: (1 or B, 1, T, T) block-causal (+ pads) on
                the whole-sequence path; on the cached path x is whole scales ending where the
                next scale starts, so attending to the cached positions [0, start + T) is
                block-causal already, and the mask is None or (B, 1, 1, start + T) (pad keys).
            rope: prepared tables (cos, signed sin (B, 1, T, hd), perm) from
                :meth:`HARTGenerator.rope`, or None (absolute positions).
            cached: write k, v into the static cache and attend to it.
        Returns:
            (B, T, C)
        """
        B, T, C = x.shape
        bias = torch.cat([self.q_bias, self.zero_k_bias, self.v_bias])
        qkv = F.linear(x, self.mat_qkv.weight, bias).view(B, T, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, hd)
        if self.l2_norm:
            q = F.normalize(q, dim=-1) * self.scale_mul_1H11.clamp(max=MAX_ATTN_SCALE_LOG).exp()
            k = F.normalize(k, dim=-1)
        if rope is not None:
            cos, sin, perm = rope
            q, k = apply_rope_tables(q, cos.to(q.dtype), sin.to(q.dtype), perm), apply_rope_tables(
                k, cos.to(k.dtype), sin.to(k.dtype), perm)
        if cached:
            if self.cache is None:
                raise RuntimeError("the cached path needs setup_caches() first")
            ck, cv = self.cache
            end = start + T
            ck[:, :, start:end] = k  # in place: the cache never grows or moves
            cv[:, :, start:end] = v
            k, v = ck[:, :, :end], cv[:, :, :end]
        # one cast rule for both paths: attention runs in the values' dtype (the cache's when
        # cached; the autocast dtype otherwise), so the fp32 learned scale never promotes it
        q, k = q.to(v.dtype), k.to(v.dtype)
        out = attention(q, k, v, attn_bias, self.scale, self.dropout if self.training else 0.0)  # (B, H, T, hd)
        out = out.transpose(1, 2).reshape(B, T, C)
        return self.proj_drop(self.proj(out))


class SwiGLU(nn.Module):
    """HART's LlamaMLP: down(silu(gate(x)) * up(x)), no biases, hidden int(C*r*2/3 + 255)//256*256."""

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        C = config.width
        hidden = int(C * config.mlp_ratio * 2 / 3 + 255) // 256 * 256
        self.gate_proj = nn.Linear(C, hidden, bias=False)
        self.up_proj = nn.Linear(C, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, C, bias=False)
        self.drop = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


class FFN(nn.Module):
    def __init__(self, config: GeneratorConfig):
        super().__init__()
        hidden = round(config.width * config.mlp_ratio)
        self.fc1 = nn.Linear(config.width, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, config.width)
        self.drop = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class ModulatedNorm(nn.Module):
    """norm(x) * (1 + scale) + shift. ``layer``: LayerNorm without affine (VAR; fused kernel where
    one runs); ``rms``: RMSNorm with its weight (HART's ``ln_wo_grad``, which keeps one)."""

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.eps = config.norm_eps
        self.ln_wo_grad = nn.RMSNorm(config.width, eps=config.norm_eps) if config.norm == "rms" else None

    def forward(self, x, scale, shift, backend: str = "torch"):
        if self.ln_wo_grad is None:
            return kernels.adaln_layernorm(x, scale, shift, self.eps, backend)
        return kernels.modulate(self.ln_wo_grad(x), shift, scale)


def make_norm(config: GeneratorConfig, dim: int) -> nn.Module:
    """An affine norm of the configured kind (decoder_norm, context_norm)."""
    return nn.RMSNorm(dim, eps=config.norm_eps) if config.norm == "rms" else nn.LayerNorm(dim, eps=config.norm_eps)


class AdaLNBlock(nn.Module):
    """VAR's AdaLNSelfAttn: both sublayers modulated by the condition, gated residuals."""

    def __init__(self, config: GeneratorConfig, drop_path: float):
        super().__init__()
        C = config.width
        self.C = C
        self.attn = SelfAttention(config)
        self.ffn = SwiGLU(config) if config.mlp == "swiglu" else FFN(config)
        self.norm = ModulatedNorm(config)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))
        self.drop_path = DropPath(drop_path)

    def forward(self, x, cond, attn_bias, start: int = 0, backend: str = "torch", rope=None, cached: bool = False):
        """x (B, T, C), cond (B, C) -> (B, T, C). ``backend``: of the fused AdaLN-LN (hart.kernels)."""
        gamma1, gamma2, scale1, scale2, shift1, shift2 = self.ada_lin(cond).view(-1, 1, 6, self.C).unbind(2)
        h = self.attn(self.norm(x, scale1, shift1, backend), attn_bias, start, rope, cached)
        x = x + self.drop_path(h * gamma1)
        h = self.ffn(self.norm(x, scale2, shift2, backend))
        return x + self.drop_path(h * gamma2)


class AdaLNBeforeHead(nn.Module):
    def __init__(self, config: GeneratorConfig):
        super().__init__()
        C = config.width
        self.C = C
        self.norm = ModulatedNorm(config)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 2 * C))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, backend: str = "torch") -> torch.Tensor:
        scale, shift = self.ada_lin(cond).view(-1, 1, 2, self.C).unbind(2)
        return self.norm(x, scale, shift, backend)
