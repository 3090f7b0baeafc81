"""Block-causal next-scale transformer (VAR) with HART's optional residual diffusion head.

Parameter and buffer names follow FoundationVision/VAR's ``VAR`` module, so an official
``var_d{16,20,24,30}.pth`` loads into ``HARTGenerator(GeneratorConfig.from_name("var-dN"))``
strictly with no renaming (the buffers ``lvl_1L``, ``attn_bias_for_masking`` and
``blocks.i.attn.zero_k_bias`` are persistent, as in VAR; they are recomputed from the config
and loading them back is harmless).

Sequence layout (L = sum pn^2 tokens, scale k owns ``config.scale_ranges[k]``)::

    x_0        = class_emb(label) + pos_start                  (the 1x1 first scale)
    x_{1..L-1} = word_embed(teacher_inputs)                    (B, L-1, z) -> (B, L-1, C)
    x         += lvl_embed(scale of each token) + pos_1LC

A token attends to every token of its own and earlier scales. Each block is AdaLN-modulated
by cond = class_emb(label) (VAR eq. for AdaLNSelfAttn).

One forward serves training and sampling (gpt-fast's layout): without caches,
:meth:`HARTGenerator.forward_tokens` runs the whole sequence under the block-causal mask;
after :meth:`HARTGenerator.setup_caches` it runs one scale's tokens at their positions,
writing their keys and values in place into a static cache of the whole sequence's length
and attending to every position written so far. :meth:`HARTGenerator.step` is that
per-scale forward plus the head (what the sampler calls and ``--compile`` compiles). The
fused AdaLN-LayerNorm kernel is dispatched from inside the blocks (:mod:`hart.kernels`,
PyTorch reference when Triton or a GPU is missing). The model holds no sampling loop.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from hart import kernels
from hart.config import GeneratorConfig
from hart.diffusion import DiffusionHead
from hart.common.errors import UserError
from hart.common.io import PretrainedMixin

MAX_ATTN_SCALE_LOG = math.log(100.0)  # VAR caps the learned cosine-attention scale at 100


# ----------------------------------------------------------------------------- helpers

def drop_labels(labels: torch.Tensor, p: float, null_id: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """CFG training: replace each label by ``null_id`` with probability ``p`` (uniform draw).

    Args:
        labels: (B,) int64 class ids.
        generator: RNG for the draw; its device may differ from ``labels``'.
    Returns:
        (B,) labels, a new tensor.
    """
    dev = generator.device if generator is not None else labels.device
    drop = torch.rand(labels.shape, generator=generator, device=dev).to(labels.device) < p
    return torch.where(drop, torch.full_like(labels, null_id), labels)


def block_causal_bias(patch_nums) -> tuple[torch.Tensor, torch.Tensor]:
    """(lvl_1L (1, L) int64 scale index per token, attn bias (1, 1, L, L): 0 or -inf)."""
    lvl = torch.cat([torch.full((pn * pn,), k, dtype=torch.long) for k, pn in enumerate(patch_nums)])
    lvl_1L = lvl.view(1, -1)  # (1, L)
    allowed = lvl_1L.view(-1, 1) >= lvl_1L.view(1, -1)  # query scale >= key scale
    bias = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
    return lvl_1L, bias.view(1, 1, *allowed.shape)


@dataclasses.dataclass
class GeneratorOutput:
    logits: torch.Tensor  # (B, L, V)
    hidden: torch.Tensor  # (B, L, C): the last block's output, before the AdaLN head norm


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

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None, start: int = 0):
        """
        Args:
            x: (B, T, C) tokens at sequence positions [start, start + T).
            attn_bias: (1, 1, T, T) additive block-causal mask (the whole-sequence path), or
                None for the cached path: x is then whole scales ending where the next scale
                starts, so attending to the cached positions [0, start + T) is exactly
                block-causal and needs no mask.
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
        if attn_bias is None:
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
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=None if attn_bias is None else attn_bias.to(v.dtype),
            dropout_p=self.dropout if self.training else 0.0, scale=self.scale,
        )  # (B, H, T, hd)
        out = out.transpose(1, 2).reshape(B, T, C)
        return self.proj_drop(self.proj(out))


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


