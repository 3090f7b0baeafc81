"""Generator config.json files in the flat layout of earlier versions, read into the nested one.

Earlier versions wrote the residual head's, the data statistics', the display and the training
fields at the top level (``diff_width``, ``residual_scale``, ``class_names``, ``cond_drop``,
...). :func:`nest` moves them into their sections (one note on stderr per process) and refuses,
in one line, options that no longer exist. :meth:`hart.config.GeneratorConfig.from_dict` calls it.
"""
from __future__ import annotations

import sys

from hart.common.errors import UserError

LEGACY_NOTE = ("note: this generator config is in the flat layout of earlier versions; it loads as is "
               "(hart export --storage fp32 writes it in the current layout)")
# flat fields of earlier versions -> (section, field) of the current layout
LEGACY_FIELDS = {
    "diff_width": ("head", "width"), "diff_depth": ("head", "depth"), "diff_train_steps": ("head", "train_steps"),
    "diff_sample_steps": ("head", "sample_steps"), "diff_temperature": ("head", "temperature"),
    "diff_sampler": ("head", "sampler"), "diff_learn_sigma": ("head", "learn_sigma"), "diff_mix": ("head", "mix"),
    "diff_prediction": ("head", "prediction"), "diff_metric": ("head", "metric"),
    "residual_scale": ("stats", "residual_scale"), "fhat_scale": ("stats", "fhat_scale"),
    "class_names": ("display", "class_names"), "example_prompts": ("display", "example_prompts"),
    "sampling": ("display", "sampling"),
    "cond_drop": ("training", "cond_drop"), "diff_keep_frac": ("training", "diff_keep_frac"),
    "diff_batch_mul": ("training", "diff_batch_mul"), "residual_from_sampled": ("training", "residual_from_sampled"),
}

_noted = False


def is_flat(d: dict) -> bool:
    """Whether a config.json's fields are in the flat layout."""
    return any(k in LEGACY_FIELDS or k in ("diff_head", "residual_pca") for k in d)


def nest(d: dict) -> dict:
    """A flat config.json's fields -> the nested layout's (a new dict; ``head`` None where the
    model had no head). One line for an option that no longer exists."""
    global _noted
    d = dict(d)
    if d.pop("residual_pca", 0):
        raise UserError("this generator uses residual_pca (a projection of the head's draws), an option that "
                        "no longer exists; export the model again from its training run without it")
    if d.get("diff_mix") in ("conv", "attn"):
        raise UserError(f"this generator's head uses diff_mix {d['diff_mix']!r}, an option that no longer "
                        "exists; retrain its head with --diff-mix none or map")
    has_head = d.pop("diff_head", False)
    sections: dict = {section: {} for section, _ in LEGACY_FIELDS.values()}
    for k in [k for k in d if k in LEGACY_FIELDS]:
        section, field = LEGACY_FIELDS[k]
        sections[section][field] = d.pop(k)
    d.update({k: v for k, v in sections.items() if k != "head"})
    d["head"] = sections["head"] if has_head else None
    if not _noted:  # once per process: a folder's config is read more than once
        print(LEGACY_NOTE, file=sys.stderr)
        _noted = True
    return d
