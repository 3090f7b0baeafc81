"""Generator configuration: one dataclass, presets by name.

``GeneratorConfig.from_name("var-d16")`` gives the official VAR-d16 shape (its checkpoint
loads into :class:`hart.model.HARTGenerator` strictly, key for key). ``fm-s`` is the CPU
model for 32x32 Fashion-MNIST (tokenizer downsampling 4 -> an 8x8 latent), ``tiny`` is
for tests.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from hart.common.errors import UserError
from hart.common.io import ConfigBase
from tokenizer.config import VAR_PATCH_NUMS  # one schedule table, the tokenizer's

FM_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8)


def _var(depth: int) -> dict:
    # VAR sizing rule: width = 64 * depth, heads = depth (head dim 64); plain VAR, no head
    return dict(
        depth=depth, width=64 * depth, heads=depth, num_classes=1000, patch_nums=VAR_PATCH_NUMS,
        codebook_size=4096, z_channels=32, attn_l2_norm=True, diff_head=False,
        drop_path=0.1 * depth / 24,
    )


@dataclasses.dataclass
class GeneratorConfig(ConfigBase):
    """Shape and training-time constants of the next-scale transformer (+ residual head)."""

    KIND: ClassVar[str] = "generator"
    PRESETS: ClassVar[dict] = {}

    depth: int = 16
    width: int = 1024
    heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 1000  # class_emb has num_classes + 1 rows; the last is the null class
    patch_nums: tuple[int, ...] = VAR_PATCH_NUMS
    codebook_size: int = 4096
    z_channels: int = 32
    attn_l2_norm: bool = True  # VAR's released models: cosine attention with a learned scale
    norm_eps: float = 1e-6
    dropout: float = 0.0  # on attention probabilities and after attn proj / fc2
    drop_path: float = 0.0  # stochastic depth, linearly increasing over blocks up to this
    cond_drop: float = 0.1  # CFG training: probability of replacing the label by the null class
    # residual diffusion head (HART; MAR's SimpleMLPAdaLN)
    diff_head: bool = False
    diff_width: int = 1024
    diff_depth: int = 6
    diff_batch_mul: int = 4  # noise draws per token in the diffusion loss
    # head target = residual / residual_scale. None: measured on the training data when a run
    # starts (the residual's RMS, so the target has about unit variance; HART's constant 0.6
    # fits VAR's latents only) and saved here, so it travels with the weights
    residual_scale: float | None = None
    diff_train_steps: int = 1000
    diff_sample_steps: int = 8
    diff_keep_frac: float = 0.2  # HART trains the head on a random ~20% of last-scale tokens
    residual_from_sampled: bool = True  # head target vs. the model's own sampled last-scale ids (HART)
    class_names: tuple[str, ...] = ()  # shown by the CLI and the demo; set by `hart train`

    def __post_init__(self):
        self.patch_nums = tuple(int(p) for p in self.patch_nums)
        positive = ("depth", "width", "heads", "num_classes", "codebook_size", "z_channels")
        for name in positive:
            if int(getattr(self, name)) <= 0:
                raise UserError(f"generator config: {name} must be positive, got {getattr(self, name)}")
        if self.width % self.heads:
            raise UserError(f"generator config: width {self.width} is not divisible by heads {self.heads}")
        if (self.width // self.heads) % 2:
            raise UserError(f"generator config: head dim {self.width // self.heads} must be even")
        if not self.patch_nums or any(p <= 0 for p in self.patch_nums):
            raise UserError(f"generator config: patch_nums must be positive, got {self.patch_nums}")
        if list(self.patch_nums) != sorted(set(self.patch_nums)):
            raise UserError(f"generator config: patch_nums must be strictly increasing, got {self.patch_nums}")
        if self.mlp_ratio <= 0:
            raise UserError(f"generator config: mlp_ratio must be positive, got {self.mlp_ratio}")
        self.class_names = tuple(self.class_names)
        if self.class_names and len(self.class_names) != self.num_classes:
            raise UserError(f"generator config: {len(self.class_names)} class names for {self.num_classes} classes")
        if not 0.0 < self.diff_keep_frac <= 1.0:
            raise UserError(f"generator config: diff_keep_frac must be in (0, 1], got {self.diff_keep_frac}")
        for name in ("dropout", "drop_path", "cond_drop"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise UserError(f"generator config: {name} must be in [0, 1), got {v}")
        if self.diff_head:
            for name in ("diff_width", "diff_depth", "diff_batch_mul", "diff_train_steps", "diff_sample_steps"):
                if int(getattr(self, name)) <= 0:
                    raise UserError(f"generator config: {name} must be positive, got {getattr(self, name)}")
            if self.residual_scale is not None and not self.residual_scale > 0:
                raise UserError(f"generator config: residual_scale must be positive, got {self.residual_scale}")
            if self.diff_sample_steps > self.diff_train_steps:
                raise UserError("generator config: diff_sample_steps cannot exceed diff_train_steps")

    # ------------------------------------------------------------------ derived (not saved)

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def target_scale(self) -> float:
        """The head's target unit: ``residual_scale``, or 1 for a head not trained yet."""
        return self.residual_scale if self.residual_scale is not None else 1.0

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    @property
    def seq_len(self) -> int:
        """L: tokens over all scales (VAR 256px: 680)."""
        return sum(p * p for p in self.patch_nums)

    @property
    def scale_ranges(self) -> list[tuple[int, int]]:
        """[(begin, end)] token range of each scale in the length-L sequence."""
        out, b = [], 0
        for p in self.patch_nums:
            out.append((b, b + p * p))
            b += p * p
        return out

    @property
    def null_class(self) -> int:
        return self.num_classes

    def check_class_ids(self, class_ids) -> list[int]:
        """The class ids as ints, or one line naming the first that is out of range."""
        ids = [int(c) for c in class_ids]
        bad = [c for c in ids if not 0 <= c < self.num_classes]
        if bad:
            raise UserError(f"class id {bad[0]} is out of range: this model has classes 0..{self.num_classes - 1}")
        return ids


GeneratorConfig.PRESETS.update({
    "var-d16": _var(16),
    "var-d20": _var(20),
    "var-d24": _var(24),
    "var-d30": _var(30),
    # benchmark size: VAR layout at depth 8, width 512
    "var-d8": {**_var(8), "width": 512, "heads": 8, "drop_path": 0.0},
    # CPU model for 32x32 Fashion-MNIST (8x8 latent)
    "fm-s": dict(
        depth=6, width=256, heads=4, num_classes=10, patch_nums=FM_PATCH_NUMS, codebook_size=512,
        z_channels=16, attn_l2_norm=True, diff_head=True, diff_width=256, diff_depth=3, diff_keep_frac=0.5,
    ),
    "fm-s-nohead": dict(
        depth=6, width=256, heads=4, num_classes=10, patch_nums=FM_PATCH_NUMS, codebook_size=512,
        z_channels=16, attn_l2_norm=True, diff_head=False, diff_width=256, diff_depth=3,
    ),
    # tests
    "tiny": dict(
        depth=2, width=64, heads=2, num_classes=10, patch_nums=(1, 2, 3, 4), codebook_size=64,
        z_channels=8, attn_l2_norm=True, diff_head=True, diff_width=64, diff_depth=2,
    ),
})
