"""What the transformer needs besides the tokens: the condition of a batch's rows.

Both families end in one :class:`Condition`: a class model's is the class embedding (the
AdaLN vector and the 1x1 level-0 token); a text model's is HART's layout, P =
``context_tokens`` encoder tokens embedded as a level-0 prefix, pooled into the AdaLN vector,
with their pad mask and RoPE positions. :class:`Conditioning` is the part of
:class:`hart.model.HARTGenerator` that makes it (condition inputs, the null inputs of
classifier-free guidance, CFG dropout, the RoPE tables of a run of positions); it uses the
generator's own embeddings (``class_emb``, ``context_embed``, ``context_norm``, ``rope_coords``)
and level-0 embedding, which keep VAR's and HART's parameter names.
"""
from __future__ import annotations

import dataclasses

import torch

from hart.rope import rope_1d, rope_2d, rotation


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


@dataclasses.dataclass
class Condition:
    """Everything the transformer needs besides the tokens, for B rows (either family).

    vec:        (B, C) AdaLN condition of the blocks (class embedding, or the pooled embedded prefix)
    prefix:     (B, P, C) the embedded level-0 tokens (with level / position embeddings)
    key_bias:   (B, 1, 1, P) additive 0 / -inf on the prefix's pad keys, or None (no masking)
    prefix_pos: (B, P) 1D RoPE positions of a text prefix, or None
    offset:     (B,) the 2D RoPE offset of image tokens (the last prefix position), or None (0)
    head_vec:   (B, C) AdaLN condition of the norm before the logits head when it is pooled
                otherwise than ``vec`` (``config.head_norm_pool``), or None (``vec``)
    """

    vec: torch.Tensor
    prefix: torch.Tensor
    key_bias: torch.Tensor | None = None
    prefix_pos: torch.Tensor | None = None
    offset: torch.Tensor | None = None
    head_vec: torch.Tensor | None = None

    @property
    def head_cond(self) -> torch.Tensor:
        """(B, C) the AdaLN condition of the head norm (:meth:`HARTGenerator.head_logits`)."""
        return self.vec if self.head_vec is None else self.head_vec


