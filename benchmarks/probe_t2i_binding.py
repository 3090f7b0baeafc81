"""Where does a shapes text-to-image model lose which colour goes with which shape in a pair?

Three places it could be lost, each measured here without training the model:

1. text features (``--part text``): pair captions (canonical wording, two colours and two
   shapes, no held-out element) are encoded with the model's own text path (:mod:`hart.text`:
   the 16 MiniLM token states; the generator's embedded prefix after ``context_norm`` +
   ``context_embed``; the AdaLN vector ``vec``, the max over the embedded prefix) and linear
   probes (multinomial logistic regression in torch, L2 picked on a validation split; split
   60/20/20 by twin group) answer, for each shape of a caption:

   - colour_of_shape: "what colour is the circle?", scored as a choice between the caption's
     two colours. Every caption comes with its colour-swapped twin ("a small red circle left
     of a large blue square" / "a small blue circle left of a large red square": the same
     words bound the other way), in the same split;
   - layout_of_shape: "is the circle at the left / upper end?". Twin: the objects exchanged
     around the relation ("a large blue square left of a small red circle"), same words;
   - control_axis: horizontal or vertical relation (a word any pooling keeps).

   Sequence features (flattened tokens, mean / max pools, ``vec``, bag of words) get one probe
   per queried shape; the token state at the shape's word (what an attention head that finds
   the word reads) one probe for all shapes. The bag of words is 0.5 on both twin tasks by
   construction (twins have the same words and opposite answers).

2. generator (``--part gen``): pair prompts of the train split (canonical captions, distinct
   colours and shapes) are drawn at several guidance values and the checker's detections
   (:func:`sampling.eval.checker.detect`) sorted: both objects bound right, colours swapped
   (shape A in B's colour and B in A's), one bound right, a shape missing...; per object, the
   share drawn in its own colour, in the other object's colour, or in a third; the relation
   right or mirrored; a missing shape as too few objects, the other shape drawn twice, or a
   shape the prompt lacks. Guidance 0 turns CFG off.

3. tokenizer (``--part gen`` too): the same sorting on the ground-truth renders of the same
   scenes and on the tokenizer's reconstructions of them (discrete ids only, and hybrid).

    python benchmarks/probe_t2i_binding.py --part text --groups 2000
    python benchmarks/probe_t2i_binding.py --part gen --num 500 --cfg 0,1.5,3,5 --out binding.json
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter

import numpy as np
import torch

from hart.data.shapes import (COLOURS, INVERSE, RELATIONS, SHAPES, SIZES, ObjectSpec, PromptSpec, is_heldout,
                              render, sample_scene)

COLOUR_RANK = {c: i for i, c in enumerate(sorted(COLOURS))}
SHAPE_RANK = {s: i for i, s in enumerate(sorted(SHAPES))}
FIRST_END = {"left of": True, "above": True, "right of": False, "below": False}  # A at the left / top end


# ----------------------------------------------------------------------------- 1. text features

def all_pair_specs() -> list:
    """Every pair spec with two different colours and two different shapes and no held-out element."""
    out = []
    for ca in COLOURS:
        for cb in COLOURS:
            for sa in SHAPES:
                for sb in SHAPES:
                    if ca == cb or sa == sb:
                        continue
                    for za in SIZES:
                        for zb in SIZES:
                            for rel in RELATIONS:
                                spec = PromptSpec((ObjectSpec(ca, sa, za), ObjectSpec(cb, sb, zb)), rel)
                                if not is_heldout(spec):
                                    out.append(spec)
    return out


def colour_twin(spec: PromptSpec) -> PromptSpec:
    """The same words with the colours bound the other way."""
    a, b = spec.objects
    return PromptSpec((ObjectSpec(b.colour, a.shape, a.size), ObjectSpec(a.colour, b.shape, b.size)), spec.relation)


def order_twin(spec: PromptSpec) -> PromptSpec:
    """The same words with the two objects exchanged around the relation (the layout mirrored)."""
    a, b = spec.objects
    return PromptSpec((b, a), spec.relation)


def twins(specs: list, twin, groups: int, rng) -> tuple:
    """(specs, group ids): ``groups`` unordered twin pairs, both members kept, in order."""
    seen, out, gs = set(), [], []
    for k in rng.permutation(len(specs)):
        s = specs[k]
        t = twin(s)
        if is_heldout(t) or s.caption in seen or t.caption in seen:
            continue
        seen.update((s.caption, t.caption))
        out += [s, t]
        gs += [len(out) // 2 - 1] * 2
        if len(out) // 2 >= groups:
            break
    return out, np.array(gs)


def colour_queries(spec: PromptSpec) -> list:
    """"What colour is shape s?" for both shapes: (shape, answer, the other object's colour)."""
    a, b = spec.objects
    return [(a.shape, a.colour, b.colour), (b.shape, b.colour, a.colour)]


def layout_queries(spec: PromptSpec) -> list:
    """"Is shape s at the left / upper end?" for both shapes: (shape, 1/0, None)."""
    a, b = spec.objects
    first = a if FIRST_END[spec.relation] else b
    return [(a.shape, int(first is a), None), (b.shape, int(first is b), None)]


def text_features(pipe, captions: list, batch: int = 256) -> dict:
    """Per caption, the text features the generator sees: sequence-level (N, D) arrays and the
    per-token states (N, T, D) of MiniLM and of the embedded prefix, with the token ids."""
    key = tuple(captions)
    if key not in _FEATURES:
        _FEATURES.clear()
        _FEATURES[key] = _text_features(pipe, captions, batch)
    return _FEATURES[key]


_FEATURES: dict = {}


@torch.no_grad()
def _text_features(pipe, captions: list, batch: int) -> dict:
    enc, gen = pipe.text_encoder, pipe.generator
    keys = ("minilm_tokens", "minilm_mean", "minilm_max", "prefix_tokens", "adaln_vec", "ids",
            "minilm_states", "prefix_states")
    out = {k: [] for k in keys}
    for s in range(0, len(captions), batch):
        part = captions[s:s + batch]
        tok, mask = enc.encode(part, warn=False)
        ids = enc.tokenizer(part, padding="max_length", max_length=enc.max_length, truncation=True,
                            return_tensors="pt").input_ids
        m = mask.unsqueeze(-1).float()
        cond = gen.condition((tok, mask))
        prefix = cond.prefix * m
        out["minilm_tokens"].append((tok * m).flatten(1))
        out["minilm_mean"].append((tok * m).sum(1) / m.sum(1))
        out["minilm_max"].append(tok.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1))
        out["prefix_tokens"].append(prefix.flatten(1))
        out["adaln_vec"].append(cond.vec)
        out["ids"].append(ids)
        out["minilm_states"].append(tok * m)
        out["prefix_states"].append(prefix)
    return {k: torch.cat(v).float().numpy() if k != "ids" else torch.cat(v).numpy() for k, v in out.items()}


