"""Captioned data: procedural scenes (hart.data.shapes) and their checker (sampling.eval.checker), the shapes,
captions:PATH and emoji datasets, and the data-spec grammar for them."""
import json
from collections import Counter
import re

import numpy as np
import pytest
import torch
from PIL import Image

from hart.data import shapes as S
from sampling.eval import checker as C
from hart.data.datasets import infinite_batches, make_dataset, parse_spec
from hart.data.sources import EMOJI_FONT, SHAPES_SIZES, Emoji, is_captioned
from hart.common.errors import UserError

has_font = pytest.mark.skipif(not EMOJI_FONT.is_file(), reason="Debian fonts-noto-color-emoji not installed")


def scene(*objs, relation=None, centres):
    return S.Scene(S.PromptSpec(tuple(S.ObjectSpec(*o) for o in objs), relation), tuple(centres))


def held_elements(spec):
    objs = {(o.colour, o.shape) for o in spec.objects} & S.HELDOUT_OBJECTS
    rels = set()
    if spec.relation:
        a, b = spec.objects[0].shape, spec.objects[1].shape
        rels = {(a, spec.relation, b), (b, S.INVERSE[spec.relation], a)} & S.HELDOUT_RELATIONS
    return objs, rels


def test_deterministic_per_split_and_index():
    for split in S.SPLITS:
        assert S.sample_scene(split, 17) == S.sample_scene(split, 17)
    assert S.sample_scene("train", 17) != S.sample_scene("test", 17)
    a, b = S.render(S.sample_scene("train", 5), 32), S.render(S.sample_scene("train", 5), 32)
    assert np.array_equal(np.asarray(a), np.asarray(b)) and a.size == (32, 32)
    ds = make_dataset("shapes", "train", 32)
    assert torch.equal(ds[3][0], ds[3][0]) and ds[3][1] == S.sample_scene("train", 3).phrasing
    for i in range(50):  # same index -> same caption; the phrasing set changes the caption, not the scene
        a, b = S.sample_scene("train", i), S.sample_scene("train", i, "heldout")
        assert ds[i][1] == a.phrasing and a.phrasing and (a.spec, a.centres) == (b.spec, b.centres)
        assert S.parse_prompt(a.caption) == a.spec


def test_heldout_never_in_train_always_in_heldout():
    for split, n in (("train", 5000), ("test", 1000)):
        for i in range(n):
            spec = S.sample_scene(split, i).spec
            assert held_elements(spec) == (set(), set()), (split, i, spec.caption)
    seen_objs, seen_rels = set(), set()
    for i in range(2000):
        objs, rels = held_elements(S.sample_scene("heldout", i).spec)
        assert objs or rels
        seen_objs |= objs
        seen_rels |= rels
    assert seen_objs == S.HELDOUT_OBJECTS and seen_rels == S.HELDOUT_RELATIONS  # every element is tested
    assert len(S.HELDOUT_OBJECTS) == 5 and {s for _, s in S.HELDOUT_OBJECTS} == set(S.SHAPES)
    assert len({c for c, _ in S.HELDOUT_OBJECTS}) == 5


def test_heldout_phrasings_never_caption_train_or_test():
    held = {t.name for t in S.HELDOUT_TEMPLATES}
    assert held and held.isdisjoint(t.name for t in S.TRAIN_TEMPLATES)
    used = set()
    for split, n in (("train", 2000), ("test", 500), ("heldout", 500)):
        for i in range(n):
            sc = S.sample_scene(split, i)
            spec, template = S.read_prompt(sc.phrasing)
            assert template.name == sc.template and not template.heldout, (split, i, sc.phrasing)
            assert sc.phrasing not in {text for t in S.HELDOUT_TEMPLATES if t.applies(sc.spec)
                                       for text, _ in S.phrasings(sc.spec, t)}
            used.add(template.name)
    assert used == {t.name for t in S.TRAIN_TEMPLATES}  # every training template captions scenes
    drawn = {S.read_prompt(S.sample_scene("train", i, "heldout").phrasing)[1].name for i in range(500)}
    assert drawn == held  # the held-out phrasing set draws only, and every one of, the held-out templates