class Conditioning:
    """Condition inputs -> :class:`Condition`, for :class:`hart.model.HARTGenerator` (a mixin:
    it reads the generator's ``config`` and embeddings)."""

    def drop_labels(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B,) -> (B,): labels replaced by the null class with probability ``config.training.cond_drop``."""
        return drop_labels(labels, self.config.training.cond_drop, self.config.null_class, generator)

    def null_inputs(self, batch: int, device=None):
        """The unconditional inputs of ``batch`` rows: the null class, or HART's null context
        (all-zero tokens; only the first position counts as a token, so nothing is padding-only)."""
        c, device = self.config, device or self.word_embed.weight.device
        if not c.is_text:
            return torch.full((batch,), c.null_class, dtype=torch.long, device=device)
        mask = torch.zeros(batch, c.context_tokens, dtype=torch.bool, device=device)
        mask[:, 0] = True
        return torch.zeros(batch, c.context_tokens, c.context_dim, device=device), mask

    def with_null(self, inputs):
        """Condition inputs followed by as many null rows (the CFG batch: conditional rows first)."""
        if not self.config.is_text:
            return torch.cat([inputs, self.null_inputs(inputs.shape[0], inputs.device)])
        tokens, mask = inputs
        nt, nm = self.null_inputs(tokens.shape[0], tokens.device)
        return torch.cat([tokens, nt.to(tokens.dtype)]), torch.cat([mask, nm])

    def condition(self, inputs, drop: torch.Tensor | None = None) -> Condition:
        """Condition inputs -> :class:`Condition` (the one entry point for both families).

        Args:
            inputs: class models: (B,) int64 ids in [0, num_classes] (num_classes = null);
                text models: ``(tokens (B, T, D), mask (B, T) bool)`` from :mod:`hart.text`.
            drop: optional (B,) bool; True rows get the null condition (CFG dropout).
        """
        c = self.config
        if not c.is_text:
            ids = inputs
            if drop is not None:
                ids = torch.where(drop, torch.full_like(ids, c.null_class), ids)
            vec = self.class_emb(ids)  # (B, C)
            x = vec.unsqueeze(1)
            return Condition(vec=vec, prefix=self._embed_level0(x))
        tokens, mask = inputs
        if tokens.shape[1:] != (c.context_tokens, c.context_dim) or mask.shape != tokens.shape[:2]:
            raise ValueError(f"context must be (B, {c.context_tokens}, {c.context_dim}) with a (B, "
                             f"{c.context_tokens}) mask, got {tuple(tokens.shape)} and {tuple(mask.shape)}")
        mask = mask.bool()
        if drop is not None:
            nt, nm = self.null_inputs(tokens.shape[0], tokens.device)
            tokens = torch.where(drop.view(-1, 1, 1), nt.to(tokens.dtype), tokens)
            mask = torch.where(drop.view(-1, 1), nm, mask)
        if c.mask_pads:
            tokens = tokens * mask.unsqueeze(-1).to(tokens.dtype)  # a pad's content never enters
        t = tokens.to(self.context_embed.weight.dtype)
        ctx = self.context_embed(self.context_norm(t) if self.context_norm is not None else t)  # (B, T, C)
        if c.context_pool == "max":
            pooled = ctx.masked_fill(~mask.unsqueeze(-1), float("-inf")) if c.mask_pads else ctx
            vec = pooled.amax(1)
        else:  # the mean over real tokens (HART's "avg" uses the mask too)
            w = mask.unsqueeze(-1).to(ctx.dtype)
            vec = (ctx * w).sum(1) / w.sum(1).clamp(min=1)
        # HART's head norm pools apart from the blocks: an unmasked max over every position
        head_vec = ctx.amax(1) if c.head_norm_pool == "max_unmasked" else None
        pos = mask.long().cumsum(1) - 1  # HART: cumsum(mask) - 1, so -1 at left pads
        key_bias = None
        if c.mask_pads:  # pads are never attended to: their positions do not matter, kept >= 0
            pos = pos.clamp(min=0)
            key_bias = torch.zeros(mask.shape, dtype=ctx.dtype, device=ctx.device).masked_fill(~mask, float("-inf"))
            key_bias = key_bias.view(mask.shape[0], 1, 1, -1)
        return Condition(vec=vec, prefix=self._embed_level0(ctx), key_bias=key_bias, prefix_pos=pos,
                         offset=pos[:, -1], head_vec=head_vec)

    def rope(self, cond: Condition, start: int, end: int):
        """RoPE tables of positions [start, end) for every block: (cos, signed sin (B, 1, T, hd),
        perm) (see :func:`hart.rope.apply_rope_tables`), or None (absolute positions)."""
        c = self.config
        if c.pos != "rope":
            return None
        B, P = cond.vec.shape[0], c.prefix_len
        coords = self.rope_coords[start:end].unsqueeze(0).expand(B, -1, -1)  # (B, T, 2)
        if cond.offset is not None:
            coords = coords + cond.offset.view(B, 1, 1).float()
        n_text = max(0, min(end, P) - start) if cond.prefix_pos is not None else 0
        if n_text == 0:
            cos, sin = rope_2d(coords, c.head_dim, c.rope_theta)
        elif c.rope_2d == "axial":  # text position p at (p, p): one rotation for every token
            pp = cond.prefix_pos[:, start:start + n_text].float().unsqueeze(-1).expand(-1, -1, 2)
            cos, sin = rope_2d(torch.cat([pp, coords[:, n_text:]], 1), c.head_dim, c.rope_theta)
        else:  # HART: 1D tables on the text, its 2D tables on the image tokens
            c1, s1 = rope_1d(cond.prefix_pos[:, start:start + n_text], c.head_dim, c.rope_theta)
            c2, s2 = rope_2d(coords[:, n_text:], c.head_dim, c.rope_theta)
            cos, sin = torch.cat([c1, c2], 1), torch.cat([s1, s2], 1)
        perm, sign = rotation(c.head_dim, c.rope_2d, cos.device)
        return cos.unsqueeze(1), (sin * sign).unsqueeze(1), perm
