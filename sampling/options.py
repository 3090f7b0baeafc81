"""Sampling options, their published presets, and the flags shared by the commands that
sample (``hart generate``, ``hart fid``; the demo's defaults come from the same preset).

``--sampling NAME`` picks a published setting (:data:`SAMPLING_PRESETS`);
``--cfg``/``--top-k``/``--top-p``/``--temperature``/``--smooth`` override single values.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import ClassVar

from hart.common.errors import UserError

DEFAULT_PRESET = "var-fid"


@dataclasses.dataclass
class SamplingOptions:
    """What a caller may tune; :meth:`validate` gives one-line errors for bad values.

    Defaults are VAR's FID settings (cfg 1.5, top-k 900, top-p 0.96).
    """

    cfg: float = 1.5  # guidance at the last scale; 0 turns CFG off (no doubled batch)
    top_k: int = 900  # 0: off; values >= V are no-ops
    top_k_schedule: tuple = ()  # ((first_scale, top_k), ...): a different top-k from a scale on (HART)
    top_p: float = 0.96  # 1: off
    temperature: float = 1.0
    smooth: bool = False  # VAR's Gumbel smoothing of the f_hat update (ids stay hard)
    diff_steps: int | None = None  # diffusion-head DDIM steps (None: config.head.sample_steps)
    diff_temperature: float | None = None  # scales the head's start noise (None: the model's, 1 unless exported otherwise)
    # guidance t of the residual head, (1 + t) eps_c - t eps_u (the logits' formula); None: the
    # last scale's ratio (= cfg, HART's choice). Default 0: measured best on the default model
    # (FD-EffNet of 1,000 samples, same ids: 41.18 at 0 vs 42.24 at the ratio 1.5; README)
    head_cfg: float | None = 0.0
    # the guidance ratio of the last scale: "last" (VAR: k / (K - 1) = 1) or "previous" (HART's
    # sampler reuses the ratio left over from scale K - 2 for the last scale's logits, its
    # smoothing and the head; a documented quirk kept for the official weights)
    last_scale_ratio: str = "last"

    def guidance(self, k: int, num_scales: int) -> float:
        """t_k = cfg * r_k, the guidance of scale k (VAR's and HART's linear growth, none at the
        1x1 scale): logits (1 + t_k) cond - t_k uncond."""
        return self.cfg * self.ratio(k, num_scales)

    def ratio(self, k: int, num_scales: int) -> float:
        """r_k in [0, 1]: scale k's share of the guidance (t_k = cfg * r_k) and of the smoothing."""
        K = num_scales
        if K == 1:
            return 1.0
        if k == K - 1 and self.last_scale_ratio == "previous":
            k = K - 2
        return k / (K - 1)

    def top_k_at(self, k: int) -> int:
        """The top-k of scale k: ``top_k``, or the last schedule entry whose first scale is <= k."""
        top_k = self.top_k
        for first, value in sorted(self.top_k_schedule):
            if k >= first:
                top_k = value
        return top_k

    @classmethod
    def preset(cls, name: str, **overrides) -> "SamplingOptions":
        """Options of a published setting (:data:`SAMPLING_PRESETS`), fields overridable."""
        if name not in SAMPLING_PRESETS:
            raise UserError(f"unknown sampling preset {name!r}; choose one of: {', '.join(SAMPLING_PRESETS)}")
        return cls(**{**SAMPLING_PRESETS[name], **overrides})

    # name: (a whole number, None allowed)
    NUMBERS: ClassVar[dict] = {"cfg": (False, False), "top_k": (True, False), "top_p": (False, False),
                                "temperature": (False, False), "diff_steps": (True, True),
                                "diff_temperature": (False, True), "head_cfg": (False, True)}

    def validate(self) -> "SamplingOptions":
        """Check every value (one line starting with the field's name for a bad one); numbers given
        as other numeric types (numpy, a whole float for a count) are converted."""
        for name, (integer, optional) in self.NUMBERS.items():
            setattr(self, name, _number(name, getattr(self, name), integer, optional))
        if not isinstance(self.smooth, (bool, int)):
            raise UserError(f"smooth must be True or False, got {self.smooth!r}")
        self.smooth = bool(self.smooth)
        if not math.isfinite(self.cfg) or self.cfg < 0:
            raise UserError(f"cfg must be >= 0, got {self.cfg}")
        self.top_k_schedule = tuple(tuple(int(v) for v in pair) for pair in self.top_k_schedule)
        for value in [self.top_k] + [v for _, v in self.top_k_schedule]:
            if value < 0:
                raise UserError(f"top_k must be >= 0 (0 turns it off), got {value}")
        if not (0.0 < self.top_p <= 1.0):
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise UserError(f"temperature must be > 0, got {self.temperature}")
        if self.diff_steps is not None and self.diff_steps < 1:
            raise UserError(f"diff_steps must be >= 1, got {self.diff_steps}")
        if self.head_cfg is not None and not (math.isfinite(self.head_cfg) and self.head_cfg >= 0):
            raise UserError(f"head_cfg must be >= 0, got {self.head_cfg}")
        if self.diff_temperature is not None and not (self.diff_temperature >= 0 and math.isfinite(self.diff_temperature)):
            raise UserError(f"diff_temperature must be >= 0, got {self.diff_temperature}")
        if self.last_scale_ratio not in ("last", "previous"):
            raise UserError(f"last_scale_ratio must be 'last' or 'previous', got {self.last_scale_ratio!r}")
        return self