def specs_of_every_kind(n=6):
    """Specs of train and heldout scenes: n of each kind and count, with an orange object (an "an")."""
    out = {}
    for split in ("train", "heldout"):
        for i in range(3000):
            spec = S.sample_scene(split, i).spec
            key = (spec.kind, len(spec.objects), any(o.colour == "orange" for o in spec.objects))
            if len(out.setdefault(key, [])) < n:
                out[key].append(spec)
    assert len(out) == 8
    return [s for specs in out.values() for s in specs]


def test_parser_reads_every_phrasing_of_every_template():
    import re

    n = 0
    for spec in specs_of_every_kind():
        assert re.sub(r"\ban\b", "a", S.phrase(spec, S.CANONICAL[spec.kind])) == spec.caption
        for t in S.TEMPLATES:
            if not t.applies(spec):
                with pytest.raises(UserError, match="does not word"):
                    S.phrase(spec, t)
                continue
            texts = S.phrasings(spec, t)
            assert len({text for text, _ in texts}) == len(texts) and S.phrase(spec, t) == texts[0][0]
            for text, meant in texts:  # sizes a wording leaves out are read as None
                assert S.read_prompt(text) == (meant, t), (t.name, text)
                assert S.read_prompt(text.capitalize() + ".") == (meant, t)
                assert all(o.size in (None, p.size) for o, p in zip(meant.objects, spec.objects))
                n += 1
    assert n > 10_000
    p = S.parse_prompt("A tiny red circle, and a big blue square beneath it.")
    assert p == S.PromptSpec((S.ObjectSpec("red", "circle", "small"), S.ObjectSpec("blue", "square", "large")),
                             "above")
    assert S.parse_prompt("there are 3 green triangles") == S.parse_prompt("three green triangles")
    assert S.parse_prompt("a pair of huge white crosses") == S.PromptSpec((S.ObjectSpec("white", "cross", "large"),) * 2)
    with pytest.raises(UserError, match="unknown phrasing template 'nope'"):
        S.phrase(p, "nope")


def test_ground_truth_renders_of_every_phrasing_score_as_aligned(tmp_path):
    """What eval-alignment --prompts does with a prompt file, on ground-truth renders: every
    template's drawn wordings of train scenes read back and check as aligned."""
    from sampling.eval.alignment import ceilings, prompt_set, read_prompt_file, summarize

    lines = [S.sample_scene("train", i, which).phrasing for which in S.PHRASINGS for i in range(200)]
    assert {S.read_prompt(t)[1].name for t in lines} == {t.name for t in S.TEMPLATES}
    f = tmp_path / "prompts.txt"
    f.write_text("# a comment\n\n" + "\n".join(lines) + "\na red circle next to a blue square\n")
    readable, unreadable = read_prompt_file(f)
    assert [t for _, t, _ in readable] == lines
    assert unreadable == [(403, "a red circle next to a blue square", "unknown word 'next'")]
    items = prompt_set(readable, 2, 0)
    assert len(items) == 800 and items[0].seed == 0 and items[1].seed == 1
    r = summarize(ceilings(items, 32)["ceiling"])
    assert r["all"] >= 0.99 and r["n"] == 800, r
    for it in items[:50]:  # the scene fills the sizes a prompt leaves open, and keeps the rest
        assert all(o.size in (None, p.size) for o, p in zip(it.spec.objects, it.scene.spec.objects))
        assert all(p.size for p in it.scene.spec.objects)


def test_alignment_per_kind_ground_truth_scores_one():
    """Ground-truth renders are aligned in every kind column (singles, counts, pairs) of every
    prompt set, and the kinds split each set's images without loss."""
    from sampling.eval.alignment import KINDS, ceilings, kinds_of, shapes_sets, summarize

    sets = shapes_sets(24, 0)
    items = [it for v in sets.values() for it in v]
    verdicts = ceilings(items, 32)["ceiling"]
    columns = {"ceiling": summarize(verdicts, kinds_of(items))}
    at = 0
    for name, its in sets.items():
        columns[name] = summarize(verdicts[at:at + len(its)], kinds_of(its))
        at += len(its)
    for name, r in columns.items():
        assert sum(r["kinds"][k]["n"] for k in KINDS) == r["n"], name
        for k in KINDS:
            assert r["kinds"][k]["n"] > 0 and r["kinds"][k]["all"] >= 0.99, (name, k, r["kinds"][k])
        assert r["kinds"]["pair"]["position"] == 1.0 and r["kinds"]["single"]["position"] is None
    # the kind is the parsed scene's: the phrasing sets word the same scenes as the seen set
    assert kinds_of(sets["phrased"]) == kinds_of(sets["seen"]) == [it.scene.spec.kind for it in sets["seen"]]


