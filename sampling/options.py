"""Sampling flags shared by the commands that sample (``hart generate``, ``hart fid``).

``--sampling NAME`` picks a published setting (:data:`sampling.engine.SAMPLING_PRESETS`);
``--cfg``/``--top-k``/``--top-p``/``--temperature``/``--smooth`` override single values.
"""
from __future__ import annotations

from hart.errors import UserError
from sampling.engine import SAMPLING_PRESETS, SamplingOptions

DEFAULT_PRESET = "var-fid"


def add_sampling_arguments(p) -> None:
    """Add the sampling flags to a parser or argument group."""
    names = ", ".join(f"{k} ({_describe(v)})" for k, v in SAMPLING_PRESETS.items())
    p.add_argument("--sampling", default=DEFAULT_PRESET, metavar="PRESET",
                   help=f"published sampler setting: {names} (default {DEFAULT_PRESET})")
    p.add_argument("--cfg", type=float, default=None, help="guidance at the last scale, >= 0 (overrides the preset)")
    p.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens, 0 = off (overrides)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus mass in (0, 1] (overrides)")
    p.add_argument("--temperature", type=float, default=None, help="softmax temperature (default 1)")
    p.add_argument("--smooth", action="store_true", default=None, help="VAR's Gumbel smoothing of the latent updates")


def _describe(d: dict) -> str:
    return f"cfg {d['cfg']:g}, top-k {d['top_k']}, top-p {d['top_p']:g}" + (", smooth" if d.get("smooth") else "")


def sampling_options(args) -> SamplingOptions:
    """The preset named by ``args.sampling`` with the flags that were given; validated."""
    given = {k: getattr(args, k) for k in ("cfg", "top_k", "top_p", "temperature", "smooth")}
    opts = SamplingOptions.preset(args.sampling, **{k: v for k, v in given.items() if v is not None})
    try:
        return opts.validate()
    except UserError as e:  # its messages start with the field: name the flag instead
        raise UserError(f"--{e}") from None

