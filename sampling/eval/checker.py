"""A rule-based checker of prompt alignment for the `shapes` grammar (in the spirit of
GenEval, without a detector network).

:func:`check` reads an image back against a prompt of the grammar
(:func:`hart.data.shapes.parse_prompt`): pixels are classified to the nearest palette colour
(hue: colour / max channel) above a brightness threshold, connected components per colour
make objects, shapes are the best soft IoU against rendered templates, sizes come from the
area and positions from centroids. ``hart eval-alignment`` reports it on ground-truth renders of
the prompts it scores (its ceiling column); the tests hold it at >= 0.99 on both splits.
"""
from __future__ import annotations

import functools
from collections import Counter, deque
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from hart.data.shapes import (BACKGROUND, COLOURS, SHAPES, SIZES, SUPERSAMPLE, ObjectSpec, PromptSpec, Scene,
                              draw_shape, parse_prompt)


FG_THRESHOLD = 0.5  # coverage (max channel / 255) above which a pixel belongs to an object
MIN_AREA = 0.012  # components smaller than this fraction of the image are specks (a small
# triangle is ~0.045)
TEMPLATE = 12  # side of the bbox-normalised masks compared
BLUR_TEMPLATE = 0.6  # px, Gaussian blur of the extra templates
_HUES = np.array([np.array(c, np.float32) / max(c) for c in COLOURS.values()])  # (8, 3)


@dataclass(frozen=True)
class Detection:
    """One object found in an image: centroid (x, y) and ``side`` (estimated box side) as
    fractions of the image side, ``score`` the best template IoU, ``bbox`` in pixels."""

    colour: str
    shape: str
    size: str
    x: float
    y: float
    side: float
    score: float
    bbox: tuple


def _components(mask: np.ndarray) -> list:
    """8-connected components of a boolean mask, as index arrays (rows, cols)."""
    seen = np.zeros_like(mask)
    out = []
    H, W = mask.shape
    for r0, c0 in zip(*np.nonzero(mask)):
        if seen[r0, c0]:
            continue
        seen[r0, c0] = True
        q, rows, cols = deque([(r0, c0)]), [], []
        while q:
            r, c = q.popleft()
            rows.append(r)
            cols.append(c)
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    rr, cc = r + dr, c + dc
                    if 0 <= rr < H and 0 <= cc < W and mask[rr, cc] and not seen[rr, cc]:
                        seen[rr, cc] = True
                        q.append((rr, cc))
        out.append((np.array(rows), np.array(cols)))
    return out


def _dilate(mask: np.ndarray) -> np.ndarray:
    p = np.pad(mask, 1)
    H, W = mask.shape
    out = np.zeros_like(mask)
    for dr in range(3):
        for dc in range(3):
            out |= p[dr:dr + H, dc:dc + W]
    return out


def _blobs(image: Image.Image):
    """(colour index, soft mask (H, W) float, binary bbox) per component above MIN_AREA."""
    a = np.asarray(image.convert("RGB"), dtype=np.float32)
    m = a.max(-1)
    cov = m / 255.0
    hue = a / np.maximum(m, 1.0)[..., None]
    cls = ((hue[:, :, None, :] - _HUES) ** 2).sum(-1).argmin(-1)  # nearest hue, (H, W)
    fg = cov >= FG_THRESHOLD
    H, W = fg.shape
    comps = []
    for c in range(len(_HUES)):
        for rows, cols in _components(fg & (cls == c)):
            if len(rows) >= MIN_AREA * H * W:
                comps.append((c, rows, cols))
    out = []
    for c, rows, cols in comps:
        own = np.zeros_like(fg)
        own[rows, cols] = True
        # the component plus its anti-aliased fringe (background pixels next to it)
        region = own | (_dilate(own) & ~fg)
        out.append((c, cov * region, (int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max()))))
    return out


def _patch(soft: np.ndarray, bbox) -> np.ndarray:
    x0, y0, x1, y1 = bbox
    crop = np.ascontiguousarray(soft[y0:y1 + 1, x0:x1 + 1], dtype=np.float32)
    return np.asarray(Image.fromarray(crop, "F").resize((TEMPLATE, TEMPLATE), Image.BILINEAR))