def test_alignment_per_kind_is_the_all_fraction_over_that_kind():
    from sampling.eval.alignment import KINDS, kinds_of, score, shapes_sets, summarize

    # made-up verdicts: each kind's figure is "all" over its own results alone
    res = [{"all": True, "position": None}, {"all": False, "position": None},  # singles: 1/2
           {"all": True, "position": None},  # count: 1/1
           {"all": False, "position": False}, {"all": False, "position": True}, {"all": True, "position": True}]
    kinds = ["single", "single", "count", "pair", "pair", "pair"]
    r = summarize(res, kinds)
    assert r["all"] == 0.5 and r["n"] == 6
    assert {k: (v["all"], v["n"]) for k, v in r["kinds"].items()} == {"single": (0.5, 2), "count": (1.0, 1),
                                                                      "pair": (1 / 3, 3)}
    assert r["kinds"]["pair"]["position"] == 2 / 3 and r["kinds"]["count"]["position"] is None
    assert summarize(res[:2], kinds[:2])["kinds"]["pair"] == summarize([])  # no pair: None, n=0
    assert "kinds" not in summarize(res)
    with pytest.raises(ValueError):
        summarize(res, kinds[:3])

    # real checks: ground-truth renders, every other pair image blanked (nothing found, not aligned)
    items = shapes_sets(16, 0)["seen"]
    images, seen_pairs, blanked = [], 0, 0
    for it in items:
        blank = it.spec.kind == "pair" and seen_pairs % 2 == 0
        seen_pairs += it.spec.kind == "pair"
        blanked += blank
        images.append(Image.new("RGB", (32, 32)) if blank else S.render(it.scene, 32))
    verdicts = score(images, items)
    r = summarize(verdicts, kinds_of(items))
    pairs = r["kinds"]["pair"]["n"]
    assert pairs >= 3 and blanked == (pairs + 1) // 2
    assert r["kinds"]["pair"]["all"] == (pairs - blanked) / pairs
    assert r["blank"] == r["kinds"]["pair"]["blank"] == blanked and r["kinds"]["single"]["blank"] == 0
    assert r["kinds"]["single"]["all"] == r["kinds"]["count"]["all"] == 1.0
    for k in KINDS:
        own = [v["all"] for v, it in zip(verdicts, items) if it.spec.kind == k]
        assert r["kinds"][k]["all"] == sum(own) / len(own) and r["kinds"][k]["n"] == len(own)
    assert r["all"] == pytest.approx(sum(r["kinds"][k]["all"] * r["kinds"][k]["n"] for k in KINDS) / r["n"])


