"""``hart eval-alignment``: does a text-to-image model draw what its prompt says?

Examples::

    hart eval-alignment --model runs/shapes --data shapes --num 200 --out alignment.json --grid alignment.png
    hart eval-alignment --model default-t2i --prompts my_prompts.txt --num 4

In the spirit of GenEval, with the rule-based checker of the ``shapes`` data
(:func:`sampling.eval.checker.check`): one image per prompt (seed ``--seed + j``), and for each
the checker says whether every object, colour, size, count and relation of the prompt is
there. Four prompt sets, ``--num`` each:

- seen: train-split scenes in their canonical caption ("a small red circle left of a large
  blue square": ``Scene.caption``);
- held-out: canonical captions of the ``heldout`` split (colour x shape pairs and relations
  that never occur in training: composition);
- phrased: the seen scenes in the wording the dataset draws for them (training phrasing
  templates: size synonyms, relation first or last, digits...; ``Scene.phrasing``);
- held-out phrasing: the seen scenes worded by the held-out templates ("there is ...",
  "B with A to the left of it", "a pair of"), which caption no training scene;
- ceiling: the checker on the real renders of these scenes, against each set's prompts;
- tokenizer: the checker on the model's own tokenizer reconstructions of those renders,
  discrete-only (the true ids: the best any generator of these tokens can do without the
  residual) and hybrid (the exact latent). When these sit far below the real renders, the
  tokenizer, not the generator, is what limits alignment.

The seen and phrasing sets share scenes and seeds, so their difference is the wording alone.
A size a wording leaves out is not checked.

``--prompts FILE`` scores your own prompts instead (UTF-8, one per line; blank lines and lines
starting with # skipped): ``--num`` images each (seeds ``--seed + k``), with the ceiling on
ground-truth renders laid out for each prompt. A prompt the parser cannot read is listed
(line, prompt, why) and counted as unreadable, never dropped silently. A prompt longer than the
model's text context is scored as written and marked with the part the model reads
(``model_reads`` in ``--out``; None when it reads all of it).

Accuracy per attribute is the fraction of images where it holds (``position`` over the
prompts with a relation); an image is aligned when all of them hold. Each column is also split
by the kind of scene its prompt parses to (``PromptSpec.kind``): single objects, counts (several
of one object) and pairs with a relation: the rows ``all single``, ``all count``, ``all pair``
(aligned fraction of that kind's images) and ``n single``... (their number); in ``--out``,
``kinds`` of each column (every attribute, per kind). The row ``blank`` counts the images where
the checker found nothing at all (blank or near-blank frames). The last line is
``alignment=X heldout=X phrased=X heldout_phrasing=X ceiling=X tokenizer=X
tokenizer_hybrid=X blank=N`` (fractions of aligned images; N: blank frames among the generated
images), with ``--prompts`` ``prompts=X ceiling=X tokenizer=X tokenizer_hybrid=X unreadable=N
blank=N``.
"""
from __future__ import annotations

import argparse
import dataclasses

from hart.common.args import add_device_argument
from hart.common.errors import UserError, cli_entry
from hart.common.fs import output_file, read_prompt_lines
from sampling.options import add_sampling_arguments, as_sampled, sampling_options

ATTRIBUTES = ("object", "colour", "size", "count", "position", "all")
KINDS = ("single", "count", "pair")  # the values of PromptSpec.kind, in the order reported
SETS = {"seen": "seen", "heldout": "heldout", "phrased": "phrased", "heldout_phrasing": "ho-phrase"}
CEILINGS = {"ceiling": "real", "tokenizer": "tok-d", "tokenizer_hybrid": "tok-h"}


@dataclasses.dataclass(frozen=True)
class Item:
    """One image to check: the prompt, the spec it asks for, the seed, the ground-truth scene."""

    prompt: str
    spec: object
    seed: int
    scene: object