@functools.lru_cache(maxsize=16)
def _templates(resolution: int):
    """Bbox-normalised soft masks of every shape rendered at this resolution (a few sizes and
    sub-pixel offsets), and each shape's fill (soft area / side^2)."""
    pats, names, fill = [], [], {}
    for shape in SHAPES:
        areas = []
        for side in (0.30, 0.37, 0.44, 0.6):
            for off in ((0.0, 0.0), (0.25, 0.5), (0.5, 0.25), (0.75, 0.75)):
                c = 0.5 + off[0] / resolution, 0.5 + off[1] / resolution
                scene = Scene(PromptSpec((ObjectSpec("white", shape, "small"),)), (c,))
                img = _render_side(scene, resolution, side)
                (_, soft, bbox), = _blobs(img)
                areas.append(soft.sum() / (side * resolution) ** 2)
                # blurred copies too: generated images are softer than the renders
                for im in (img, img.filter(ImageFilter.GaussianBlur(BLUR_TEMPLATE))):
                    (_, soft, bbox), = _blobs(im)
                    pats.append(_patch(soft, bbox))
                    names.append(shape)
        fill[shape] = float(np.mean(areas))
    return np.stack(pats), names, fill


def _render_side(scene: Scene, resolution: int, side: float) -> Image.Image:
    big = resolution * SUPERSAMPLE
    img = Image.new("RGB", (big, big), BACKGROUND)
    o, (x, y) = scene.spec.objects[0], scene.centres[0]
    draw_shape(ImageDraw.Draw(img), o.shape, x * big, y * big, side * big, COLOURS[o.colour])
    return img.resize((resolution, resolution), Image.BOX)


def detect(image: Image.Image) -> list:
    """The objects in an image (:class:`Detection`), top to bottom then left to right."""
    W, H = image.size
    pats, names, fill = _templates(min(W, H))
    colours = list(COLOURS)
    cut = (SIZES["small"] + SIZES["large"]) / 2
    ys, xs = np.mgrid[0:H, 0:W] + 0.5  # pixel centres
    out = []
    for c, soft, bbox in _blobs(image):
        p = _patch(soft, bbox)
        iou = np.minimum(pats, p).sum((1, 2)) / np.maximum(np.maximum(pats, p).sum((1, 2)), 1e-6)
        k = int(iou.argmax())
        shape = names[k]
        total = float(soft.sum())
        side = float(np.sqrt(total / fill[shape]) / np.sqrt(W * H))
        out.append(Detection(colours[c], shape, "large" if side > cut else "small",
                             float((soft * xs).sum() / total / W), float((soft * ys).sum() / total / H),
                             side, float(iou[k]), bbox))
    return sorted(out, key=lambda d: (round(d.y, 2), d.x))


def _contains(found: Counter, need: Counter) -> bool:
    return all(found[k] >= v for k, v in need.items())


def _relation_holds(a: Detection, b: Detection, relation: str) -> bool:
    """a RELATION b on the dominant axis of the centroids' offset (image y points down)."""
    dx, dy = b.x - a.x, b.y - a.y
    if relation in ("left of", "right of"):
        return abs(dx) > abs(dy) and (dx > 0) == (relation == "left of")
    return abs(dy) > abs(dx) and (dy > 0) == (relation == "above")


def _candidates(o: ObjectSpec, dets: list) -> list:
    """Detections for a required object: the best level of match that exists (shape, colour
    and size; shape and colour; shape)."""
    for level in (3, 2, 1):
        c = [d for d in dets if d.shape == o.shape and (level < 2 or d.colour == o.colour)
             and (level < 3 or o.size is None or d.size == o.size)]
        if c:
            return c
    return []


def check(image: Image.Image, prompt) -> dict:
    """Whether each requirement of ``prompt`` (text or :class:`PromptSpec`) holds in ``image``:
    ``object`` (every required shape), ``colour`` (each shape in its colour), ``size`` (each
    shape in its size, where the prompt gives one), ``count`` (exactly the prompt's objects, no extra),
    ``position`` (the relation, None without one) and ``all``; and ``blank`` (nothing found at
    all: a blank or near-blank frame, counted apart; not one of the requirements)."""
    spec = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    dets = detect(image)
    need = spec.objects
    r = {
        "object": _contains(Counter(d.shape for d in dets), Counter(o.shape for o in need)),
        "colour": _contains(Counter((d.shape, d.colour) for d in dets), Counter((o.shape, o.colour) for o in need)),
        "size": _contains(Counter((d.shape, d.size) for d in dets), Counter((o.shape, o.size) for o in need if o.size)),
        "count": len(dets) == len(need),
        "position": None,
    }
    if spec.relation:
        a_s, b_s = _candidates(need[0], dets), _candidates(need[1], dets)
        r["position"] = any(_relation_holds(a, b, spec.relation) for a in a_s for b in b_s if a is not b)
    r["all"] = all(v for k, v in r.items() if v is not None)
    r["blank"] = not dets
    return r


CHECK_KEYS = ("object", "colour", "size", "count", "position", "all")