def test_prompt_file_errors(tmp_path):
    from sampling.eval.alignment import read_prompt_file

    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"a red circle\n\xe9 blue\n")
    with pytest.raises(UserError, match="prompts file .*bad.txt is not UTF-8 text"):
        read_prompt_file(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(UserError, match="has no prompts"):
        read_prompt_file(empty)
    with pytest.raises(UserError, match="does not exist"):
        read_prompt_file(tmp_path / "missing.txt")


def box(o, c):
    h = S.SIZES[o.size] / 2
    return c[0] - h, c[1] - h, c[0] + h, c[1] + h


@pytest.mark.parametrize("split", S.SPLITS)
def test_layout_fits_and_relations_are_unambiguous(split):
    kinds = {k: 0 for k in S.KINDS}
    for i in range(1500):
        sc = S.sample_scene(split, i)
        kinds[sc.spec.kind] += 1
        boxes = [box(o, c) for o, c in zip(sc.spec.objects, sc.centres)]
        for b in boxes:
            assert min(b) >= S.MARGIN - 1e-9 and max(b) <= 1 - S.MARGIN + 1e-9
        for j in range(len(boxes)):
            for k in range(j + 1, len(boxes)):
                p, q = boxes[j], boxes[k]
                gap = max(q[0] - p[2], p[0] - q[2], q[1] - p[3], p[1] - q[3])
                assert gap >= S.GAP - 1e-9  # apart on one axis at least: no overlap
        if sc.spec.relation:
            (ax, ay), (bx, by) = sc.centres
            along, across = (bx - ax, by - ay) if sc.spec.relation in ("left of", "right of") else (by - ay, bx - ax)
            sign = 1 if sc.spec.relation in ("left of", "above") else -1
            assert along * sign > 0 and abs(across) <= S.ORTHO * abs(along) + 1e-9
            a, b = sc.spec.objects
            assert (a.colour, a.shape) != (b.colour, b.shape)
    for k, p in zip(S.KINDS, S.KIND_P):
        assert abs(kinds[k] / 1500 - p) < 0.05


def test_parse_prompt_round_trip():
    by_kind = {}
    for i in range(300):
        spec = S.sample_scene("train", i).spec
        by_kind.setdefault(spec.kind, []).append(spec)
    assert set(by_kind) == set(S.KINDS)
    for specs in by_kind.values():
        for spec in specs:
            assert S.parse_prompt(spec.caption) == spec
    assert S.parse_prompt("two green triangles") == S.PromptSpec((S.ObjectSpec("green", "triangle"),) * 2)
    assert S.parse_prompt("Three small blue crosses.").objects == (S.ObjectSpec("blue", "cross", "small"),) * 3
    p = S.parse_prompt("an orange circle  right of a large white diamond")
    assert p.relation == "right of" and p.objects == (S.ObjectSpec("orange", "circle"),
                                                      S.ObjectSpec("white", "diamond", "large"))
    assert S.parse_prompt(p.caption) == p


@pytest.mark.parametrize("text,match", [
    ("a large pink circle", "unknown word 'pink'"),
    ("a red circle next to a blue square", "unknown word 'next'"),
    ("a red", "outside the shapes grammar"),
    ("two red circle", "outside the shapes grammar"),
    ("a red circles", "outside the shapes grammar"),
    ("a red circle left of", "outside the shapes grammar"),
    ("a red circle a blue square", "outside the shapes grammar"),
    ("", "outside the shapes grammar"),
    ("there is two red circles", "outside the shapes grammar"),
    ("a red circle and a blue square", "outside the shapes grammar"),
    ("a pair of red circle", "outside the shapes grammar"),
    ("4 red circles", "unknown word '4'"),
])
def test_parse_prompt_errors(text, match):
    with pytest.raises(UserError, match=match) as e:
        S.parse_prompt(text)
    assert "\n" not in str(e.value)


def calibrate(n: int, resolution: int = 32, split: str = "train", start: int = 0) -> dict:
    """Check ``n`` ground-truth scenes of ``split`` (from index ``start``) against their own
    captions: the fraction passing per key (``position`` over the pairs only) and the
    indices that failed."""
    hits, pairs, failed = Counter(), 0, []
    for i in range(start, start + n):
        scene = S.sample_scene(split, i)
        r = C.check(S.render(scene, resolution), scene.spec)
        for k in C.CHECK_KEYS:
            hits[k] += bool(r[k])
        pairs += r["position"] is not None
        if not r["all"]:
            failed.append(i)
    out = {k: hits[k] / n for k in C.CHECK_KEYS}
    out["position"] = hits["position"] / pairs if pairs else None
    return {**out, "n": n, "pairs": pairs, "split": split, "resolution": resolution, "failed": failed}


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_checker_calibration_32(split):
    r = calibrate(300, 32, split)
    assert r["all"] >= 0.99, r
    assert r["pairs"] > 50 and r["position"] >= 0.99


def test_checker_calibration_64():
    assert calibrate(100, 64, "heldout")["all"] >= 0.99


def test_detect_reads_a_scene():
    sc = scene(("red", "circle", "small"), ("blue", "square", "large"), relation="left of",
               centres=[(0.2, 0.5), (0.7, 0.45)])
    d = C.detect(S.render(sc, 32))
    assert [(x.colour, x.shape, x.size) for x in sorted(d, key=lambda x: x.x)] == [
        ("red", "circle", "small"), ("blue", "square", "large")]
    assert all(0 <= x.x <= 1 and 0 <= x.y <= 1 for x in d)


PAIR = "a small red circle left of a large blue square"


@pytest.mark.parametrize("objs,relation,centres,failing", [
    # wrong colour
    ((("orange", "circle", "small"), ("blue", "square", "large")), "left of", [(0.2, 0.5), (0.7, 0.5)], {"colour"}),
    # wrong shape
    ((("red", "diamond", "small"), ("blue", "square", "large")), "left of", [(0.2, 0.5), (0.7, 0.5)],
     {"object", "colour", "size", "position"}),
    # swapped relation
    ((("red", "circle", "small"), ("blue", "square", "large")), "right of", [(0.8, 0.5), (0.3, 0.5)], {"position"}),
    # wrong size
    ((("red", "circle", "large"), ("blue", "square", "large")), "left of", [(0.25, 0.5), (0.73, 0.5)], {"size"}),
    # missing object
    ((("blue", "square", "large"),), None, [(0.7, 0.5)], {"object", "colour", "size", "count", "position"}),
    # one object too many
    ((("red", "circle", "small"), ("blue", "square", "large"), ("white", "cross", "small")), None,
     [(0.2, 0.3), (0.7, 0.3), (0.5, 0.8)], {"count"}),
])
def test_checker_rejects(objs, relation, centres, failing):
    r = C.check(S.render(scene(*objs, relation=relation, centres=centres), 32), PAIR)
    assert {k for k in ("object", "colour", "size", "count", "position") if not r[k]} == failing, r
    assert r["all"] is False


def test_checker_counts_and_sizeless_prompts():
    three = scene(*[("green", "triangle", "small")] * 3, centres=[(0.2, 0.2), (0.7, 0.2), (0.45, 0.75)])
    img = S.render(three, 32)
    assert C.check(img, "three small green triangles")["all"]
    assert C.check(img, "three green triangles")["all"]
    r = C.check(img, "two green triangles")
    assert r["object"] and r["colour"] and not r["count"] and not r["all"]
    r = C.check(img, "three large green triangles")
    assert not r["size"] and r["position"] is None
    with pytest.raises(UserError, match="unknown word"):
        C.check(img, "three green pyramids")


def test_grid_cli(tmp_path, capsys):
    out = tmp_path / "grid.png"
    S.main(["--grid", str(out), "--num", "4", "--split", "heldout"])
    with Image.open(out) as im:
        assert im.size[1] > 4 * 32
    S.main(["--templates"])
    out = capsys.readouterr().out
    assert all(t.name in out for t in S.TEMPLATES) and "heldout  pair-of" in out


# ----------------------------------------------------------------------------- datasets

def test_shapes_dataset_items_and_splits():
    ds = make_dataset("shapes", "train", 32)
    assert is_captioned(ds) and ds.classes == () and len(ds) == SHAPES_SIZES["train"] >= 50_000
    x, caption = ds[0]
    assert x.shape == (3, 32, 32) and x.min() >= -1 and x.max() <= 1 and isinstance(caption, str)
    held = make_dataset("shapes:heldout", "train", 16)
    assert held.split == "heldout" and len(held) == 2000 and held[1][0].shape == (3, 16, 16)
    assert make_dataset("shapes", "heldout").split == "heldout"
    assert len(make_dataset("shapes:test")) == 2000
    assert not is_captioned(make_dataset("synthetic"))
    with pytest.raises(IndexError):
        ds[len(ds)]
    small = make_dataset("shapes", "train", 8)
    small.size = 16
    images, captions = next(infinite_batches(small, 4, torch.Generator().manual_seed(0)))
    assert images.shape == (4, 3, 8, 8) and len(captions) == 4 and all(isinstance(c, str) for c in captions)


@pytest.mark.parametrize("spec,split,match", [
    ("fashion-mnist:heldout", "train", "split 'heldout' exists only for shapes"),
    ("synthetic", "heldout", "split 'heldout' exists only for shapes"),
    ("emoji:heldout", "train", "split 'heldout' exists only for shapes"),
    ("shapes:valid", "train", "unknown split 'valid'"),
    ("shapes", "valid", "unknown split 'valid'"),
    ("captions:", "train", "captions: needs a path"),
    ("laion", "train", "unknown dataset"),
])
def test_spec_errors(spec, split, match):
    with pytest.raises(UserError, match=match) as e:
        make_dataset(spec, split)
    assert "\n" not in str(e.value)


def test_parse_spec_kinds():
    assert parse_spec("captions:/data/x").kind == "captions"
    assert parse_spec("captions:/data/x").label == "captions:/data/x"
    assert parse_spec("shapes:heldout").split == "heldout"
    assert parse_spec("emoji").label == "emoji:train"


def write_image(path, colour=(200, 30, 30)):
    Image.new("RGB", (40, 30), colour).save(path)


def test_captions_txt(tmp_path, capsys):
    (tmp_path / "sub").mkdir()
    for name, text in (("a", "a red thing"), ("b", "  two\nlines  "), ("sub/c", "nested")):
        write_image(tmp_path / f"{name}.png")
        (tmp_path / f"{name}.txt").write_text(text)
    write_image(tmp_path / "no_caption.png")
    write_image(tmp_path / "empty.png")
    (tmp_path / "empty.txt").write_text("   \n")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "broken.txt").write_text("never read")
    (tmp_path / "sub" / "orphan.txt").write_text("a caption whose image is gone")
    ds = make_dataset(f"captions:{tmp_path}", "train", 16)
    err = capsys.readouterr().err
    assert re.search(r"skipped 3 item\(s\): 1 unreadable image \(.*broken\.png: .*\), 1 image without a caption "
                     r"\(.*no_caption\.png\), 1 empty caption \(.*empty\.txt\); not counted: 1 caption without an "
                     r"image \(.*sub/orphan\.txt\)\n", err), err  # the count is what the list adds up to
    assert is_captioned(ds) and ds.classes == ()
    assert sorted(ds[i][1] for i in range(len(ds))) == ["a red thing", "nested", "two lines"]
    assert ds[0][0].shape == (3, 16, 16)