def summarize(results: list[dict], kinds: list | None = None) -> dict:
    """Per attribute: the fraction of results where it holds (None entries skipped); ``n`` and
    ``blank`` (how many results, how many found nothing: blank or near-blank frames). With
    ``kinds`` (the kind of scene of each result's prompt, ``PromptSpec.kind``), also ``kinds``:
    {kind: the same summary over that kind's results alone} for every kind of ``KINDS``."""
    out = {}
    for k in ATTRIBUTES:
        vals = [r[k] for r in results if r.get(k) is not None]
        out[k] = sum(map(bool, vals)) / len(vals) if vals else None
    out["n"] = len(results)
    out["blank"] = sum(bool(r.get("blank")) for r in results)  # frames where nothing was found
    if kinds is not None:
        if len(kinds) != len(results):
            raise ValueError(f"{len(kinds)} kinds for {len(results)} results")
        out["kinds"] = {kind: summarize([r for r, k in zip(results, kinds) if k == kind]) for kind in KINDS}
    return out


def kinds_of(items: list) -> list:
    """The kind of scene (single, count or pair) each item's prompt asks for."""
    return [it.spec.kind for it in items]


def reconstruct(tokenizer, images: list, batch_size: int) -> dict:
    """The tokenizer's reconstructions of PIL ``images``: {"tokenizer": discrete-only,
    "tokenizer_hybrid": discrete + the true residual}, lists of PIL images."""
    import torch

    from hart.data.sources import to_tensor
    from hart.common.images import to_pil
    from tokenizer.train import recon_rows

    device = next(tokenizer.parameters()).device
    out = {"tokenizer": [], "tokenizer_hybrid": []}
    for s in range(0, len(images), batch_size):
        x = torch.stack([to_tensor(img) for img in images[s:s + batch_size]]).to(device)
        _, discrete, hybrid = recon_rows(tokenizer, x)
        out["tokenizer"] += to_pil(discrete.float())
        out["tokenizer_hybrid"] += to_pil(hybrid.float())
    return out


def read_prompt_file(path) -> tuple[list, list]:
    """The prompts of a UTF-8 file (one a line; blank lines and # comments skipped), read by the
    shapes parser: (readable [(line, prompt, spec)], unreadable [(line, prompt, why)])."""
    from hart.data.prompts import PromptError
    from hart.data.shapes import parse_prompt

    readable, unreadable = [], []
    for n, text in read_prompt_lines(path):
        try:
            readable.append((n, text, parse_prompt(text)))
        except PromptError as e:  # the reason alone: the report names the line and the prompt
            unreadable.append((n, text, e.reason))
    return readable, unreadable


def shapes_sets(num: int, seed: int) -> dict:
    """The four prompt sets of ``--data shapes``: {name: [Item]} (the phrasing sets on the seen scenes)."""
    from hart.data.shapes import parse_prompt, sample_scene

    train = [sample_scene("train", j) for j in range(num)]
    held = [sample_scene("heldout", j) for j in range(num)]
    other = [sample_scene("train", j, "heldout") for j in range(num)]
    return {
        "seen": [Item(s.caption, s.spec, seed + j, s) for j, s in enumerate(train)],
        "heldout": [Item(s.caption, s.spec, seed + j, s) for j, s in enumerate(held)],
        "phrased": [Item(s.phrasing, parse_prompt(s.phrasing), seed + j, s) for j, s in enumerate(train)],
        "heldout_phrasing": [Item(s.phrasing, parse_prompt(s.phrasing), seed + j, s) for j, s in enumerate(other)],
    }


def prompt_set(readable: list, num: int, seed: int) -> list:
    """``num`` items per readable prompt (seeds ``seed + k``), each with a ground-truth scene laid
    out for it (sizes the prompt leaves open drawn)."""
    from hart.data.shapes import layout_scene

    return [Item(text, spec, seed + k, layout_scene(spec, seed + k, text))
            for _, text, spec in readable for k in range(num)]


def score(images: list, items: list) -> list[dict]:
    """The checker's verdict for each image against its item's spec."""
    from sampling.eval.checker import check

    return [check(img, it.spec) for img, it in zip(images, items)]


