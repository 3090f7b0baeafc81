"""Block-causal next-scale transformer (VAR) with HART's optional residual diffusion head.

Parameter and buffer names follow FoundationVision/VAR's ``VAR`` module, so an official
``var_d{16,20,24,30}.pth`` loads into ``HARTGenerator(GeneratorConfig.from_name("var-dN"))``
strictly with no renaming (the buffers ``lvl_1L``, ``attn_bias_for_masking`` and
``blocks.i.attn.zero_k_bias`` are persistent, as in VAR; they are recomputed from the config
and loading them back is harmless). HART's text-to-image release loads after four renames
(:func:`hart.convert_hart.hart_to_ours`); text models keep neither ``lvl_1L`` nor the mask in their
weights and build the mask only for a whole-sequence forward (:meth:`HARTGenerator.causal_bias`).

Sequence layout (L = sum pn^2 tokens, scale k owns ``config.scale_ranges[k]``)::

    x_0        = class_emb(label) + pos_start                  (the 1x1 first scale)
    x_{1..L-1} = word_embed(teacher_inputs)                    (B, L-1, z) -> (B, L-1, C)
    x         += lvl_embed(scale of each token) + pos_1LC

A token attends to every token of its own and earlier scales. Each block is AdaLN-modulated
by cond = class_emb(label) (VAR eq. for AdaLNSelfAttn).

Text models (``config.cond == "text"``, HART's text-to-image layout) replace the 1x1 token by
a prefix of P = ``context_tokens`` embedded prompt tokens at level 0 (they see each other);
scale k >= 1 then sits at ``config.token_ranges[k]`` of the length S = P + L - 1 sequence,
and the 1x1 scale's logits are read at the last prefix position. Everything the blocks need
besides the tokens (AdaLN vector, prefix, pad mask, RoPE positions) travels in one
:class:`hart.condition.Condition`, made by :meth:`HARTGenerator.condition` for either family.

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

from hart import attention
from hart.blocks import AdaLNBeforeHead, AdaLNBlock, SwiGLU, make_norm
from hart.condition import Condition, Conditioning
from hart.config import GeneratorConfig
from hart.heads import TimestepEmbedder, build_head, from_target, head_condition, metric_inverse, to_target
from hart.rope import scale_coords
from hart.common.errors import UserError
from hart.common.models import ConfigMixin, HARTModelMixin, ModelMixin  # noqa: F401 (diffusers finds the mixins here)

# ----------------------------------------------------------------------------- helpers

def level_index(patch_nums, prefix: int = 1) -> torch.Tensor:
    """(1, S) int64 level of each position: the first ``prefix`` tokens are level 0 (the 1x1
    scale, or a text prefix), then scales 1..K-1."""
    lvl = torch.cat([torch.zeros(prefix, dtype=torch.long)]
                    + [torch.full((pn * pn,), k, dtype=torch.long) for k, pn in enumerate(patch_nums) if k])
    return lvl.view(1, -1)


def causal_from_levels(lvl_1L: torch.Tensor) -> torch.Tensor:
    """(1, S) levels -> (1, 1, S, S) additive mask: 0 where the query's level >= the key's, else -inf."""
    lvl = lvl_1L.view(-1)
    bias = torch.zeros(lvl.numel(), lvl.numel(), device=lvl.device)
    return bias.masked_fill(lvl.view(-1, 1) < lvl.view(1, -1), float("-inf")).view(1, 1, lvl.numel(), -1)


@dataclasses.dataclass
class GeneratorOutput:
    logits: torch.Tensor  # (B, L, V): position 0 = the 1x1 scale (read at the prefix's last token)
    hidden: torch.Tensor  # (B, L, C): the last block's output at those positions, before the head norm


# ----------------------------------------------------------------------------- model

class HARTGenerator(Conditioning, HARTModelMixin):
    """Next-scale transformer, class- or text-conditioned; optional residual diffusion head (``diffusion``)."""

    config_class = GeneratorConfig

    def __init__(self, config: GeneratorConfig | None = None, **fields):
        super().__init__(config, **fields)
        config = self.config
        C, S, P = config.width, config.total_len, config.prefix_len
        self.word_embed = nn.Linear(config.z_channels, C)
        if config.is_text:
            # HART: RMSNorm + Linear(D, C) on the encoder tokens; they form the prefix
            self.context_norm = nn.RMSNorm(config.context_dim, eps=config.norm_eps) if config.context_norm else None
            self.context_embed = nn.Linear(config.context_dim, C)
        else:
            self.class_emb = nn.Embedding(config.num_classes + 1, C)  # last row: null class (CFG)
        if config.pos == "absolute":
            self.pos_start = nn.Parameter(torch.empty(1, P, C))
            self.pos_1LC = nn.Parameter(torch.empty(1, S, C))
        else:  # RoPE: image coordinates of every position (the prefix's unused for text models)
            coords = torch.cat([torch.zeros(P, 2), scale_coords(config.patch_nums, first=1)])
            self.register_buffer("rope_coords", coords, persistent=False)  # (S, 2)
        # level embedding: a table (VAR), or HART's option, a sinusoidal MLP of the level index
        self.lvl_embed = nn.Embedding(config.num_scales, C) if config.level_embed == "table" else TimestepEmbedder(C)
        lvl_1L = level_index(config.patch_nums, P)
        # VAR checkpoints hold these two buffers (persistent for class models); a text model's
        # mask is made when a whole-sequence forward needs it, never stored (HART's 1024px one
        # is 9750^2 floats, 380 MB, and sampling never uses it)
        self.register_buffer("lvl_1L", lvl_1L, persistent=not config.is_text)  # (1, S)
        if not config.is_text:
            self.register_buffer("attn_bias_for_masking", causal_from_levels(lvl_1L))  # (1, 1, S, S)
        dpr = [config.drop_path * i / max(config.depth - 1, 1) for i in range(config.depth)]  # linear ramp
        self.blocks = nn.ModuleList(AdaLNBlock(config, p) for p in dpr)
        self.head_nm = AdaLNBeforeHead(config)
        self.head = nn.Linear(C, config.codebook_size)
        self._init_var_weights()
        # own init (xavier, zeroed AdaLN/output), after the VAR init so that one does not touch it
        self.diffusion = build_head(config.head, config.z_channels, C, config.patch_nums[-1]) if config.head else None
        # HART's decoder_norm: a learnable norm *after* hidden + word_embed(code), so the head sees
        # the drawn code (without it the code term is ~1% of the sum's RMS and is drowned out)
        self.decoder_norm = make_norm(config, C) if config.head else None
        if config.head and config.head.metric == "decoder":  # see to_target; measured by `hart train`
            self.register_buffer("residual_metric", torch.eye(config.z_channels))  # (z, z)
        self.kernel_backend = "auto"  # fused kernels of the cached (sampling) path; see setup_caches
        self.attention_impl = "sdpa"  # whole-sequence attention; see set_attention
        self._block_masks: dict = {}

    def set_attention(self, impl: str) -> None:
        """The whole-sequence (training) attention: ``"sdpa"`` (a dense additive mask) or
        ``"flex"`` (FlexAttention with a block-causal ``BlockMask`` that skips the hidden
        blocks; its backward needs a GPU). Rows with masked pad keys (text models with
        ``mask_pads``) always take SDPA. A runtime choice, not part of the config."""
        if impl not in attention.ATTENTION_IMPLS:
            raise ValueError(f"unknown attention {impl!r}; choose from {attention.ATTENTION_IMPLS}")
        if impl == "flex" and not attention.flex_available():
            raise ValueError("this PyTorch has no FlexAttention (2.5 or later); use sdpa")
        self.attention_impl = impl

    def block_mask(self, T: int, device) -> object:
        """The FlexAttention ``BlockMask`` of :meth:`causal_bias` (T), made once per length and device."""
        key = (T, str(device))
        if key not in self._block_masks:
            allowed = (self.causal_bias(T)[0, 0] == 0).to(device)  # (T, T) query may see key
            self._block_masks[key] = attention.block_mask(allowed)
        return self._block_masks[key]

    def _init_var_weights(self, init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5, init_head: float = 0.02):
        std = math.sqrt(1 / self.config.width / 3)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.trunc_normal_(m.weight, std=std)
        if self.config.pos == "absolute":
            for p in (self.pos_start, self.pos_1LC):
                nn.init.trunc_normal_(p, std=std)
        with torch.no_grad():
            self.head.weight.mul_(init_head)
            self.head_nm.ada_lin[-1].weight.mul_(init_adaln)
            depth_scale = math.sqrt(2 * self.config.depth)  # GPT-2 style residual scaling
            C = self.config.width
            for blk in self.blocks:
                blk.attn.proj.weight.div_(depth_scale)
                (blk.ffn.down_proj if isinstance(blk.ffn, SwiGLU) else blk.ffn.fc2).weight.div_(depth_scale)
                w = blk.ada_lin[-1].weight  # rows: gamma1, gamma2 | scale1, scale2, shift1, shift2
                w[2 * C:].mul_(init_adaln)
                w[:2 * C].mul_(init_adaln_gamma)  # gates start almost closed

    @classmethod
    def from_pretrained(cls, path, device="cpu", **hub_kwargs):
        from safetensors import safe_open

        from hart.common.io import WEIGHTS_NAME, resolve_dir

        folder = resolve_dir(path)
        weights = folder / WEIGHTS_NAME
        if cls.load_config(folder).head and weights.is_file():
            try:
                with safe_open(str(weights), "pt") as f:
                    keys = list(f.keys())
            except Exception as e:  # safetensors raises its own error types on a damaged file
                raise UserError(f"cannot read {weights}: {e}") from None
            if not any(k.startswith("decoder_norm.") for k in keys):
                raise UserError(
                    f"the residual head in {folder} predates decoder_norm (the norm in the head's condition) "
                    "and cannot be used; retrain the head on its transformer: hart train --init DIR "
                    "--freeze-transformer --tokenizer DIR/tokenizer --tokens ... --out NEW")
        return super().from_pretrained(path, device, **hub_kwargs)

    # ------------------------------------------------------------------ pieces for the sampler
    # (the condition of a batch's rows: hart.condition.Conditioning)

    def level_embedding(self, start: int, end: int) -> torch.Tensor:
        """(1, end - start, C) level embeddings of sequence positions [start, end)."""
        lvl = self.lvl_1L[:, start:end]
        if isinstance(self.lvl_embed, nn.Embedding):
            return self.lvl_embed(lvl)
        return self.lvl_embed(lvl.reshape(-1)).unsqueeze(0)  # HART: TimestepEmbedder(level index)

    def causal_bias(self, T: int) -> torch.Tensor:
        """(1, 1, T, T) block-causal additive mask of the first T positions (0 / -inf)."""
        if not self.config.is_text:
            return self.attn_bias_for_masking[:, :, :T, :T]
        return causal_from_levels(self.lvl_1L[:, :T])

    def _embed_level0(self, x: torch.Tensor) -> torch.Tensor:
        """(B, P, C) level-0 tokens + level (+ absolute position) embeddings."""
        P = x.shape[1]
        x = x + self.level_embedding(0, P)
        if self.config.pos == "absolute":
            x = x + self.pos_start + self.pos_1LC[:, :P]
        return x

    def embed_inputs(self, inputs: torch.Tensor, start: int) -> torch.Tensor:
        """(B, T, z) teacher / next-scale inputs at sequence positions [start, start+T) -> (B, T, C);
        start >= P (see ``config.token_ranges``)."""
        T = inputs.shape[1]
        x = self.word_embed(inputs.to(self.word_embed.weight.dtype))  # (B, T, C)
        x = x + self.level_embedding(start, start + T)
        if self.config.pos == "absolute":
            x = x + self.pos_1LC[:, start:start + T]
        return x

    def setup_caches(self, batch: int, dtype=None, device=None, kernels: str = "auto") -> None:
        """Preallocate the static K/V cache of every block, (batch, H, L, hd), for :meth:`step`.

        Reused while batch, dtype and device match. ``kernels`` picks the fused-kernel backend
        of the cached path (``"auto"``, ``"torch"``, ``"triton"``; see :mod:`hart.kernels`).
        """
        w = self.word_embed.weight
        dtype, device = dtype or w.dtype, torch.device(device) if device is not None else w.device
        c = self.config
        shape = (batch, c.heads, c.total_len, c.head_dim)
        self.kernel_backend = kernels
        first = self.blocks[0].attn.cache
        if first is not None and tuple(first[0].shape) == shape and first[0].dtype == dtype and first[0].device == device:
            return
        for blk in self.blocks:
            blk.attn.cache = (torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))
            if device.type == "cuda":  # fixed addresses: CUDA graphs (engine compile) write into them in place
                from torch import _dynamo

                for t in blk.attn.cache:
                    _dynamo.mark_static_address(t)

    def clear_caches(self) -> None:
        """Free the caches."""
        for blk in self.blocks:
            blk.attn.cache = None

    @property
    def has_caches(self) -> bool:
        return self.blocks[0].attn.cache is not None

    def forward_tokens(self, x: torch.Tensor, cond: Condition, start: int = 0, cached: bool = False) -> torch.Tensor:
        """The transformer blocks on tokens at sequence positions [start, start + T): the one
        forward of both training and sampling.

        ``cached=False``: the whole prefix (start = 0) under the block-causal mask (training,
        teacher forcing). ``cached=True`` (after :meth:`setup_caches`): whole scales, written
        into the static cache, attending to every position written so far (sampling).

        Args:
            x: (B, T, C) embedded tokens (``cond.prefix`` / :meth:`embed_inputs`).
            cond: the rows' :class:`Condition`.
        Returns:
            (B, T, C) the last block's output (before the head norm; see :meth:`head_logits`).
        """
        T = x.shape[1]
        backend = "torch"  # the training path needs autograd: the PyTorch reference
        end = start + T
        pad = cond.key_bias
        if cached:
            backend = self.kernel_backend
            bias = None if pad is None else F.pad(pad, (0, end - pad.shape[-1]))  # (B, 1, 1, end)
        else:
            if start:
                raise ValueError("forward_tokens without the cache runs the whole prefix: start must be 0")
            if self.attention_impl == "flex" and pad is None:
                bias = self.block_mask(T, x.device)
            else:
                bias = self.causal_bias(T)
                if pad is not None:
                    bias = bias + F.pad(pad, (0, T - pad.shape[-1]))  # (B, 1, T, T)
        rope = self.rope(cond, start, end)
        for blk in self.blocks:
            x = blk(x, cond.vec, bias, start, backend, rope, cached)
        return x

    def head_logits(self, h: torch.Tensor, cond: torch.Tensor, backend: str = "torch") -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, C) block output, (B, C) cond (a :class:`Condition`'s ``head_cond``) -> (logits
        (B, T, V), normed hidden (B, T, C))."""
        hidden = self.head_nm(h, cond, backend)
        return self.head(hidden), hidden

    def step(self, x: torch.Tensor, cond: Condition, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The sampler's per-scale forward: (B, T, C) tokens of one scale -> (logits (B, T', V),
        the last block's output (B, T', C)), T' = T except for a text prefix, whose last
        position alone predicts the 1x1 scale (T' = 1). Needs :meth:`setup_caches`."""
        h = self.forward_tokens(x, cond, start, cached=True)
        if start == 0:  # the level-0 tokens: the last one predicts the 1x1 scale
            h = h[:, -1:]
        return self.head_logits(h, cond.head_cond, self.kernel_backend)[0], h

    def to_target(self, residual: torch.Tensor) -> torch.Tensor:
        """(..., z) residual tokens in latent units -> the head's target units (:func:`hart.heads.to_target`)."""
        return to_target(residual, getattr(self, "residual_metric", None), self.config.target_scale)

    def from_target(self, target: torch.Tensor, inverse: torch.Tensor | None = None) -> torch.Tensor:
        """The inverse of :meth:`to_target`: (..., z) head draws -> latent units (``inverse``: the
        metric's inverse made beforehand, :meth:`target_inverse`)."""
        return from_target(target, getattr(self, "residual_metric", None), self.config.target_scale, inverse)

    def target_inverse(self) -> torch.Tensor | None:
        """The decoder metric's inverse (z, z) float64 where the head has one, else None."""
        metric = getattr(self, "residual_metric", None)
        return None if metric is None else metric_inverse(metric)

    def diffusion_cond(self, hidden_last: torch.Tensor, code_vectors: torch.Tensor,
                       f_hat: torch.Tensor | None = None) -> torch.Tensor:
        """The head's per-token condition (:func:`hart.heads.head_condition`) of the last-scale
        tokens' block output (B, N, C) and their drawn codebook vectors (B, N, z); a map head
        also needs f_hat (B, z, n, n) of the drawn ids. -> (B, N, C), or (B, N, C + z)."""
        code = self.word_embed(code_vectors.to(self.word_embed.weight.dtype))
        if self.config.head.mix != "map":
            return head_condition(hidden_last, code, self.decoder_norm)
        if f_hat is None:
            raise ValueError("a map head is conditioned on f_hat; pass the drawn ids' discrete latent")
        return head_condition(hidden_last, code, self.decoder_norm, f_hat, self.config.stats.fhat_scale)

    # ------------------------------------------------------------------ teacher forcing

    def forward(self, inputs, teacher_inputs: torch.Tensor, cond_drop_mask: torch.Tensor | None = None) -> GeneratorOutput:
        """Teacher-forced pass over the whole sequence.

        Args:
            inputs: condition inputs (see :meth:`condition`): (B,) class ids, or (tokens, mask).
            teacher_inputs: (B, L-1, z) inputs of scales 1..K-1 (area-downsampled f_hat).
            cond_drop_mask: optional (B,) bool; True rows get the null condition (CFG dropout
                drawn by the caller, e.g. a uniform draw < ``config.training.cond_drop``).
        Returns:
            :class:`GeneratorOutput` with logits (B, L, V) and hidden (B, L, C).
        """
        cond = self.condition(inputs, cond_drop_mask)
        P = self.config.prefix_len
        x = torch.cat([cond.prefix, self.embed_inputs(teacher_inputs, P)], dim=1)  # (B, S, C)
        h = self.forward_tokens(x, cond, 0)[:, P - 1:]  # (B, L, C): the 1x1 scale read at P - 1
        logits, _ = self.head_logits(h, cond.head_cond)
        return GeneratorOutput(logits=logits, hidden=h)
