"""Procedural captioned scenes for text-to-image: the `shapes` grammar, its phrasings, parser and renderer.

A scene is one to three flat shapes on black: a single object ("a large red circle"), a pair
with a spatial relation ("a small red circle left of a large blue square") or a count of
identical objects ("two small green triangles"). Colours, shapes and sizes come from small
fixed vocabularies (``COLOURS``, ``SHAPES``, ``SIZES``, ``RELATIONS``). Some colour x shape
pairs and some (shape, relation, shape) triples never appear in the train and test splits;
the ``heldout`` split has only scenes with at least one of them (composition tests).

A scene's caption is worded as people write prompts: a phrasing template (``TEMPLATES``:
relation first or last, "and ... it", "on a black background") and for each slot a word drawn
from the scene index: size synonyms or none, "a"/"an"/"one" or no article, relation wordings
("to the left of", "on top of", "beneath"...), counts in words or digits. ``Scene.caption``
and ``PromptSpec.caption`` stay the canonical wording; :func:`phrase` words a spec with any
template. Held-out templates (``HELDOUT_TEMPLATES``: "there is/are ...", "B with A left of
it", "a pair of") caption no split; ``sample_scene(..., phrasing="heldout")`` draws them.

:func:`parse_prompt` reads a prompt in any of these wordings back into a :class:`PromptSpec`;
the alignment checker that reads an image back against it is :mod:`sampling.eval.checker`.

    python -m hart.data.shapes --grid shapes.png --num 16 --scale 4
    python -m hart.data.shapes --templates

Bottom layer (hart.data): imports nothing of the project but :mod:`hart.common`.
"""
from __future__ import annotations

import argparse
import itertools
import re
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


# ----------------------------------------------------------------------------- phrasings

# the words people use for each size, relation and count; the first is the canonical one
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
RELATION_WORDS = {"left of": ("left of", "to the left of", "on the left of"),
                  "right of": ("right of", "to the right of", "on the right of"),
                  "above": ("above", "over", "on top of"),
                  "below": ("below", "under", "beneath")}
COUNT_WORDS = {2: ("two", "2"), 3: ("three", "3")}
ARTICLES = ("a", "one", "")  # "a" becomes "an" before a vowel; "" drops the article

# Slots of a template pattern: ART an optional article, ART1 a required one, A / B objects[0] /
# objects[1] ([size] colour shape, the size word optional), AS objects[0] in the plural (a
# count), N the count (word or digit), PAIR "a pair of" (counts of 2), REL the relation of A to
# B, IREL the inverse relation (of B to A). Lower-case words are literal.
SLOTS = ("ART", "ART1", "A", "B", "AS", "N", "PAIR", "REL", "IREL")


@dataclass(frozen=True)
class Template:
    """A way to word a scene of one ``kind``: ``pattern`` of slots (``SLOTS``) and literal words.
    Held-out templates never caption a train or test scene; ``counts`` limits a count
    template to these counts."""

    name: str
    kind: str
    pattern: str
    heldout: bool = False
    counts: tuple = (2, 3)

    def applies(self, spec: PromptSpec) -> bool:
        return spec.kind == self.kind and (self.kind != "count" or len(spec.objects) in self.counts)


TEMPLATES = (
    # training templates; CANONICAL names the one that, with the first word of every slot, is the caption
    Template("object", "single", "ART A"),
    Template("object-on-black", "single", "ART1 A on a black background"),
    Template("pair", "pair", "ART A REL ART B"),
    Template("pair-and-it", "pair", "ART1 A and ART1 B IREL it"),
    Template("relation-first", "pair", "REL ART1 B is ART1 A"),
    Template("count", "count", "N AS"),
    Template("count-on-black", "count", "N AS on a black background"),
    # held out of train and test: "there is / there are", "B with A REL it", "a pair of"
    Template("there-is-object", "single", "there is ART1 A", heldout=True),
    Template("there-is-pair", "pair", "there is ART1 A REL ART1 B", heldout=True),
    Template("pair-with-it", "pair", "ART1 B with ART1 A REL it", heldout=True),
    Template("there-are-count", "count", "there are N AS", heldout=True),
    Template("pair-of", "count", "PAIR AS", heldout=True, counts=(2,)),
)
TEMPLATE_NAMES = {t.name: t for t in TEMPLATES}
CANONICAL = {"single": "object", "pair": "pair", "count": "count"}  # the template of each kind's caption
TRAIN_TEMPLATES = tuple(t for t in TEMPLATES if not t.heldout)
HELDOUT_TEMPLATES = tuple(t for t in TEMPLATES if t.heldout)
PHRASINGS = ("train", "heldout")  # template sets a scene's phrasing is drawn from
_PHRASE_SEED = 0x5ca1e  # phrasings are drawn from their own stream: scenes are those of the grammar alone

GRAMMAR = ("'a large red circle', 'two small green triangles', 'a red circle to the left of a blue square' "
           "and other wordings (python -m hart.data.shapes --templates lists them)")