def ceilings(items: list, resolution: int, tokenizer=None, batch_size: int = 50) -> dict:
    """{"ceiling": verdicts on the ground-truth renders, "tokenizer"/"tokenizer_hybrid": on the
    tokenizer's reconstructions of them (when a tokenizer is given)}; each distinct scene is
    rendered (and reconstructed) once."""
    from hart.data.shapes import render

    index, scenes = {}, []
    for it in items:
        key = (it.scene.spec, it.scene.centres)
        if key not in index:
            index[key] = len(scenes)
            scenes.append(it.scene)
    renders = [render(s, resolution) for s in scenes]
    images = {"ceiling": renders}
    if tokenizer is not None:
        images.update(reconstruct(tokenizer, renders, batch_size))
    at = [index[(it.scene.spec, it.scene.centres)] for it in items]
    return {name: score([imgs[k] for k in at], items) for name, imgs in images.items()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hart eval-alignment", description=__doc__.split("Examples::")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Examples::" + __doc__.split("Examples::")[1])
    p.add_argument("--model", required=True, help="a text-to-image model folder (tokenizer/ + generator/), or default-t2i (bundled)")
    p.add_argument("--data", default="shapes", help="prompt source with a checker: shapes (the only one)")
    p.add_argument("--prompts", default=None, metavar="FILE",
                   help="score these prompts (UTF-8, one per line) instead of the shapes sets")
    p.add_argument("--num", type=int, default=None,
                   help="prompts per set (default 200); with --prompts, images per prompt (default 4)")
    p.add_argument("--seed", type=int, default=0)
    add_sampling_arguments(p)
    p.add_argument("--batch-size", type=int, default=50)
    add_device_argument(p)
    p.add_argument("--out", default=None, help="write the full report (per attribute, per set) as JSON")
    p.add_argument("--grid", default=None, help="write a PNG of the first generated images with their prompts")
    return p