class AdaLNBlock(nn.Module):
    """VAR's AdaLNSelfAttn: both sublayers modulated by the condition, gated residuals."""

    def __init__(self, config: GeneratorConfig, drop_path: float):
        super().__init__()
        C = config.width
        self.C = C
        self.attn = SelfAttention(config)
        self.ffn = FFN(config)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))
        self.drop_path = DropPath(drop_path)
        self.eps = config.norm_eps

    def forward(self, x, cond, attn_bias, start: int = 0, backend: str = "torch"):
        """x (B, T, C), cond (B, C) -> (B, T, C). ``backend``: of the fused AdaLN-LN (hart.kernels)."""
        gamma1, gamma2, scale1, scale2, shift1, shift2 = self.ada_lin(cond).view(-1, 1, 6, self.C).unbind(2)
        # LN(x) (no affine) * (1 + scale) + shift, fused where a kernel can run
        h = self.attn(kernels.adaln_layernorm(x, scale1, shift1, self.eps, backend), attn_bias, start)
        x = x + self.drop_path(h * gamma1)
        h = self.ffn(kernels.adaln_layernorm(x, scale2, shift2, self.eps, backend))
        return x + self.drop_path(h * gamma2)


class AdaLNBeforeHead(nn.Module):
    def __init__(self, config: GeneratorConfig):
        super().__init__()
        C = config.width
        self.C = C
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 2 * C))
        self.eps = config.norm_eps

    def forward(self, x: torch.Tensor, cond: torch.Tensor, backend: str = "torch") -> torch.Tensor:
        scale, shift = self.ada_lin(cond).view(-1, 1, 2, self.C).unbind(2)
        return kernels.adaln_layernorm(x, scale, shift, self.eps, backend)


# ----------------------------------------------------------------------------- model