def test_captions_jsonl(tmp_path, capsys):
    write_image(tmp_path / "one.png")
    (tmp_path / "imgs").mkdir()
    write_image(tmp_path / "imgs" / "two.jpg")
    (tmp_path / "bad.png").write_bytes(b"nope")
    lines = [
        json.dumps({"file": "one.png", "text": "the first"}),
        json.dumps({"file": "imgs/two.jpg", "text": "the second"}),
        "",  # blank lines are no entry
        "{not json",
        json.dumps({"file": "one.png", "text": "  "}),
        json.dumps({"file": "one.png"}),
        json.dumps(["one.png", "a list"]),
        json.dumps({"file": "missing.png", "text": "gone"}),
        json.dumps({"file": "bad.png", "text": "unreadable"}),
    ]
    (tmp_path / "captions.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "one.txt").write_text("ignored: the manifest wins")
    ds = make_dataset(f"captions:{tmp_path}", "test", 8)
    err = capsys.readouterr().err
    assert re.search(r"skipped 6 item\(s\): 1 unreadable image \(.*bad\.png: .*\), 1 missing image \(line 8: missing\.png\), "
                     r"1 empty caption \(line 5\), 3 manifest lines that are no entry \(the first: line 4\)\n", err), err
    assert [ds[i][1] for i in range(len(ds))] == ["the first", "the second"]
    (tmp_path / "captions.jsonl").write_text("{bad\n")
    with pytest.raises(UserError, match="no usable captioned images"):
        make_dataset(f"captions:{tmp_path}")
    with pytest.raises(UserError, match="does not exist"):
        make_dataset(f"captions:{tmp_path / 'nope'}")


def test_emoji_missing_font(tmp_path):
    with pytest.raises(UserError, match="apt-get install fonts-noto-color-emoji"):
        Emoji("train", 32, font=tmp_path / "NotoColorEmoji.ttf")


@has_font
def test_emoji_dataset():
    tr, te = make_dataset("emoji", "train", 32), make_dataset("emoji:test", "train", 24)
    assert is_captioned(tr) and tr.classes == ()
    assert len(tr) > 1000 and 0.08 < len(te) / (len(tr) + len(te)) < 0.12
    assert not {c for c, _ in tr.items} & {c for c, _ in te.items}
    x, caption = tr[0]
    assert x.shape == (3, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert caption == caption.lower() and caption.strip()
    assert te[3][0].shape == (3, 24, 24)
    captions = {c for _, c in tr.items}
    assert "grinning face" in captions
    x = make_dataset("emoji").__getitem__([c for _, c in tr.items].index("grinning face"))[0]
    assert x.std() > 0.1  # something drawn on the white background


def test_checker_tolerates_mild_blur_and_noise():
    from PIL import ImageFilter

    rng, ok = np.random.default_rng(0), 0
    for i in range(150):
        sc = S.sample_scene("train", i)
        a = np.asarray(S.render(sc, 32).filter(ImageFilter.GaussianBlur(0.6)), np.float32)
        a = (a + rng.normal(0, 12, a.shape)).clip(0, 255).astype(np.uint8)
        ok += C.check(Image.fromarray(a), sc.spec)["all"]
    assert ok / 150 >= 0.97
