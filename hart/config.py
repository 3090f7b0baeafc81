"""Generator configuration: one dataclass, presets by name.

``GeneratorConfig.from_name("var-d16")`` gives the official VAR-d16 shape (its checkpoint
loads into :class:`hart.model.HARTGenerator` strictly, key for key). ``fm-s`` is the CPU
model for 32x32 Fashion-MNIST (tokenizer downsampling 4 -> an 8x8 latent), ``tiny`` is
for tests.

Two families, picked by ``cond``: ``"class"`` (VAR's layout: a class embedding is the 1x1
scale's token and the AdaLN condition; LayerNorm, GELU MLP, absolute positions) and
``"text"`` (HART's text-to-image layout: ``context_tokens`` encoder tokens go through an
RMSNorm and ``Linear(context_dim, C)`` and form a prefix at level 0 that sees itself; the
1x1 scale's logits are read at the last prefix position; the AdaLN condition is the pooled
prefix; RMSNorm, SwiGLU, RoPE). ``shapes-t2i`` is the CPU text model, ``t2i-tiny`` for tests.
The layout fields (``norm``, ``mlp``, ``pos``) are independent of ``cond``.
"""
from __future__ import annotations

import dataclasses
import math
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
    # the head's start-noise scale the model samples with unless told otherwise (sampling
    # option diff_temperature; `hart export --diff-temperature` records a measured best)
    diff_temperature: float = 1.0
    diff_keep_frac: float = 0.2  # HART trains the head on a random ~20% of last-scale tokens
    residual_from_sampled: bool = True  # head target vs. the model's own sampled last-scale ids (HART)
    # head sampler: "ddim" (epsilon only, deterministic given the start noise; ours) or "iddpm"
    # (HART/MAR: ancestral steps on iDDPM's respaced timesteps, x0 clipped to [-1, 1]); with
    # diff_learn_sigma the head also outputs iDDPM's learned-range variance (z more channels)
    diff_sampler: str = "ddim"
    diff_learn_sigma: bool = False
    # "none" (HART, MAR): each last-scale token denoised on its own given its condition.
    # "conv": the head denoises an image's whole last-scale grid jointly (a depthwise 3x3
    # token mix in each block), so that a draw is coherent across neighbours; trained on all
    # tokens (diff_keep_frac unused) with one timestep per image. "attn": the same, with
    # self-attention over the whole grid in each block instead of the 3x3 mix. "map" (ours,
    # hart.diffusion.MapHead): a convolutional denoiser of the whole residual map that also
    # takes f_hat (the drawn ids' discrete latent) as input channels; diff_width is its
    # channel count then (a multiple of 8, e.g. 96)
    diff_mix: str = "none"
    # what the head predicts: "epsilon" (HART, MAR) or "v_prediction" (ddim sampler only)
    diff_prediction: str = "epsilon"
    # the head's target units: "scale" (residual / residual_scale) or "decoder" (each token's
    # residual times A = G^(1/2), G = E[J^T J] of the tokenizer decoder's Jacobian on one cell's
    # channels, scaled to unit variance: the loss weighs each direction by how much it moves the
    # pixels); A is the buffer residual_metric, measured when a run starts
    diff_metric: str = "scale"
    # "map" heads: f_hat enters divided by fhat_scale (its RMS on the training data, measured
    # with residual_scale when a run starts)
    fhat_scale: float | None = None
    # K > 0: the head's draws are projected onto the top K principal components of the
    # tokenizer's residual maps (the buffers residual_mean / residual_basis, fitted on training
    # data by `hart export --residual-pca K`), the rest of each draw dropped: what a head
    # predicts outside the residual's principal directions costs FD (README, session 22)
    residual_pca: int = 0
    class_names: tuple[str, ...] = ()  # shown by the CLI and the demo; set by `hart train`
    sampling: str = ""  # the sampling preset the model samples with unless told otherwise ("": var-fid; HART's: hart)
    # conditioning: "class" (class_emb) or "text" (a prefix of encoder tokens, HART)
    cond: str = "class"
    text_encoder: str = ""  # hart.text encoder name ("minilm", "qwen2") of a text model
    text_encoder_path: str = ""  # where that encoder's weights live (qwen2; a run-time flag overrides it)
    context_tokens: int = 0  # T: padded prompt length (the prefix), text models
    example_prompts: tuple[str, ...] = ()  # captions of the training data (the demo's examples); set by `hart train`
    context_dim: int = 0  # D: the encoder's width
    context_norm: bool = True  # RMSNorm on the encoder tokens before context_embed (HART)
    context_pool: str = "max"  # AdaLN condition = pool of the embedded prefix: "max" (HART) or "mean"
    mask_pads: bool = True  # pads are neither attended to nor pooled; False = HART's released behaviour
    # block layout: VAR ("layer", "gelu", "absolute") or HART's ("rms", "swiglu", "rope")
    norm: str = "layer"
    mlp: str = "gelu"
    pos: str = "absolute"
    rope_2d: str = "axial"  # "axial" (a true 2D rotation) or "hart" (the released code's pairing)
    rope_theta: float = 10000.0
    level_embed: str = "table"  # level embedding: "table" (nn.Embedding) or "timestep" (HART's sinusoidal MLP)

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
        self.example_prompts = tuple(self.example_prompts)
        if self.class_names and len(self.class_names) != self.num_classes:
            raise UserError(f"generator config: {len(self.class_names)} class names for {self.num_classes} classes")
        if not 0.0 < self.diff_keep_frac <= 1.0:
            raise UserError(f"generator config: diff_keep_frac must be in (0, 1], got {self.diff_keep_frac}")
        for name in ("dropout", "drop_path", "cond_drop"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise UserError(f"generator config: {name} must be in [0, 1), got {v}")
        choices = {"cond": ("class", "text"), "context_pool": ("max", "mean"), "norm": ("layer", "rms"),
                   "mlp": ("gelu", "swiglu"), "pos": ("absolute", "rope"), "rope_2d": ("axial", "hart"),
                   "level_embed": ("table", "timestep"), "diff_sampler": ("ddim", "iddpm"),
                   "diff_mix": ("none", "conv", "attn", "map"),
                   "diff_prediction": ("epsilon", "v_prediction"), "diff_metric": ("scale", "decoder")}
        for name, ok in choices.items():
            if getattr(self, name) not in ok:
                raise UserError(f"generator config: {name} must be one of {', '.join(ok)}, got {getattr(self, name)!r}")
        if self.cond == "text":
            for name in ("context_tokens", "context_dim"):
                if int(getattr(self, name)) <= 0:
                    raise UserError(f"generator config: a text model needs a positive {name}, got {getattr(self, name)}")
            if self.context_tokens < 2:
                raise UserError("generator config: context_tokens must be at least 2")
        if self.pos == "rope" and self.head_dim % 4:
            raise UserError(f"generator config: 2D RoPE needs a head dim divisible by 4, got {self.head_dim}")
        if self.diff_head:
            for name in ("diff_width", "diff_depth", "diff_batch_mul", "diff_train_steps", "diff_sample_steps"):
                if int(getattr(self, name)) <= 0:
                    raise UserError(f"generator config: {name} must be positive, got {getattr(self, name)}")
            if self.residual_scale is not None and not self.residual_scale > 0:
                raise UserError(f"generator config: residual_scale must be positive, got {self.residual_scale}")
            if not (self.diff_temperature >= 0 and math.isfinite(self.diff_temperature)):
                raise UserError(f"generator config: diff_temperature must be >= 0, got {self.diff_temperature}")
            if self.diff_sample_steps > self.diff_train_steps:
                raise UserError("generator config: diff_sample_steps cannot exceed diff_train_steps")
            if self.diff_prediction != "epsilon" and self.diff_sampler != "ddim":
                raise UserError("generator config: a v_prediction head samples with diff_sampler ddim")
            if self.diff_mix == "map" and (self.diff_width % 8 or self.diff_learn_sigma):
                raise UserError("generator config: a map head needs diff_width a multiple of 8 and no "
                                f"diff_learn_sigma (got {self.diff_width}, {self.diff_learn_sigma})")
            if self.fhat_scale is not None and not self.fhat_scale > 0:
                raise UserError(f"generator config: fhat_scale must be positive, got {self.fhat_scale}")
        if not 0 <= self.residual_pca <= self.residual_dim:
            raise UserError(f"generator config: residual_pca must be in [0, {self.residual_dim}] (the residual "
                            f"map's z x n x n values), got {self.residual_pca}")
        if self.residual_pca and not self.diff_head:
            raise UserError("generator config: residual_pca projects the residual head's draws; this model has no head")

    # ------------------------------------------------------------------ derived (not saved)

    @property
    def residual_dim(self) -> int:
        """Values in one last-scale residual map: z x n x n."""
        return self.z_channels * self.patch_nums[-1] ** 2

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
    def is_text(self) -> bool:
        return self.cond == "text"

    @property
    def prefix_len(self) -> int:
        """P: the tokens before scale 1 (1 for class models: the 1x1 scale; T for text models)."""
        return self.context_tokens if self.is_text else 1

    @property
    def total_len(self) -> int:
        """S = P + L - 1: the transformer's sequence (prefix, then scales 1..K-1)."""
        return self.prefix_len + self.seq_len - 1

    @property
    def token_ranges(self) -> list[tuple[int, int]]:
        """[(begin, end)] of each scale's input tokens in the length-S sequence: scale 0 is
        the prefix (its logits are read at its last position), scale k >= 1 starts at
        P - 1 + scale_ranges[k][0]. Equal to :attr:`scale_ranges` for class models."""
        P = self.prefix_len
        return [(0, P)] + [(b + P - 1, e + P - 1) for b, e in self.scale_ranges[1:]]

    @property
    def null_class(self) -> int:
        return self.num_classes

    def check_class_ids(self, class_ids) -> list[int]:
        """The class ids as ints, or one line naming the first that is out of range."""
        if self.is_text:
            raise UserError("this model is text-conditioned: give it prompts (--prompt), not classes")
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
    # CPU text-to-image model for 32x32 `shapes` (MiniLM prompts, HART's layout); fm-s's size
    "shapes-t2i": dict(
        depth=6, width=256, heads=4, num_classes=1, patch_nums=FM_PATCH_NUMS, codebook_size=512,
        z_channels=16, attn_l2_norm=True, diff_head=True, diff_width=256, diff_depth=3, diff_keep_frac=0.5,
        cond="text", text_encoder="minilm", context_tokens=16, context_dim=384,
        norm="rms", mlp="swiglu", pos="rope",
    ),
    # the same layout, deeper and wider (12 blocks of width 384, 34M parameters): a GPU model
    "shapes-t2i-l": dict(
        depth=12, width=384, heads=6, num_classes=1, patch_nums=FM_PATCH_NUMS, codebook_size=512,
        z_channels=16, attn_l2_norm=True, diff_head=True, diff_width=256, diff_depth=3, diff_keep_frac=0.5,
        cond="text", text_encoder="minilm", context_tokens=16, context_dim=384,
        norm="rms", mlp="swiglu", pos="rope",
    ),
    # tests
    "t2i-tiny": dict(
        depth=2, width=64, heads=2, num_classes=1, patch_nums=(1, 2, 3, 4), codebook_size=64,
        z_channels=8, attn_l2_norm=True, diff_head=True, diff_width=64, diff_depth=2,
        cond="text", text_encoder="minilm", context_tokens=8, context_dim=384,
        norm="rms", mlp="swiglu", pos="rope",
    ),
    "tiny": dict(
        depth=2, width=64, heads=2, num_classes=10, patch_nums=(1, 2, 3, 4), codebook_size=64,
        z_channels=8, attn_l2_norm=True, diff_head=True, diff_width=64, diff_depth=2,
    ),
})