def fit_softmax(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float):
    """Multinomial logistic regression (full-batch L-BFGS, ``l2`` x the squared weights) ->
    (w (D, classes), b). With fewer rows than features it is solved in the rows' span (w =
    x^T a, exact for an L2 penalty), so a 6,144-wide probe costs what a 1,000-wide one does."""
    dual = x.shape[0] < x.shape[1]
    k = x @ x.T if dual else x
    a = torch.zeros(k.shape[1], classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([a, b], lr=1, max_iter=300, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        ka = k @ a
        penalty = (a * ka).sum() if dual else (a * a).sum()
        loss = torch.nn.functional.cross_entropy(ka + b, y) + l2 * penalty
        loss.backward()
        return loss
    opt.step(closure)
    a = a.detach()
    return (x.T @ a if dual else a), b.detach()


def probe(x: np.ndarray, y: np.ndarray, alt: np.ndarray, part: np.ndarray, classes: int,
          l2s=(1e-5, 1e-4, 1e-3, 1e-2, 1e-1)) -> tuple:
    """Linear probe trained on part 0, L2 picked on part 1; predictions on every row. With
    ``alt`` (the other candidate class per row, or -1) the prediction is the better of y and
    alt (a binding decision between the two colours of the caption)."""
    x = torch.from_numpy(x).double()
    tr, va = torch.from_numpy(part == 0), torch.from_numpy(part == 1)
    mu, sd = x[tr].mean(0), x[tr].std(0).clamp(min=1e-6)
    x = (x - mu) / sd
    yt, at = torch.from_numpy(y).long(), torch.from_numpy(alt).long()

    def correct(w, b):
        logits = x @ w + b
        if (at >= 0).all():
            return logits.gather(1, yt[:, None])[:, 0] > logits.gather(1, at[:, None])[:, 0]
        return logits.argmax(1) == yt

    scores = {}
    for l2 in l2s:
        ok = correct(*fit_softmax(x[tr], yt[tr], classes, l2))
        scores[l2] = float(ok[va].double().mean())
    best = max(l2s, key=scores.get)
    return correct(*fit_softmax(x[tr], yt[tr], classes, best)).numpy(), best


SEQUENCE_FEATURES = ("bag_of_words", "minilm_tokens", "prefix_tokens", "minilm_mean", "minilm_max", "adaln_vec")
LOCAL_FEATURES = ("minilm_at_shape", "prefix_at_shape")


def query_task(pipe, specs: list, groups: np.ndarray, queries, classes: int, seed: int) -> dict:
    """Test accuracy of linear probes answering ``queries(spec)`` from each feature: sequence
    features with one probe per queried shape, the token state at the shape's word with one
    probe shared by all shapes. Split 60/20/20 by twin group."""
    rng = np.random.default_rng(seed)
    ug = rng.permutation(np.unique(groups))
    split = {g: (0 if i < 0.6 * len(ug) else 1 if i < 0.8 * len(ug) else 2) for i, g in enumerate(ug)}
    captions = [s.caption for s in specs]
    feats = text_features(pipe, captions)
    words = sorted({w for c in captions for w in c.split()})
    feats["bag_of_words"] = np.array([[c.split().count(w) for w in words] for c in captions], np.float32)
    colour_ix = {c: i for i, c in enumerate(COLOURS)}
    rows = []  # (caption index, shape, answer, alternative)
    for i, s in enumerate(specs):
        for shape, ans, other in queries(s):
            rows.append((i, shape, colour_ix[ans] if isinstance(ans, str) else ans,
                         colour_ix[other] if other is not None else -1))
    ci = np.array([r[0] for r in rows])
    shp = np.array([r[1] for r in rows])
    y = np.array([r[2] for r in rows])
    alt = np.array([r[3] for r in rows])
    part = np.array([split[groups[i]] for i in ci])
    test = part == 2
    out = {"captions": len(captions), "queries": len(rows), "test_queries": int(test.sum())}
    for name in SEQUENCE_FEATURES:
        ok, l2 = np.zeros(len(rows), bool), []
        for shape in SHAPES:
            sel = shp == shape
            o, b = probe(feats[name][ci[sel]], y[sel], alt[sel], part[sel], classes)
            ok[sel] = o
            l2.append(b)
        out[name] = {"test": float(ok[test].mean()), "train": float(ok[part == 0].mean()),
                     "dim": int(feats[name].shape[1]), "l2": l2}
    shape_ids = {s: pipe.text_encoder.tokenizer.convert_tokens_to_ids(s) for s in SHAPES}
    at = np.array([int(np.nonzero(feats["ids"][i] == shape_ids[s])[0][0]) for i, s in zip(ci, shp)])
    for name, src in (("minilm_at_shape", "minilm_states"), ("prefix_at_shape", "prefix_states")):
        x = feats[src][ci, at]
        ok, l2 = probe(x, y, alt, part, classes)
        out[name] = {"test": float(ok[test].mean()), "train": float(ok[part == 0].mean()),
                     "dim": int(x.shape[1]), "l2": [l2]}
    return out


def axis_control(pipe, specs: list, groups: np.ndarray, seed: int) -> dict:
    """Control: horizontal or vertical relation (a word any pooling keeps), per sequence feature."""
    rng = np.random.default_rng(seed)
    ug = rng.permutation(np.unique(groups))
    split = {g: (0 if i < 0.6 * len(ug) else 1 if i < 0.8 * len(ug) else 2) for i, g in enumerate(ug)}
    part = np.array([split[g] for g in groups])
    feats = text_features(pipe, [s.caption for s in specs])
    y = np.array([int(s.relation in ("left of", "right of")) for s in specs])
    out = {}
    for name in ("minilm_mean", "minilm_max", "adaln_vec"):
        ok, _ = probe(feats[name], y, np.full(len(y), -1), part, 2)
        out[name] = {"test": float(ok[part == 2].mean())}
    return out


def run_text(pipe, groups: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    specs = all_pair_specs()
    out = {"pair_specs": len(specs)}
    cs, cg = twins(specs, colour_twin, groups, rng)
    os_, og = twins(specs, order_twin, groups, rng)
    for name, (sp, g, queries, classes) in {
            "colour_of_shape": (cs, cg, colour_queries, len(COLOURS)),
            "layout_of_shape": (os_, og, layout_queries, 2)}.items():
        t0 = time.time()
        res = query_task(pipe, sp, g, queries, classes, seed)
        res["example"] = [sp[0].caption, sp[1].caption]
        out[name] = res
        print(f"{name} ({res['captions']} captions, {res['test_queries']} test queries, {time.time() - t0:.0f} s): "
              + " ".join(f"{k}={res[k]['test']:.3f}" for k in SEQUENCE_FEATURES + LOCAL_FEATURES), flush=True)
    out["control_axis"] = axis_control(pipe, cs, cg, seed)
    print("control_axis: " + " ".join(f"{k}={v['test']:.3f}" for k, v in out["control_axis"].items()), flush=True)
    return out


# ----------------------------------------------------------------------------- 2./3. images

def pair_scenes(num: int) -> list:
    """The first ``num`` train-split pair scenes with two different colours and two different shapes."""
    out, j = [], 0
    while len(out) < num:
        s = sample_scene("train", j)
        j += 1
        a, b = s.spec.objects if s.spec.kind == "pair" else (None, None)
        if a is not None and a.colour != b.colour and a.shape != b.shape:
            out.append(s)
    return out


def sort_image(img, spec: PromptSpec) -> dict:
    """One image against a pair spec: binding class, per-object colour, relation."""
    from sampling.eval.checker import check, detect

    dets = detect(img)
    found = {(d.shape, d.colour) for d in dets}
    shapes = {d.shape for d in dets}
    a, b = spec.objects
    right_a, right_b = (a.shape, a.colour) in found, (b.shape, b.colour) in found
    swap = (a.shape, b.colour) in found and (b.shape, a.colour) in found
    missing = None
    if a.shape not in shapes or b.shape not in shapes:
        cls = "shape_missing"
        # why: fewer than two objects drawn, the other shape drawn twice, or a shape the prompt lacks
        if len(dets) < 2:
            missing = "too_few"
        elif all(d.shape in (a.shape, b.shape) for d in dets):
            missing = "same_shape_twice"
        else:
            missing = "wrong_shape"
    elif right_a and right_b:
        cls = "bound_right"
    elif swap:
        cls = "swapped"
    elif right_a or right_b:
        cls = "one_right"
    else:
        cls = "other_colours"
    per_object = []
    for o, other in ((a, b), (b, a)):
        cols = {d.colour for d in dets if d.shape == o.shape}
        if cols:
            per_object.append("own" if o.colour in cols else "other" if other.colour in cols else "third")
    r = check(img, spec)
    mirrored = check(img, PromptSpec(spec.objects, INVERSE[spec.relation]))["position"]
    return {"class": cls, "missing": missing, "per_object": per_object, "position": bool(r["position"]),
            "mirrored": bool(mirrored) and not r["position"], "all": bool(r["all"]),
            "count": bool(r["count"])}


def summarize(rows: list) -> dict:
    n = len(rows)
    cls = Counter(r["class"] for r in rows)
    po = Counter(x for r in rows for x in r["per_object"])
    npo = sum(po.values())
    both = [r for r in rows if r["class"] != "shape_missing"]
    bound = [r for r in rows if r["class"] == "bound_right"]
    out = {"n": n, "aligned": sum(r["all"] for r in rows) / n,
           **{k: cls[k] / n for k in ("bound_right", "swapped", "one_right", "other_colours", "shape_missing")},
           "binding": cls["bound_right"] / max(cls["bound_right"] + cls["swapped"], 1),
           "object_own_colour": po["own"] / max(npo, 1), "object_other_colour": po["other"] / max(npo, 1),
           "object_third_colour": po["third"] / max(npo, 1),
           "position": sum(r["position"] for r in rows) / n,
           "position_both_shapes": sum(r["position"] for r in both) / max(len(both), 1),
           "mirrored_both_shapes": sum(r["mirrored"] for r in both) / max(len(both), 1),
           "position_bound_right": sum(r["position"] for r in bound) / max(len(bound), 1),
           "mirrored_bound_right": sum(r["mirrored"] for r in bound) / max(len(bound), 1),
           "n_both_shapes": len(both), "n_bound_right": len(bound),
           "missing_why": {k: v / n for k, v in Counter(r["missing"] for r in rows if r["missing"]).items()}}
    return out


def fmt(name: str, s: dict) -> str:
    return (f"{name:<12} aligned={s['aligned']:.3f} bound={s['bound_right']:.3f} swapped={s['swapped']:.3f} "
            f"one={s['one_right']:.3f} other={s['other_colours']:.3f} missing={s['shape_missing']:.3f} "
            f"binding={s['binding']:.3f} obj own/other/third={s['object_own_colour']:.3f}/"
            f"{s['object_other_colour']:.3f}/{s['object_third_colour']:.3f} "
            f"pos={s['position']:.3f} pos|shapes={s['position_both_shapes']:.3f} "
            f"mirr|shapes={s['mirrored_both_shapes']:.3f} pos|bound={s['position_bound_right']:.3f} missing: "
            + " ".join(f"{k}={v:.3f}" for k, v in sorted(s["missing_why"].items())))


def run_gen(pipe, num: int, cfgs: list, seed: int, batch: int) -> dict:
    from sampling.eval.alignment import reconstruct

    scenes = pair_scenes(num)
    out = {"num": num}
    renders = [render(s, pipe.tokenizer.config.resolution) for s in scenes]
    recon = reconstruct(pipe.tokenizer, renders, batch)
    for name, imgs in (("real", renders), ("tok_d", recon["tokenizer"]), ("tok_h", recon["tokenizer_hybrid"])):
        out[name] = summarize([sort_image(im, s.spec) for im, s in zip(imgs, scenes)])
        print(fmt(name, out[name]), flush=True)
    for cfg in cfgs:
        t0 = time.time()
        rows = []
        for s in range(0, num, batch):
            part = scenes[s:s + batch]
            imgs = pipe(prompts=[x.caption for x in part], seed=[seed + s + k for k in range(len(part))],
                        cfg=cfg, top_k=900, top_p=0.96)
            rows += [sort_image(im, x.spec) for im, x in zip(imgs, part)]
        out[f"cfg_{cfg:g}"] = summarize(rows)
        print(fmt(f"cfg {cfg:g}", out[f"cfg_{cfg:g}"]) + f" ({time.time() - t0:.0f} s)", flush=True)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default-t2i")
    p.add_argument("--part", default="both", choices=("text", "gen", "both"))
    p.add_argument("--groups", type=int, default=2000, help="twin pairs per text task")
    p.add_argument("--num", type=int, default=200, help="pair prompts drawn per guidance value")
    p.add_argument("--cfg", default="1.5,3,5", help="guidance values (linear schedule, top-k 900, top-p 0.96)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--out", default=None, help="write the numbers as JSON")
    args = p.parse_args()

    from sampling.pipeline import HARTPipeline

    pipe = HARTPipeline.from_pretrained(args.model)
    result = {"model": args.model, "torch": torch.__version__}
    if args.part in ("text", "both"):
        result["text"] = run_text(pipe, args.groups, args.seed)
    if args.part in ("gen", "both"):
        result["gen"] = run_gen(pipe, args.num, [float(c) for c in args.cfg.split(",")], args.seed, args.batch_size)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