class HARTGenerator(nn.Module, PretrainedMixin):
    """Class-conditional next-scale transformer; optional residual diffusion head (``diffusion``)."""

    config_class = GeneratorConfig

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        C, L = config.width, config.seq_len
        self.num_classes = config.num_classes
        self.word_embed = nn.Linear(config.z_channels, C)
        self.class_emb = nn.Embedding(config.num_classes + 1, C)  # last row: null class (CFG)
        self.pos_start = nn.Parameter(torch.empty(1, 1, C))
        self.pos_1LC = nn.Parameter(torch.empty(1, L, C))
        self.lvl_embed = nn.Embedding(config.num_scales, C)
        lvl_1L, bias = block_causal_bias(config.patch_nums)
        self.register_buffer("lvl_1L", lvl_1L)  # (1, L)
        self.register_buffer("attn_bias_for_masking", bias)  # (1, 1, L, L)
        dpr = [config.drop_path * i / max(config.depth - 1, 1) for i in range(config.depth)]  # linear ramp
        self.blocks = nn.ModuleList(AdaLNBlock(config, p) for p in dpr)
        self.head_nm = AdaLNBeforeHead(config)
        self.head = nn.Linear(C, config.codebook_size)
        self._init_var_weights()
        # own init (xavier, zeroed AdaLN/output), after the VAR init so that one does not touch it
        self.diffusion = (
            DiffusionHead(config.z_channels, C, config.diff_width, config.diff_depth) if config.diff_head else None
        )
        # HART's decoder_norm: a learnable norm *after* hidden + word_embed(code), so the head sees
        # the drawn code (without it the code term is ~1% of the sum's RMS and is drowned out)
        self.decoder_norm = nn.LayerNorm(C, eps=config.norm_eps) if config.diff_head else None
        self.kernel_backend = "auto"  # fused kernels of the cached (sampling) path; see setup_caches

    def _init_var_weights(self, init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5, init_head: float = 0.02):
        std = math.sqrt(1 / self.config.width / 3)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.trunc_normal_(m.weight, std=std)
        for p in (self.pos_start, self.pos_1LC):
            nn.init.trunc_normal_(p, std=std)
        with torch.no_grad():
            self.head.weight.mul_(init_head)
            self.head_nm.ada_lin[-1].weight.mul_(init_adaln)
            depth_scale = math.sqrt(2 * self.config.depth)  # GPT-2 style residual scaling
            C = self.config.width
            for blk in self.blocks:
                blk.attn.proj.weight.div_(depth_scale)
                blk.ffn.fc2.weight.div_(depth_scale)
                w = blk.ada_lin[-1].weight  # rows: gamma1, gamma2 | scale1, scale2, shift1, shift2
                w[2 * C:].mul_(init_adaln)
                w[:2 * C].mul_(init_adaln_gamma)  # gates start almost closed

    @classmethod
    def from_pretrained(cls, path, device="cpu"):
        from safetensors import safe_open

        from hart.common.io import WEIGHTS_NAME, resolve_dir

        folder = resolve_dir(path)
        if cls.load_config(folder).diff_head and (folder / WEIGHTS_NAME).is_file():
            with safe_open(str(folder / WEIGHTS_NAME), "pt") as f:
                if not any(k.startswith("decoder_norm.") for k in f.keys()):
                    raise UserError(
                        f"the residual head in {folder} predates decoder_norm (the norm in the head's condition) "
                        "and cannot be used; retrain the head on its transformer: hart train --init DIR "
                        "--freeze-transformer --tokenizer DIR/tokenizer --tokens ... --out NEW")
        return super().from_pretrained(path, device)

    # ------------------------------------------------------------------ pieces for the sampler

    def drop_labels(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B,) -> (B,): labels replaced by the null class with probability ``config.cond_drop``."""
        return drop_labels(labels, self.config.cond_drop, self.config.null_class, generator)

    def condition(self, class_ids: torch.Tensor) -> torch.Tensor:
        """(B,) int64 -> (B, C) AdaLN condition (the null class id gives the unconditional one)."""
        return self.class_emb(class_ids)

    def embed_start(self, cond: torch.Tensor) -> torch.Tensor:
        """(B, C) condition -> (B, 1, C) first-scale token with level and position embeddings."""
        x = cond.unsqueeze(1) + self.pos_start  # (B, 1, C)
        return x + self.lvl_embed(self.lvl_1L[:, :1]) + self.pos_1LC[:, :1]

    def embed_inputs(self, inputs: torch.Tensor, start: int) -> torch.Tensor:
        """(B, T, z) teacher / next-scale inputs at positions [start, start+T) -> (B, T, C); start >= 1."""
        T = inputs.shape[1]
        x = self.word_embed(inputs.to(self.word_embed.weight.dtype))  # (B, T, C)
        return x + self.lvl_embed(self.lvl_1L[:, start:start + T]) + self.pos_1LC[:, start:start + T]

    def setup_caches(self, batch: int, dtype=None, device=None, kernels: str = "auto") -> None:
        """Preallocate the static K/V cache of every block, (batch, H, L, hd), for :meth:`step`.

        Reused while batch, dtype and device match. ``kernels`` picks the fused-kernel backend
        of the cached path (``"auto"``, ``"torch"``, ``"triton"``; see :mod:`hart.kernels`).
        """
        w = self.word_embed.weight
        dtype, device = dtype or w.dtype, torch.device(device) if device is not None else w.device
        c = self.config
        shape = (batch, c.heads, c.seq_len, c.head_dim)
        self.kernel_backend = kernels
        first = self.blocks[0].attn.cache
        if first is not None and tuple(first[0].shape) == shape and first[0].dtype == dtype and first[0].device == device:
            return
        for blk in self.blocks:
            blk.attn.cache = (torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))

    def clear_caches(self) -> None:
        """Free the caches."""
        for blk in self.blocks:
            blk.attn.cache = None

    @property
    def has_caches(self) -> bool:
        return self.blocks[0].attn.cache is not None

    def forward_tokens(self, x: torch.Tensor, cond: torch.Tensor, start: int = 0, cached: bool = False) -> torch.Tensor:
        """The transformer blocks on tokens at sequence positions [start, start + T): the one
        forward of both training and sampling.

        ``cached=False``: the whole prefix (start = 0) under the block-causal mask (training,
        teacher forcing). ``cached=True`` (after :meth:`setup_caches`): whole scales, written
        into the static cache, attending to every position written so far (sampling).

        Args:
            x: (B, T, C) embedded tokens (from :meth:`embed_start` / :meth:`embed_inputs`).
            cond: (B, C) AdaLN condition.
        Returns:
            (B, T, C) the last block's output (before the head norm; see :meth:`head_logits`).
        """
        T = x.shape[1]
        backend = "torch"  # the training path needs autograd: the PyTorch reference
        if cached:
            bias, backend = None, self.kernel_backend
        else:
            if start:
                raise ValueError("forward_tokens without the cache runs the whole prefix: start must be 0")
            bias = self.attn_bias_for_masking[:, :, :T, :T]
        for blk in self.blocks:
            x = blk(x, cond, bias, start, backend)
        return x

    def head_logits(self, h: torch.Tensor, cond: torch.Tensor, backend: str = "torch") -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, C) block output, (B, C) cond -> (logits (B, T, V), normed hidden (B, T, C))."""
        hidden = self.head_nm(h, cond, backend)
        return self.head(hidden), hidden

    def step(self, x: torch.Tensor, cond: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The sampler's per-scale forward: (B, T, C) tokens of one scale -> (logits (B, T, V),
        the last block's output (B, T, C)). Needs :meth:`setup_caches`."""
        h = self.forward_tokens(x, cond, start, cached=True)
        return self.head_logits(h, cond, self.kernel_backend)[0], h

    def diffusion_cond(self, hidden_last: torch.Tensor, code_vectors: torch.Tensor) -> torch.Tensor:
        """Per-token condition of the diffusion head (HART):
        decoder_norm(hidden + word_embed(codebook vector of the drawn id)).

        Args:
            hidden_last: (B, N, C) :attr:`GeneratorOutput.hidden` (last block output) of last-scale tokens.
            code_vectors: (B, N, z) codebook vectors of the chosen last-scale ids.
        Returns:
            (B, N, C)
        """
        h = hidden_last + self.word_embed(code_vectors.to(self.word_embed.weight.dtype))
        return self.decoder_norm(h)

    # ------------------------------------------------------------------ teacher forcing

    def forward(
        self, class_ids: torch.Tensor, teacher_inputs: torch.Tensor, cond_drop_mask: torch.Tensor | None = None
    ) -> GeneratorOutput:
        """Teacher-forced pass over the whole sequence.

        Args:
            class_ids: (B,) int64 labels in [0, num_classes] (num_classes = null class).
            teacher_inputs: (B, L-1, z) inputs of scales 1..K-1 (area-downsampled f_hat).
            cond_drop_mask: optional (B,) bool; True rows use the null class (CFG dropout
                drawn by the caller, e.g. with :func:`drop_labels`).
        Returns:
            :class:`GeneratorOutput` with logits (B, L, V) and hidden (B, L, C).
        """
        if cond_drop_mask is not None:
            class_ids = torch.where(cond_drop_mask, torch.full_like(class_ids, self.config.null_class), class_ids)
        cond = self.condition(class_ids)  # (B, C)
        x = torch.cat([self.embed_start(cond), self.embed_inputs(teacher_inputs, 1)], dim=1)  # (B, L, C)
        h = self.forward_tokens(x, cond, 0)
        logits, _ = self.head_logits(h, cond)
        return GeneratorOutput(logits=logits, hidden=h)
