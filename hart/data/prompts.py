"""The prompt language of the `shapes` scenes: what a caption asks for (:class:`PromptSpec`),
the words and phrasing templates it is written in, and the parser that reads a prompt back.

Colours, shapes, sizes, relations and counts come from small fixed vocabularies (``COLOURS``,
``SHAPES``, ``SIZES``, ``RELATIONS``, ``COUNTS``). A caption is worded as people write prompts:
a phrasing template (``TEMPLATES``: relation first or last, "and ... it", "on a black
background") and for each slot a word: size synonyms or none, "a"/"an"/"one" or no article,
relation wordings ("to the left of", "on top of", "beneath"...), counts in words or digits.
``PromptSpec.caption`` is the canonical wording; :func:`phrase` words a spec with any template;
held-out templates (``HELDOUT_TEMPLATES``: "there is/are ...", "B with A left of it", "a pair
of") caption no split of the dataset (:mod:`hart.data.shapes`). :func:`parse_prompt` reads a
prompt in any of these wordings back into a :class:`PromptSpec`.

Bottom layer (hart.data): imports nothing of the project but :mod:`hart.common`.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import numpy as np

from hart.common.errors import UserError

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
PHRASE_SEED = 0x5ca1e  # phrasings are drawn from their own stream: scenes are those of the grammar alone

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
    rng = np.random.default_rng([PHRASE_SEED, PHRASINGS.index(which), *np.atleast_1d(seed).tolist()])
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


class PromptError(UserError):
    """A prompt outside the grammar: the whole line, and ``reason`` alone (for a report that
    names the prompt itself)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def read_prompt(text: str) -> tuple:
    """(:class:`PromptSpec`, :class:`Template`) of a prompt worded by any template (case, commas
    and a final full stop do not matter); a prompt outside them is one :class:`UserError` line."""
    norm = _normalise(text)
    for w in norm.split():
        if w not in VOCABULARY:
            raise PromptError(f"unknown word {w!r} in prompt {text!r}; the shapes grammar knows colours "
                              f"{', '.join(COLOURS)}; shapes {', '.join(SHAPES)}; sizes {', '.join(_SIZE_OF)}; "
                              f"relations {', '.join(_RELATION_OF)}; counts {', '.join(_COUNT_OF)}, a pair of",
                              f"unknown word {w!r}")
    for t, regex in _TEMPLATE_RES:
        m = regex.fullmatch(norm + " ")
        if m:
            return _spec_of(t, m), t
    raise PromptError(f"prompt {text!r} is outside the shapes grammar: expected {GRAMMAR}",
                      f"outside the shapes grammar: expected {GRAMMAR}")


def parse_prompt(text: str) -> PromptSpec:
    """Read a prompt in any wording of the templates back into a :class:`PromptSpec` (a size
    the prompt leaves out is None); a prompt outside the grammar is one :class:`UserError` line."""
    return read_prompt(text)[0]


# ----------------------------------------------------------------------------- listing

def template_table() -> list[str]:
    """One line per template: train/heldout, name, pattern and a canonical example; then the
    words each slot takes."""
    examples = {"single": PromptSpec((ObjectSpec("red", "circle", "large"),)),
                "pair": PromptSpec((ObjectSpec("red", "circle", "small"), ObjectSpec("blue", "square", "large")),
                                   "left of"),
                "count": PromptSpec((ObjectSpec("green", "triangle", "small"),) * 2)}
    def example(t):  # the canonical wording, "to the left of" where there is a relation
        texts = [text for text, meant in phrasings(examples[t.kind], t) if meant == examples[t.kind]]
        return next((x for x in texts if " to the " in f" {x} " and x.split()[0] in ("a", "to", "there")), texts[0])

    return [f"{'heldout' if t.heldout else 'train':<8} {t.name:<16} {t.pattern:<30} {example(t)}" for t in TEMPLATES] + [
        f"slots: ART [a|an|one], ART1 a|an|one, A/B [{'|'.join(_SIZE_OF)}] COLOUR SHAPE, AS the plural, "
        f"N {'|'.join(_COUNT_OF)}, PAIR a pair of, REL/IREL {', '.join(_RELATION_OF)}"]
