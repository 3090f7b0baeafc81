"""Procedural captioned scenes for text-to-image: the `shapes` grammar, its parser and renderer.

A scene is one to three flat shapes on black: a single object ("a large red circle"), a pair
with a spatial relation ("a small red circle left of a large blue square") or a count of
identical objects ("two small green triangles"). Colours, shapes and sizes come from small
fixed vocabularies (``COLOURS``, ``SHAPES``, ``SIZES``, ``RELATIONS``). Some colour x shape
pairs and some (shape, relation, shape) triples never appear in the train and test splits;
the ``heldout`` split has only scenes with at least one of them (composition tests).

:func:`parse_prompt` reads a prompt of this grammar back into a :class:`PromptSpec`; the
alignment checker that reads an image back against it is :mod:`sampling.eval.checker`.

    python -m hart.data.shapes --grid shapes.png --num 16 --scale 4

Bottom layer (hart.data): imports nothing of the project but :mod:`hart.common`.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from hart.common.errors import UserError, cli_entry

# saturated, well separated hues; each has a channel at 255, so on black the max channel of a
# pixel is its coverage and colour / max channel its hue, anti-aliased edges included
COLOURS = {
    "red": (255, 0, 0),
    "orange": (255, 128, 0),
    "yellow": (255, 255, 0),
    "green": (0, 255, 0),
    "cyan": (0, 255, 255),
    "blue": (0, 80, 255),
    "purple": (170, 0, 255),
    "white": (255, 255, 255),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
PLURALS = {s: s + ("es" if s.endswith("s") else "s") for s in SHAPES}
SIZES = {"small": 0.30, "large": 0.44}  # side of the object's box, in units of the image side
RELATIONS = ("left of", "right of", "above", "below")
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
COUNTS = {"two": 2, "three": 3}
KINDS = ("single", "pair", "count")
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

GRAMMAR = ("'a [small|large] COLOUR SHAPE', 'a ... SHAPE RELATION a ... SHAPE' or "
           "'two|three [small|large] COLOUR SHAPEs'")


# ----------------------------------------------------------------------------- specs

@dataclass(frozen=True)
class ObjectSpec:
    colour: str
    shape: str
    size: str | None = None  # None (only in a parsed prompt): any size

    def words(self) -> str:
        return " ".join(w for w in (self.size, self.colour, self.shape) if w)


@dataclass(frozen=True)
class PromptSpec:
    """What a caption asks for: ``objects`` (a count repeats one object), and for a pair the
    ``relation`` of objects[0] to objects[1]."""

    objects: tuple
    relation: str | None = None

    @property
    def kind(self) -> str:
        return "pair" if self.relation else ("count" if len(self.objects) > 1 else "single")

    @property
    def caption(self) -> str:
        o = self.objects
        if self.relation:
            return f"a {o[0].words()} {self.relation} a {o[1].words()}"
        if len(o) > 1:
            n = {v: k for k, v in COUNTS.items()}[len(o)]
            return f"{n} {' '.join(w for w in (o[0].size, o[0].colour) if w)} {PLURALS[o[0].shape]}"
        return f"a {o[0].words()}"


@dataclass(frozen=True)
class Scene:
    """A prompt and where its objects are: box centres as fractions of the image side."""

    spec: PromptSpec
    centres: tuple

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


def _tokens(text: str) -> list:
    ws = text.lower().strip().rstrip(".").split()
    out = []
    for w in ws:
        if w == "of" and out and out[-1] in ("left", "right"):
            out[-1] += " of"
        else:
            out.append(w)
    return out


def parse_prompt(text: str) -> PromptSpec:
    """Read a caption of the scene grammar back (the size words are optional, "an" and "one"
    are read as "a"); a prompt outside the grammar is one clear :class:`UserError` line."""
    words = _tokens(text)
    known = (set(COLOURS) | set(SHAPES) | set(PLURALS.values()) | set(SIZES) | set(RELATIONS) | set(COUNTS)
             | {"a", "an", "one"})
    for w in words:
        if w not in known:
            raise UserError(f"unknown word {w!r} in prompt {text!r}; the shapes grammar knows colours "
                            f"{', '.join(COLOURS)}; shapes {', '.join(SHAPES)}; sizes {', '.join(SIZES)}; "
                            f"relations {', '.join(RELATIONS)}; counts {', '.join(COUNTS)}")
    spec = _read(words)
    if spec is None:
        raise UserError(f"prompt {text!r} is outside the shapes grammar: expected {GRAMMAR}")
    return spec


def _read_object(ws: list, plural: bool) -> ObjectSpec | None:
    size = ws.pop(0) if ws and ws[0] in SIZES else None
    if len(ws) < 2 or ws[0] not in COLOURS:
        return None
    colour, shape = ws.pop(0), ws.pop(0)
    if plural:
        shape = next((s for s, p in PLURALS.items() if p == shape), None)
    return ObjectSpec(colour, shape, size) if shape in SHAPES else None


def _read(words: list) -> PromptSpec | None:
    ws = list(words)
    if ws and ws[0] in COUNTS:
        n = COUNTS[ws.pop(0)]
        o = _read_object(ws, plural=True)
        return PromptSpec((o,) * n) if o and not ws else None
    if not ws or ws.pop(0) not in ("a", "an", "one"):
        return None
    a = _read_object(ws, plural=False)
    if a is None:
        return None
    if not ws:
        return PromptSpec((a,))
    rel = ws.pop(0)
    if rel not in RELATIONS or not ws or ws.pop(0) not in ("a", "an", "one"):
        return None
    b = _read_object(ws, plural=False)
    return PromptSpec((a, b), rel) if b and not ws else None


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


def sample_scene(split: str, index: int) -> Scene:
    """Scene ``index`` of ``split``, deterministic. train and test (other seeds) never hold a
    held-out element; heldout always holds one. Kinds in the proportions of KIND_P."""
    if split not in SPLITS:
        raise UserError(f"unknown shapes split {split!r}; choose one of: {', '.join(SPLITS)}")
    rng = np.random.default_rng(SPLIT_OFFSETS[split] + index)
    kind = KINDS[rng.choice(len(KINDS), p=KIND_P)]
    while True:  # rejection within the kind keeps the kind proportions of every split
        spec = _draw_spec(kind, rng)
        if is_heldout(spec) == (split == "heldout"):
            break
    return Scene(spec, _layout(spec, rng))


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
    p.add_argument("--grid", required=True, help="write a PNG of scenes with their captions")
    p.add_argument("--split", default="train", choices=SPLITS)
    p.add_argument("--num", type=int, default=12, help="scenes in the grid")
    p.add_argument("--start", type=int, default=0, help="first scene index")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--scale", type=int, default=4, help="grid pixel magnification")
    args = p.parse_args(argv)
    import torch

    from hart.common.images import save_grid

    rows, labels = [], []
    for i in range(args.start, args.start + args.num):
        scene = sample_scene(args.split, i)
        a = np.asarray(render(scene, args.resolution), dtype=np.float32) / 127.5 - 1
        rows.append(torch.from_numpy(a).permute(2, 0, 1)[None])
        labels.append(f"{i}: {scene.caption}")
    print(save_grid(rows, args.grid, row_labels=labels, scale=args.scale))


if __name__ == "__main__":
    main()
