"""Generator configuration: the transformer's shape and four sections, presets by name.

:class:`GeneratorConfig` holds the architecture; its sections are the residual head
(:class:`HeadConfig`, ``None`` for a plain VAR model), statistics measured from the training
data (:class:`DataStats`), display metadata (:class:`DisplayConfig`) and the training knobs
that travel with the weights (:class:`TrainingConfig`). config.json nests them the same way;
the flat layout of earlier versions still loads (:mod:`hart.config_legacy`).

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
import operator
from typing import ClassVar

from hart import config_legacy
from hart.common.errors import UserError
from hart.common.io import ConfigBase
from tokenizer.config import VAR_PATCH_NUMS  # one schedule table, the tokenizer's

FM_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8)


def _var(depth: int) -> dict:
    # VAR sizing rule: width = 64 * depth, heads = depth (head dim 64); plain VAR, no head
    return dict(
        depth=depth, width=64 * depth, heads=depth, num_classes=1000, patch_nums=VAR_PATCH_NUMS,
        codebook_size=4096, z_channels=32, attn_l2_norm=True, drop_path=0.1 * depth / 24,
    )


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise UserError(f"generator config: {msg}")


@dataclasses.dataclass
class HeadConfig(ConfigBase):
    """The residual diffusion head (HART's, after MAR's SimpleMLPAdaLN; or a map head): :mod:`hart.heads`."""

    KIND: ClassVar[str] = "head"

    # "none" (HART, MAR): an MLP that denoises each last-scale token on its own given its
    # condition. "map" (ours, hart.heads.MapHead): a convolutional denoiser of the whole
    # residual map that also takes f_hat (the drawn ids' discrete latent) as input channels;
    # width is its channel count then (a multiple of 8, e.g. 96)
    mix: str = "none"
    width: int = 1024  # HART: 1024
    depth: int = 6  # HART: 6 res blocks
    train_steps: int = 1000  # the cosine noise schedule's length
    sample_steps: int = 8
    # the start-noise scale the model samples with unless told otherwise (sampling option
    # diff_temperature; `hart export --diff-temperature` records a measured best)
    temperature: float = 1.0
    # "ddim" (epsilon or v, deterministic given the start noise; ours) or "iddpm" (HART/MAR:
    # ancestral steps on iDDPM's respaced timesteps, x0 clipped to [-1, 1]); with learn_sigma
    # the head also outputs iDDPM's learned-range variance (z more channels; HART's release)
    sampler: str = "ddim"
    learn_sigma: bool = False
    prediction: str = "epsilon"  # what the head predicts: "epsilon" (HART, MAR) or "v_prediction"
    # the target units: "scale" (residual / stats.residual_scale) or "decoder" (each token's
    # residual times A = G^(1/2), G = E[J^T J] of the tokenizer decoder's Jacobian on one
    # cell's channels, scaled to unit variance): the buffer residual_metric, measured when a run starts
    metric: str = "scale"

    def __post_init__(self):
        choices = {"mix": ("none", "map"), "sampler": ("ddim", "iddpm"),
                   "prediction": ("epsilon", "v_prediction"), "metric": ("scale", "decoder")}
        for name, ok in choices.items():
            _check(getattr(self, name) in ok, f"head.{name} must be one of {', '.join(ok)}, got {getattr(self, name)!r}")
        for name in ("width", "depth", "train_steps", "sample_steps"):
            _check(int(getattr(self, name)) > 0, f"head.{name} must be positive, got {getattr(self, name)}")
        _check(self.temperature >= 0 and math.isfinite(self.temperature),
               f"head.temperature must be >= 0, got {self.temperature}")
        _check(self.sample_steps <= self.train_steps, "head.sample_steps cannot exceed head.train_steps")
        _check(self.prediction == "epsilon" or self.sampler == "ddim", "a v_prediction head samples with sampler ddim")
        _check(self.mix != "map" or (self.width % 8 == 0 and not self.learn_sigma),
               f"a map head needs a width that is a multiple of 8 and no learn_sigma (got {self.width}, {self.learn_sigma})")


@dataclasses.dataclass
class DataStats(ConfigBase):
    """Statistics measured on the training data when `hart train` starts, saved with the weights."""

    KIND: ClassVar[str] = "stats"

    # head target = residual / residual_scale: the residual's RMS, so the target has about
    # unit variance (HART's constant 0.6 fits VAR's latents only); None: not measured yet
    residual_scale: float | None = None
    fhat_scale: float | None = None  # map heads: f_hat enters divided by its RMS

    def __post_init__(self):
        for name in ("residual_scale", "fhat_scale"):
            v = getattr(self, name)
            _check(v is None or v > 0, f"stats.{name} must be positive, got {v}")


@dataclasses.dataclass
class DisplayConfig(ConfigBase):
    """How the CLI and the demo present the model and sample it by default."""

    KIND: ClassVar[str] = "display"

    class_names: tuple[str, ...] = ()  # set by `hart train` from the data
    example_prompts: tuple[str, ...] = ()  # captions of the training data (the demo's examples)
    sampling: str = ""  # the sampling preset unless told otherwise ("": var-fid; HART's: hart)

    def __post_init__(self):
        self.class_names, self.example_prompts = tuple(self.class_names), tuple(self.example_prompts)


@dataclasses.dataclass
class TrainingConfig(ConfigBase):
    """Knobs of `hart train` that travel with the weights, so that a fine-tune (--init) keeps them."""

    KIND: ClassVar[str] = "training"

    cond_drop: float = 0.1  # CFG: probability of replacing the condition by the null one
    diff_keep_frac: float = 0.2  # HART trains the head on a random ~20% of last-scale tokens
    diff_batch_mul: int = 4  # noise draws per token in the diffusion loss
    residual_from_sampled: bool = True  # head target vs. the model's own sampled last-scale ids (HART)

    def __post_init__(self):
        _check(0.0 <= self.cond_drop < 1.0, f"training.cond_drop must be in [0, 1), got {self.cond_drop}")
        _check(0.0 < self.diff_keep_frac <= 1.0, f"training.diff_keep_frac must be in (0, 1], got {self.diff_keep_frac}")
        _check(int(self.diff_batch_mul) > 0, f"training.diff_batch_mul must be positive, got {self.diff_batch_mul}")


SECTIONS = {"head": HeadConfig, "stats": DataStats, "display": DisplayConfig, "training": TrainingConfig}


@dataclasses.dataclass
class GeneratorConfig(ConfigBase):
    """The next-scale transformer's shape; the residual head (``head``, None without one), the
    statistics measured from data (``stats``), the display metadata (``display``) and the
    training knobs (``training``) in sections of their own (nested in config.json)."""

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
    # conditioning: "class" (class_emb) or "text" (a prefix of encoder tokens, HART)
    cond: str = "class"
    text_encoder: str = ""  # hart.text encoder name ("minilm", "qwen2") of a text model
    text_encoder_path: str = ""  # where that encoder's weights live (qwen2; a run-time flag overrides it)
    context_tokens: int = 0  # T: padded prompt length (the prefix), text models
    context_dim: int = 0  # D: the encoder's width
    context_norm: bool = True  # RMSNorm on the encoder tokens before context_embed (HART)
    # AdaLN condition of the blocks = pool of the embedded prefix: "max" (HART's default) or
    # "mean" (HART's sep_aln_pooling_mode "avg"), over the real tokens (the mask) in either case
    # of mask_pads
    context_pool: str = "max"
    # True: pads are neither attended to nor max-pooled, and their content is zeroed. False
    # (HART's released behaviour, set by hart convert hart): pads are attended to and enter
    # the max pool as the encoder left them, and the text RoPE positions are HART's
    # cumsum(mask) - 1 as they are (-1 at left pads; with mask_pads they are clamped at 0,
    # which no real token ever sees)
    mask_pads: bool = True
    # the AdaLN condition of the norm before the logits head: "same" (the blocks' pooled
    # vector) or "max_unmasked" (HART's AdaLNBeforeHead: a max over every prefix position,
    # pads included, whatever context_pool says; set by hart convert hart)
    head_norm_pool: str = "same"
    # block layout: VAR ("layer", "gelu", "absolute") or HART's ("rms", "swiglu", "rope")
    norm: str = "layer"
    mlp: str = "gelu"
    pos: str = "absolute"
    rope_2d: str = "axial"  # "axial" (a true 2D rotation) or "hart" (the released code's pairing)
    rope_theta: float = 10000.0
    level_embed: str = "table"  # level embedding: "table" (nn.Embedding) or "timestep" (HART's sinusoidal MLP)
    head: HeadConfig | None = None  # the residual diffusion head; None: a plain VAR model
    stats: DataStats = dataclasses.field(default_factory=DataStats)
    display: DisplayConfig = dataclasses.field(default_factory=DisplayConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)

    def __post_init__(self):
        for name, cls in SECTIONS.items():  # sections given as dicts (config.json, presets)
            v = getattr(self, name)
            if isinstance(v, dict):
                setattr(self, name, cls.from_dict(v))
            elif v is None and name != "head":
                setattr(self, name, cls())
        self.patch_nums = tuple(int(p) for p in self.patch_nums)
        positive = ("depth", "width", "heads", "num_classes", "codebook_size", "z_channels")
        for name in positive:
            _check(int(getattr(self, name)) > 0, f"{name} must be positive, got {getattr(self, name)}")
        _check(self.width % self.heads == 0, f"width {self.width} is not divisible by heads {self.heads}")
        _check((self.width // self.heads) % 2 == 0, f"head dim {self.width // self.heads} must be even")
        _check(bool(self.patch_nums) and all(p > 0 for p in self.patch_nums),
               f"patch_nums must be positive, got {self.patch_nums}")
        _check(list(self.patch_nums) == sorted(set(self.patch_nums)),
               f"patch_nums must be strictly increasing, got {self.patch_nums}")
        _check(self.mlp_ratio > 0, f"mlp_ratio must be positive, got {self.mlp_ratio}")
        names = self.display.class_names
        _check(not names or len(names) == self.num_classes, f"{len(names)} class names for {self.num_classes} classes")
        for name in ("dropout", "drop_path"):
            v = getattr(self, name)
            _check(0.0 <= v < 1.0, f"{name} must be in [0, 1), got {v}")
        choices = {"cond": ("class", "text"), "context_pool": ("max", "mean"),
                   "head_norm_pool": ("same", "max_unmasked"), "norm": ("layer", "rms"),
                   "mlp": ("gelu", "swiglu"), "pos": ("absolute", "rope"), "rope_2d": ("axial", "hart"),
                   "level_embed": ("table", "timestep")}
        for name, ok in choices.items():
            _check(getattr(self, name) in ok, f"{name} must be one of {', '.join(ok)}, got {getattr(self, name)!r}")
        if self.cond == "text":
            for name in ("context_tokens", "context_dim"):
                _check(int(getattr(self, name)) > 0, f"a text model needs a positive {name}, got {getattr(self, name)}")
            _check(self.context_tokens >= 2, "context_tokens must be at least 2")
        _check(self.head_norm_pool == "same" or self.cond == "text",
               f"head_norm_pool {self.head_norm_pool!r} pools a text prefix: it needs cond \"text\"")
        _check(self.pos != "rope" or self.head_dim % 4 == 0,
               f"2D RoPE needs a head dim divisible by 4, got {self.head_dim}")

    @classmethod
    def from_dict(cls, d: dict):
        """A config.json's fields; the flat layout of earlier versions is read with a note
        (:mod:`hart.config_legacy`), and an option that no longer exists is refused in one line."""
        return super().from_dict(config_legacy.nest(d) if config_legacy.is_flat(d) else d)

    @property
    def has_head(self) -> bool:
        return self.head is not None

    def replace_in(self, section: str, **kw) -> "GeneratorConfig":
        """A copy with fields of one section replaced: ``config.replace_in("head", temperature=0)``."""
        part = getattr(self, section)
        if part is None:
            raise UserError(f"this generator has no {section}")
        return self.replace(**{section: part.replace(**kw)})

    # ------------------------------------------------------------------ derived (not saved)

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def target_scale(self) -> float:
        """The head's target unit: ``stats.residual_scale``, or 1 for a head not trained yet."""
        return self.stats.residual_scale if self.stats.residual_scale is not None else 1.0

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

    def class_label(self, k: int) -> str:
        """The display name of class ``k`` (``display.class_names``), or ``"class k"`` when the
        config names none."""
        names = self.display.class_names or ()
        return names[k] if k < len(names) else f"class {k}"

    def check_class_ids(self, class_ids) -> list[int]:
        """The classes as ids: each an int (or an integer tensor / numpy scalar) or a class name
        (``display.class_names``, any case); one line for anything else or out of range."""
        if self.is_text:
            raise UserError("this model is text-conditioned: give it prompts, not classes")
        names = {n.lower(): i for i, n in enumerate(self.display.class_names)}
        ids = []
        for c in class_ids:
            if isinstance(c, str):
                if c.lower() not in names:
                    known = ", ".join(self.display.class_names) or "this model has no class names; use ids"
                    raise UserError(f"unknown class {c!r}; choose an id or one of: {known}")
                ids.append(names[c.lower()])
                continue
            try:
                if isinstance(c, bool):
                    raise TypeError
                ids.append(operator.index(c))
            except TypeError:
                raise UserError(f"class {c!r} is neither a class id (an integer) nor a class name") from None
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
        z_channels=16, attn_l2_norm=True, head=dict(width=256, depth=3), training=dict(diff_keep_frac=0.5),
    ),
    "fm-s-nohead": dict(
        depth=6, width=256, heads=4, num_classes=10, patch_nums=FM_PATCH_NUMS, codebook_size=512,
        z_channels=16, attn_l2_norm=True,
    ),
    # CPU text-to-image model for 32x32 `shapes` (MiniLM prompts, HART's layout); fm-s's size. 20
    # context tokens: the longest `shapes` phrasings are 18 of MiniLM's (default-t2i has 16)
    "shapes-t2i": dict(
        depth=6, width=256, heads=4, num_classes=1, patch_nums=FM_PATCH_NUMS, codebook_size=512,
        z_channels=16, attn_l2_norm=True, head=dict(width=256, depth=3), training=dict(diff_keep_frac=0.5),
        cond="text", text_encoder="minilm", context_tokens=20, context_dim=384,
        norm="rms", mlp="swiglu", pos="rope",
    ),
    # the same layout, deeper and wider (12 blocks of width 384, 34M parameters): a GPU model
    "shapes-t2i-l": dict(
        depth=12, width=384, heads=6, num_classes=1, patch_nums=FM_PATCH_NUMS, codebook_size=512,
        z_channels=16, attn_l2_norm=True, head=dict(width=256, depth=3), training=dict(diff_keep_frac=0.5),
        cond="text", text_encoder="minilm", context_tokens=20, context_dim=384,
        norm="rms", mlp="swiglu", pos="rope",
    ),
    # tests
    "t2i-tiny": dict(
        depth=2, width=64, heads=2, num_classes=1, patch_nums=(1, 2, 3, 4), codebook_size=64,
        z_channels=8, attn_l2_norm=True, head=dict(width=64, depth=2),
        cond="text", text_encoder="minilm", context_tokens=8, context_dim=384,
        norm="rms", mlp="swiglu", pos="rope",
    ),
    "tiny": dict(
        depth=2, width=64, heads=2, num_classes=10, patch_nums=(1, 2, 3, 4), codebook_size=64,
        z_channels=8, attn_l2_norm=True, head=dict(width=64, depth=2),
    ),
})