def _template(template) -> Template:
    if isinstance(template, Template):
        return template
    if template not in TEMPLATE_NAMES:
        raise UserError(f"unknown phrasing template {template!r}; choose one of: {', '.join(TEMPLATE_NAMES)}")
    return TEMPLATE_NAMES[template]


def _object_options(o: ObjectSpec, plural: bool) -> list:
    """(words, size dropped) for one object slot: each size word, and none."""
    shape = PLURALS[o.shape] if plural else o.shape
    sizes = (*SIZE_WORDS[o.size], "") if o.size else ("",)
    return [(" ".join(w for w in (s, o.colour, shape) if w), bool(o.size) and not s) for s in sizes]


def _slot_options(slot: str, spec: PromptSpec) -> list:
    """(words, role whose size the words leave out or None) for each way to fill ``slot``."""
    o = spec.objects
    if slot == "ART":
        return [(a, None) for a in ARTICLES]
    if slot == "ART1":
        return [(a, None) for a in ARTICLES if a]
    if slot in ("A", "B", "AS"):
        k = 1 if slot == "B" else 0
        return [(w, k if dropped else None) for w, dropped in _object_options(o[k], slot == "AS")]
    if slot == "N":
        return [(w, None) for w in COUNT_WORDS[len(o)]]
    if slot == "PAIR":
        return [("a pair of", None)]
    if slot in ("REL", "IREL"):
        rel = spec.relation if slot == "REL" else INVERSE[spec.relation]
        return [(w, None) for w in RELATION_WORDS[rel]]
    return [(slot, None)]  # a literal word


def _join(parts) -> str:
    words = " ".join(p for p in parts if p).split()
    return " ".join("an" if w == "a" and k + 1 < len(words) and words[k + 1][0] in "aeiou" else w
                    for k, w in enumerate(words))


def _meant(spec: PromptSpec, dropped) -> PromptSpec:
    """``spec`` with the sizes of the ``dropped`` roles left open (a count has one role)."""
    if not dropped:
        return spec
    objs = tuple(ObjectSpec(x.colour, x.shape, None) if (0 if spec.kind == "count" else k) in dropped else x
                 for k, x in enumerate(spec.objects))
    return PromptSpec(objs, spec.relation)


def phrase(spec: PromptSpec, template="object", rng=None) -> str:
    """``spec`` worded by ``template`` (a :class:`Template` or its name): the canonical word of
    every slot (so ``CANONICAL[spec.kind]`` gives ``spec.caption``, with "an" before a vowel
    where the caption keeps "a"), or with ``rng``
    (a numpy Generator) a choice drawn for each slot, the canonical one twice as likely as
    each other one."""
    t = _template(template)
    if not t.applies(spec):
        raise UserError(f"template {t.name!r} ({t.kind}) does not word a {spec.kind} scene like {spec.caption!r}")
    parts = []
    for slot in t.pattern.split():
        opts = _slot_options(slot, spec)
        k = 0
        if rng is not None and len(opts) > 1:  # the canonical word twice as likely as each other one
            w = np.array([2.0] + [1.0] * (len(opts) - 1))
            k = int(rng.choice(len(opts), p=w / w.sum()))
        parts.append(opts[k][0])
    return _join(parts)


def phrasings(spec: PromptSpec, template) -> list:
    """Every wording ``template`` can give ``spec``: (text, the spec the text asks for), the
    latter with the sizes a wording leaves out open (None)."""
    t = _template(template)
    slots = [_slot_options(slot, spec) for slot in t.pattern.split()]
    out = []
    for choice in itertools.product(*slots):
        out.append((_join(w for w, _ in choice), _meant(spec, {d for _, d in choice if d is not None})))
    return out


def templates_for(spec: PromptSpec, which: str = "train") -> tuple:
    """The templates of ``which`` set (train or heldout) that can word ``spec``."""
    pool = HELDOUT_TEMPLATES if which == "heldout" else TRAIN_TEMPLATES
    return tuple(t for t in pool if t.applies(spec))


def draw_phrasing(spec: PromptSpec, seed, which: str = "train") -> tuple:
    """(text, template name): a template of ``which`` set and its slot choices drawn from ``seed``
    (deterministic)."""
    if which not in PHRASINGS:
        raise UserError(f"unknown phrasing set {which!r}; choose one of: {', '.join(PHRASINGS)}")
    rng = np.random.default_rng([_PHRASE_SEED, PHRASINGS.index(which), *np.atleast_1d(seed).tolist()])
    pool = templates_for(spec, which)
    t = pool[int(rng.integers(len(pool)))]
    return phrase(spec, t, rng), t.name


# ----------------------------------------------------------------------------- parsing