def _number(name: str, value, integer: bool, optional: bool):
    """``value`` as an int (``integer``) or a float; None stays None where ``optional``; one line
    for anything else."""
    if value is None and optional:
        return None
    kind = "a whole number" if integer else "a number"
    if isinstance(value, (bool, str, bytes)):
        raise UserError(f"{name} must be {kind}, got {value!r}")
    if integer and isinstance(value, numbers.Integral):
        return int(value)
    try:
        f = float(value)
    except OverflowError:  # an int beyond a float's range
        raise UserError(f"{name} is out of range: a number of {len(str(abs(value)))} digits") from None
    except (TypeError, ValueError):
        raise UserError(f"{name} must be {kind}, got {value!r}") from None
    if not integer:
        return f
    if not f.is_integer():
        raise UserError(f"{name} must be {kind}, got {value!r}")
    return int(f)


# Published sampler settings. VAR (FoundationVision/VAR README): the FID runs use cfg 1.5,
# top-k 900, top-p 0.96 and no smoothing; the demo notebook cfg 4, top-k 900, top-p 0.95.
# HART (mit-han-lab/hart sample.py and its sampler): cfg 4.5 with smoothing, no top-p, a
# top-k fixed in the sampler at 600 for the first 7 scales and 300 from the 8th on, and the
# last scale (logits, smoothing, residual head) guided with the previous scale's ratio.
SAMPLING_PRESETS = {
    "var-fid": dict(cfg=1.5, top_k=900, top_p=0.96, smooth=False),
    "var-demo": dict(cfg=4.0, top_k=900, top_p=0.95, smooth=False),
    "hart": dict(cfg=4.5, top_k=600, top_k_schedule=((7, 300),), top_p=1.0, smooth=True, head_cfg=None,
                 last_scale_ratio="previous"),
}



def add_sampling_arguments(p) -> None:
    """Add the sampling flags to a parser or argument group."""
    names = ", ".join(f"{k} ({_describe(v)})" for k, v in SAMPLING_PRESETS.items())
    p.add_argument("--sampling", default=None, metavar="PRESET",
                   help=f"published sampler setting: {names} (default: the model's own, "
                        f"e.g. hart for a converted HART release, else {DEFAULT_PRESET})")
    p.add_argument("--cfg", type=float, default=None, help="guidance at the last scale, >= 0 (overrides the preset)")
    p.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens, 0 = off (overrides)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus mass in (0, 1] (overrides)")
    p.add_argument("--temperature", type=float, default=None, help="softmax temperature (default 1)")
    p.add_argument("--smooth", action="store_true", default=None, help="VAR's Gumbel smoothing of the latent updates")
    p.add_argument("--head-cfg", type=float, default=None,
                   help="guidance of the residual head (default 0, measured best; the hart preset: --cfg)")
    p.add_argument("--diff-temperature", type=float, default=None,
                   help="scale of the residual head's start noise (and iDDPM's step noise), >= 0 (default: the "
                        "model's own, 1 unless its export recorded another; below 1 draws colder detail; 0: "
                        "the deterministic draw from the zero start)")


def option_names() -> tuple[str, ...]:
    """The fields of :class:`SamplingOptions` (what a caller may set by keyword)."""
    return tuple(f.name for f in dataclasses.fields(SamplingOptions))


def model_options(config, sampling: str | None = None, **fields) -> SamplingOptions:
    """The options a model samples with from Python: the preset ``sampling`` names, else the
    one the model records (``config.display.sampling``: ``hart`` for a converted HART release),
    else :data:`DEFAULT_PRESET`; ``fields`` override single values; validated (as the CLI's
    ``--sampling`` and flags do)."""
    return SamplingOptions.preset(sampling or config.display.sampling or DEFAULT_PRESET, **fields).validate()


def head_settings(diff_steps, diff_temperature, config) -> tuple:
    """(steps, temperature) of the residual head as they run on a model of generator config
    ``config``: the model's own where the options leave them None."""
    return (config.head.sample_steps if diff_steps is None else diff_steps,
            config.head.temperature if diff_temperature is None else diff_temperature)


def as_sampled(options: dict, config) -> dict:
    """``options`` (a :class:`SamplingOptions` dict) as the engine applies them to a model of
    generator config ``config``: the head's steps and temperature filled in where left to the
    model (None), so that a record says what ran."""
    steps, temperature = head_settings(options.get("diff_steps"), options.get("diff_temperature"), config)
    return {**options, "diff_steps": steps, "diff_temperature": temperature}


def _describe(d: dict) -> str:
    return f"cfg {d['cfg']:g}, top-k {d['top_k']}, top-p {d['top_p']:g}" + (", smooth" if d.get("smooth") else "")


def sampling_options(args, model_preset: str = "") -> SamplingOptions:
    """The preset named by ``args.sampling`` (else the model's ``config.display.sampling``, else
    :data:`DEFAULT_PRESET`) with the flags that were given; validated."""
    given = {k: getattr(args, k) for k in ("cfg", "top_k", "top_p", "temperature", "smooth", "head_cfg",
                                   "diff_temperature")}
    name = args.sampling or model_preset or DEFAULT_PRESET
    opts = SamplingOptions.preset(name, **{k: v for k, v in given.items() if v is not None})
    try:
        return opts.validate()
    except UserError as e:  # its messages start with the field's name: name the flag instead
        field, _, rest = str(e).partition(" ")
        raise UserError(f"--{field.replace('_', '-')} {rest}") from None