def _table(results: dict, columns: dict) -> None:
    print(f"{'attribute':<10} " + " ".join(f"{h:>9}" for h in columns.values()))
    for k in ATTRIBUTES:
        row = [results[s][k] for s in columns]
        print(f"{k:<10} " + " ".join(f"{'-' if v is None else f'{v:.3f}':>9}" for v in row))
    for kind in KINDS:  # "all" over the images of one kind of scene
        row = [results[s]["kinds"][kind]["all"] for s in columns]
        print(f"{'all ' + kind:<10} " + " ".join(f"{'-' if v is None else f'{v:.3f}':>9}" for v in row))
    for kind in KINDS:
        print(f"{'n ' + kind:<10} " + " ".join(f"{results[s]['kinds'][kind]['n']:>9}" for s in columns))
    print(f"{'blank':<10} " + " ".join(f"{results[s]['blank']:>9}" for s in columns))


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.data.split(":")[0] != "shapes":
        raise UserError(f"--data {args.data}: only shapes has a checker (hart.data.shapes)")
    if args.num is None:
        args.num = 4 if args.prompts else 200
    if args.num < 1 or args.batch_size < 1:
        raise UserError("--num and --batch-size must be positive")
    from sampling.seeds import check_seeds

    check_seeds([args.seed])
    try:
        check_seeds([args.seed + args.num - 1])  # image j has seed --seed + j
    except UserError:
        raise UserError(f"--num {args.num} is too large for --seed {args.seed}: image j has seed --seed + j, "
                        "which must stay below 2^63") from None
    for flag, path in (("--out", args.out), ("--grid", args.grid)):
        if path:
            output_file(path, flag)
    if args.grid:
        from hart.common.images import image_format

        image_format(args.grid)  # an extension no image format has: said now, not after the run
    readable, unreadable = read_prompt_file(args.prompts) if args.prompts else ([], [])
    if unreadable:
        print(f"unreadable: {len(unreadable)} of {len(readable) + len(unreadable)} prompts in {args.prompts}")
        for n, text, why in unreadable:
            print(f"  line {n}: {text!r}: {why}")
        if not readable:
            raise UserError(f"no prompt in {args.prompts} is in the shapes grammar "
                            "(python -m hart.data.shapes --templates lists its wordings)")
    opts = dataclasses.asdict(sampling_options(args))

    from tqdm import tqdm

    from hart.common.dist import resolve_device
    from hart.common.images import save_grid
    from sampling.pipeline import HARTPipeline

    pipe = HARTPipeline.from_pretrained(args.model, device=resolve_device(args.device))
    if not pipe.is_text:
        raise UserError(f"{args.model} is class-conditional; eval-alignment needs a text-to-image model")
    if args.sampling is None and pipe.generator.config.display.sampling:  # the model's own preset
        opts = dataclasses.asdict(sampling_options(args, pipe.generator.config.display.sampling))
    R = pipe.tokenizer.config.resolution
    sets = {"prompts": prompt_set(readable, args.num, args.seed)} if args.prompts else shapes_sets(args.num, args.seed)
    results, verdicts, shown = {}, {}, []
    for name, items in sets.items():
        res = []
        for s in tqdm(range(0, len(items), args.batch_size), desc=f"generate {name}", unit="batch"):
            batch = items[s:s + args.batch_size]
            images = pipe(prompts=[it.prompt for it in batch], seed=[it.seed for it in batch], **opts)
            res += score(images, batch)
            if not shown:
                shown = list(zip(images[:16], [it.prompt for it in batch[:16]], res[:16]))
        results[name], verdicts[name] = summarize(res, kinds_of(items)), res
    all_items = [it for items in sets.values() for it in items]
    for name, res in ceilings(all_items, R, pipe.tokenizer, args.batch_size).items():
        results[name] = summarize(res, kinds_of(all_items))
    results["model"], results["num"], results["seed"] = str(args.model), args.num, args.seed
    results["options"] = as_sampled(opts, pipe.generator.config)

    if args.prompts:
        from hart.data.shapes import CANONICAL, phrase

        per_prompt = []
        encoder = pipe.text_encoder
        for j, (n, text, spec) in enumerate(readable):
            res = verdicts["prompts"][j * args.num:(j + 1) * args.num]
            per_prompt.append({"line": n, "prompt": text, "reads_as": phrase(spec, CANONICAL[spec.kind]),
                               "kind": spec.kind, "aligned": sum(r["all"] for r in res) / len(res), "n": len(res),
                               # longer than the encoder's context: what the model was given of it
                               "model_reads": encoder.kept(text)})
        results["per_prompt"] = per_prompt
        results["unreadable"] = [{"line": n, "prompt": text, "error": why} for n, text, why in unreadable]
        results["num_unreadable"] = len(unreadable)
        _table(results, {"prompts": "prompts", **CEILINGS})
        print("aligned  prompt (read as)")
        for r in per_prompt:
            same = r["reads_as"] == r["prompt"].lower().strip(" .")
            print(f"{r['aligned']:>7.3f}  {r['prompt']}" + ("" if same else f"  ({r['reads_as']})"))
            if r["model_reads"] is not None:
                print(f"         truncated: the model reads only {r['model_reads']!r}")
    else:
        _table(results, {**SETS, **CEILINGS})
    if args.out:
        from hart.common.io import write_json

        write_json(args.out, results)
    if args.grid and shown:
        from hart.data.sources import to_tensor

        rows = [to_tensor(img).unsqueeze(0) for img, _, _ in shown]
        labels = [("ok  " if r["all"] else "no  ") + p for _, p, r in shown]
        save_grid(rows, args.grid, row_labels=labels, scale=3)
        print(f"wrote {args.grid}")
    tail = (f"ceiling={results['ceiling']['all']:.3f} tokenizer={results['tokenizer']['all']:.3f} "
            f"tokenizer_hybrid={results['tokenizer_hybrid']['all']:.3f}")
    blank = sum(results[name]["blank"] for name in sets)
    if args.prompts:
        print(f"prompts={results['prompts']['all']:.3f} {tail} unreadable={len(unreadable)} blank={blank}")
    else:
        print(f"alignment={results['seen']['all']:.3f} heldout={results['heldout']['all']:.3f} "
              f"phrased={results['phrased']['all']:.3f} heldout_phrasing={results['heldout_phrasing']['all']:.3f} "
              f"{tail} blank={blank}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