_SIZE_OF = {w: s for s, ws in SIZE_WORDS.items() for w in ws}
_RELATION_OF = {w: r for r, ws in RELATION_WORDS.items() for w in ws}
_COUNT_OF = {w: n for n, ws in COUNT_WORDS.items() for w in ws}
_SINGULAR = {p: s for s, p in PLURALS.items()}
VOCABULARY = frozenset({*COLOURS, *SHAPES, *PLURALS.values(), *_SIZE_OF, *_COUNT_OF, "an", "one",
                        *(w for r in _RELATION_OF for w in r.split()), "pair", "of",
                        *(w for t in TEMPLATES for w in t.pattern.split() if w not in SLOTS)})


def _alternatives(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


def _object_re(role: str, plural: bool) -> str:
    return (rf"(?:(?P<{role}_size>{_alternatives(_SIZE_OF)}) )?(?P<{role}_colour>{_alternatives(COLOURS)}) "
            rf"(?P<{role}_shape>{_alternatives(PLURALS.values() if plural else SHAPES)}) ")


def _template_re(t: Template):
    """A regex matching every wording of ``t`` (words each followed by one space)."""
    art = "(?:a|an|one) "
    pieces = {"ART": f"(?:{art})?", "ART1": art, "A": _object_re("a", False), "B": _object_re("b", False),
              "AS": _object_re("a", True), "N": f"(?P<n>{_alternatives(_COUNT_OF)}) ", "PAIR": "a pair of ",
              "REL": f"(?P<rel>{_alternatives(_RELATION_OF)}) ", "IREL": f"(?P<irel>{_alternatives(_RELATION_OF)}) "}
    return re.compile("".join(pieces.get(w, re.escape(w) + " ") for w in t.pattern.split()))


_TEMPLATE_RES = tuple((t, _template_re(t)) for t in TEMPLATES)


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[,.;:!?]", " ", text.lower()).split())


def _spec_of(t: Template, m) -> PromptSpec:
    def obj(role, plural=False):
        size = m.group(f"{role}_size")
        shape = m.group(f"{role}_shape")
        return ObjectSpec(m.group(f"{role}_colour"), _SINGULAR[shape] if plural else shape,
                          _SIZE_OF[size] if size else None)

    if t.kind == "single":
        return PromptSpec((obj("a"),))
    if t.kind == "count":
        n = _COUNT_OF[m.group("n")] if "N" in t.pattern.split() else 2
        return PromptSpec((obj("a", True),) * n)
    rel = _RELATION_OF[m.group("rel")] if m.groupdict().get("rel") else INVERSE[_RELATION_OF[m.group("irel")]]
    return PromptSpec((obj("a"), obj("b")), rel)


def read_prompt(text: str) -> tuple:
    """(:class:`PromptSpec`, :class:`Template`) of a prompt worded by any template (case, commas
    and a final full stop do not matter); a prompt outside them is one :class:`UserError` line."""
    norm = _normalise(text)
    for w in norm.split():
        if w not in VOCABULARY:
            raise UserError(f"unknown word {w!r} in prompt {text!r}; the shapes grammar knows colours "
                            f"{', '.join(COLOURS)}; shapes {', '.join(SHAPES)}; sizes {', '.join(_SIZE_OF)}; "
                            f"relations {', '.join(_RELATION_OF)}; counts {', '.join(_COUNT_OF)}, a pair of")
    for t, regex in _TEMPLATE_RES:
        m = regex.fullmatch(norm + " ")
        if m:
            return _spec_of(t, m), t
    raise UserError(f"prompt {text!r} is outside the shapes grammar: expected {GRAMMAR}")


def parse_prompt(text: str) -> PromptSpec:
    """Read a prompt in any wording of the templates back into a :class:`PromptSpec` (a size
    the prompt leaves out is None); a prompt outside the grammar is one :class:`UserError` line."""
    return read_prompt(text)[0]


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
    rng = np.random.default_rng([_PHRASE_SEED, 2, seed])
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

def template_table() -> list[str]:
    """One line per template: train/heldout, name, pattern and a canonical example."""
    examples = {"single": PromptSpec((ObjectSpec("red", "circle", "large"),)),
                "pair": PromptSpec((ObjectSpec("red", "circle", "small"), ObjectSpec("blue", "square", "large")),
                                   "left of"),
                "count": PromptSpec((ObjectSpec("green", "triangle", "small"),) * 2)}
    def example(t):  # the canonical wording, "to the left of" where there is a relation
        texts = [text for text, meant in phrasings(examples[t.kind], t) if meant == examples[t.kind]]
        return next((x for x in texts if " to the " in f" {x} " and x.split()[0] in ("a", "to", "there")), texts[0])

    return [f"{'heldout' if t.heldout else 'train':<8} {t.name:<16} {t.pattern:<30} {example(t)}" for t in TEMPLATES]


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
        print(f"slots: ART [a|an|one], ART1 a|an|one, A/B [{'|'.join(_SIZE_OF)}] COLOUR SHAPE, AS the plural, "
              f"N {'|'.join(_COUNT_OF)}, PAIR a pair of, REL/IREL {', '.join(_RELATION_OF)}")
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
