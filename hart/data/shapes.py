"""Procedural captioned scenes for text-to-image: the `shapes` dataset, its splits, layouts and renderer.

A scene is one to three flat shapes on black: a single object ("a large red circle"), a pair
with a spatial relation ("a small red circle left of a large blue square") or a count of
identical objects ("two small green triangles"). Some colour x shape pairs and some (shape,
relation, shape) triples never appear in the train and test splits; the ``heldout`` split has
only scenes with at least one of them (composition tests). A scene's caption is drawn from
the phrasing templates of the prompt language (:mod:`hart.data.prompts`, whose names this
module also offers): ``Scene.caption`` is the canonical wording, ``Scene.phrasing`` the drawn
one, and ``sample_scene(..., phrasing="heldout")`` draws the held-out templates. The checker
that reads an image back against a prompt is :mod:`sampling.eval.checker`.

    python -m hart.data.shapes --grid shapes.png --num 16 --scale 4
    python -m hart.data.shapes --templates

Bottom layer (hart.data): imports nothing of the project but :mod:`hart.common`.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from hart.common.errors import UserError, cli_entry
from hart.data.prompts import (
    CANONICAL, COLOURS, COUNTS, GRAMMAR, HELDOUT_TEMPLATES, INVERSE, KINDS, PHRASE_SEED, PHRASINGS, PLURALS,
    RELATIONS, SHAPES, SIZES, TEMPLATES, TRAIN_TEMPLATES, VOCABULARY, ObjectSpec, PromptSpec, Template,
    draw_phrasing, parse_prompt, phrase, phrasings, read_prompt, template_table, templates_for,
)

# the dataset's names, and the prompt language's it offers with them
__all__ = [
    "KIND_P", "SPLITS", "SPLIT_OFFSETS", "BACKGROUND", "SUPERSAMPLE", "MARGIN", "GAP", "ORTHO", "CROSS_ARM",
    "HELDOUT_OBJECTS", "HELDOUT_RELATIONS", "Scene", "is_heldout", "sample_scene", "layout_scene", "draw_shape",
    "render", "main",
    "CANONICAL", "COLOURS", "COUNTS", "GRAMMAR", "HELDOUT_TEMPLATES", "INVERSE", "KINDS", "PHRASE_SEED", "PHRASINGS",
    "PLURALS", "RELATIONS", "SHAPES", "SIZES", "TEMPLATES", "TRAIN_TEMPLATES", "VOCABULARY", "ObjectSpec",
    "PromptSpec", "Template", "draw_phrasing", "parse_prompt", "phrase", "phrasings", "read_prompt",
    "template_table", "templates_for",
]

KIND_P = (0.3, 0.4, 0.3)
SPLITS = ("train", "test", "heldout")
SPLIT_OFFSETS = {"train": 0, "test": 10_000_000, "heldout": 20_000_000}
BACKGROUND = (0, 0, 0)
SUPERSAMPLE = 4
MARGIN = 0.02  # free border, units of the side
GAP = 0.06  # least free space between two objects' boxes (~2 px at 32x32)
ORTHO = 0.4  # pairs: offset across the relation's axis <= ORTHO x the offset along it
CROSS_ARM = 0.32  # arm thickness of the cross, units of its side

# held out of train/test: one colour per shape, all different
HELDOUT_OBJECTS = frozenset({("yellow", "circle"), ("purple", "square"), ("cyan", "triangle"),
                             ("red", "diamond"), ("green", "cross")})
# held out with their mirror (circle left of triangle == triangle right of circle)
HELDOUT_RELATIONS = frozenset({("circle", "left of", "triangle"), ("square", "above", "circle"),
                               ("diamond", "right of", "cross"), ("cross", "below", "triangle")})

# ----------------------------------------------------------------------------- scenes

@dataclass(frozen=True)
class Scene:
    """A prompt and where its objects are: box centres as fractions of the image side.
    ``phrasing`` is the caption as drawn from a template (``template``; the dataset's caption),
    ``caption`` the canonical wording of ``spec``."""

    spec: PromptSpec
    centres: tuple
    phrasing: str = ""
    template: str = ""

    @property
    def caption(self) -> str:
        return self.spec.caption


def is_heldout(spec: PromptSpec) -> bool:
    """Whether the spec has a held-out colour x shape object or (shape, relation, shape) triple."""
    if any((o.colour, o.shape) in HELDOUT_OBJECTS for o in spec.objects):
        return True
    if spec.relation:
        a, b = spec.objects[0].shape, spec.objects[1].shape
        return (a, spec.relation, b) in HELDOUT_RELATIONS or (b, INVERSE[spec.relation], a) in HELDOUT_RELATIONS
    return False


# ----------------------------------------------------------------------------- sampling

def _random_object(rng) -> ObjectSpec:
    return ObjectSpec(list(COLOURS)[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))],
                      list(SIZES)[rng.integers(len(SIZES))])


def _draw_spec(kind: str, rng) -> PromptSpec:
    if kind == "single":
        return PromptSpec((_random_object(rng),))
    if kind == "count":
        return PromptSpec((_random_object(rng),) * int(rng.integers(2, 4)))
    a = _random_object(rng)
    b = _random_object(rng)
    while (b.colour, b.shape) == (a.colour, a.shape):  # the two must be told apart by more than size
        b = _random_object(rng)
    return PromptSpec((a, b), RELATIONS[rng.integers(len(RELATIONS))])


def _span(size: float, rng) -> float:
    return float(rng.uniform(MARGIN + size / 2, 1 - MARGIN - size / 2))


def _row(sizes, rng) -> list:
    """Centres of boxes laid out in this order along one axis, GAP apart at least, the slack
    spread at random."""
    slack = 1 - 2 * MARGIN - sum(sizes) - GAP * (len(sizes) - 1)
    assert slack >= -1e-9, "objects do not fit in a row"
    cuts = np.sort(rng.uniform(0, max(slack, 0.0), len(sizes)))
    out, start = [], MARGIN
    for k, s in enumerate(sizes):
        out.append(float(start + cuts[k] + s / 2))
        start += s + GAP
    return out


def _layout(spec: PromptSpec, rng) -> tuple:
    """Box centres (x, y) for the spec's objects: boxes GAP apart at least, and for a pair an
    unambiguous relation (apart along its axis, offset across it <= ORTHO x the offset along)."""
    s = [SIZES[o.size] for o in spec.objects]
    if len(s) == 1:
        return ((_span(s[0], rng), _span(s[0], rng)),)
    if spec.relation:
        order = [0, 1] if spec.relation in ("left of", "above") else [1, 0]
        main = dict(zip(order, _row([s[i] for i in order], rng)))
        d = abs(main[1] - main[0])
        a = _span(s[0], rng)
        lo = max(MARGIN + s[1] / 2, a - ORTHO * d)
        hi = min(1 - MARGIN - s[1] / 2, a + ORTHO * d)
        across = {0: a, 1: float(rng.uniform(lo, hi))}
        if spec.relation in ("left of", "right of"):
            return tuple((main[i], across[i]) for i in range(2))
        return tuple((across[i], main[i]) for i in range(2))
    axis = int(rng.integers(2))
    if len(s) == 2:  # a row or a column, free across
        main = _row(s, rng)
        pts = [(m, _span(si, rng)) for m, si in zip(main, s)]
    else:  # two bands: two objects side by side in one, the third in the other
        lone = int(rng.integers(3))
        pair = [i for i in range(3) if i != lone]
        band_sizes = [max(s[i] for i in pair), s[lone]]
        flip = bool(rng.integers(2))
        bands = _row(band_sizes[::-1] if flip else band_sizes, rng)
        band_pair, band_lone = (bands[1], bands[0]) if flip else (bands[0], bands[1])
        along = _row([s[i] for i in pair], rng)
        pts = [None] * 3
        for k, i in enumerate(pair):
            jitter = (band_sizes[0] - s[i]) / 2
            pts[i] = (along[k], band_pair + float(rng.uniform(-jitter, jitter)))
        pts[lone] = (_span(s[lone], rng), band_lone)
    return tuple((p[0], p[1]) if axis == 0 else (p[1], p[0]) for p in pts)


def sample_scene(split: str, index: int, phrasing: str = "train") -> Scene:
    """Scene ``index`` of ``split``, deterministic. train and test (other seeds) never hold a
    held-out element; heldout always holds one. Kinds in the proportions of KIND_P. The
    caption (``phrasing``) is a template of the ``phrasing`` set (train, or heldout: templates
    no split is captioned with) and its wording, drawn from the index alone; the scene itself
    does not depend on it."""
    if split not in SPLITS:
        raise UserError(f"unknown shapes split {split!r}; choose one of: {', '.join(SPLITS)}")
    rng = np.random.default_rng(SPLIT_OFFSETS[split] + index)
    kind = KINDS[rng.choice(len(KINDS), p=KIND_P)]
    while True:  # rejection within the kind keeps the kind proportions of every split
        spec = _draw_spec(kind, rng)
        if is_heldout(spec) == (split == "heldout"):
            break
    text, template = draw_phrasing(spec, SPLIT_OFFSETS[split] + index, phrasing)
    return Scene(spec, _layout(spec, rng), text, template)


def layout_scene(spec: PromptSpec, seed: int = 0, text: str = "") -> Scene:
    """A ground-truth scene for any spec (a parsed prompt): the sizes it leaves open drawn, the
    objects laid out as in the dataset; ``text`` (default the canonical caption) its phrasing."""
    rng = np.random.default_rng([PHRASE_SEED, 2, seed])
    sizes = list(SIZES)
    if spec.kind == "count":
        o = spec.objects[0]
        objs = (ObjectSpec(o.colour, o.shape, o.size or sizes[int(rng.integers(2))]),) * len(spec.objects)
    else:
        objs = tuple(ObjectSpec(o.colour, o.shape, o.size or sizes[int(rng.integers(2))]) for o in spec.objects)
    full = PromptSpec(objs, spec.relation)
    return Scene(full, _layout(full, rng), text or spec.caption)


# ----------------------------------------------------------------------------- rendering

def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, side: float, fill) -> None:
    h = side / 2
    if shape == "circle":
        draw.ellipse((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif shape == "square":
        draw.polygon([(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - h), (cx + h, cy), (cx, cy + h), (cx - h, cy)], fill=fill)
    elif shape == "cross":
        t = side * CROSS_ARM / 2
        draw.polygon([(cx - t, cy - h), (cx + t, cy - h), (cx + t, cy + h), (cx - t, cy + h)], fill=fill)
        draw.polygon([(cx - h, cy - t), (cx + h, cy - t), (cx + h, cy + t), (cx - h, cy + t)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, resolution: int = 32) -> Image.Image:
    """The scene as an RGB image, drawn at SUPERSAMPLE x and box-filtered down (anti-aliased)."""
    big = resolution * SUPERSAMPLE
    img = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for o, (x, y) in zip(scene.spec.objects, scene.centres):
        draw_shape(draw, o.shape, x * big, y * big, SIZES[o.size] * big, COLOURS[o.colour])
    return img.resize((resolution, resolution), Image.BOX)


# ----------------------------------------------------------------------------- CLI

@cli_entry
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m hart.data.shapes", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", default=None, help="write a PNG of scenes with their captions")
    p.add_argument("--templates", action="store_true", help="list the phrasing templates")
    p.add_argument("--split", default="train", choices=SPLITS)
    p.add_argument("--phrasing", default="train", choices=PHRASINGS,
                   help="caption the grid with the train or the held-out templates")
    p.add_argument("--num", type=int, default=12, help="scenes in the grid")
    p.add_argument("--start", type=int, default=0, help="first scene index")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--scale", type=int, default=4, help="grid pixel magnification")
    args = p.parse_args(argv)
    if args.templates:
        print("\n".join(template_table()))
    if not args.grid:
        if not args.templates:
            p.error("give --grid PNG or --templates")
        return
    import torch

    from hart.common.images import save_grid

    rows, labels = [], []
    for i in range(args.start, args.start + args.num):
        scene = sample_scene(args.split, i, args.phrasing)
        a = np.asarray(render(scene, args.resolution), dtype=np.float32) / 127.5 - 1
        rows.append(torch.from_numpy(a).permute(2, 0, 1)[None])
        labels.append(f"{i}: {scene.phrasing}")
    print(save_grid(rows, args.grid, row_labels=labels, scale=args.scale))


if __name__ == "__main__":
    main()
