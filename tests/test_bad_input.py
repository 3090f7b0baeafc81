"""Bad input ends in one line naming the problem, before any work, and never costs the user a
file: outputs that would delete what is there or what the command reads, damaged model files,
out-of-range options, a resumed run whose options changed, prompts that are not text."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from hart.cli import main as hart_main


def one_line(capsys, argv) -> str:
    """Run ``hart ARGV``; it must stop with exit code 2 and exactly one ``error:`` line."""
    with pytest.raises(SystemExit) as e:
        hart_main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def t2i_model_dir(tmp_path_factory):
    """A tiny random text-to-image model folder."""
    from hart.config import GeneratorConfig
    from hart.model import HARTGenerator
    from tokenizer import HybridTokenizer, TokenizerConfig

    d = tmp_path_factory.mktemp("t2i_model")
    torch.manual_seed(0)
    HybridTokenizer(TokenizerConfig.from_name("tiny")).save_pretrained(d / "tokenizer")
    HARTGenerator(GeneratorConfig.from_name("t2i-tiny")).save_pretrained(d / "generator")
    return d


# ----------------------------------------------------------------------------- outputs

def test_extract_tokens_keeps_an_existing_folder(tokdir, demo_model_dir, tmp_path, capsys):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    args = ["extract-tokens", "--tokenizer", str(tokdir), "--data", "synthetic", "--limit", "4", "--out", str(out)]
    # said at once: --overwrite replaces a token cache, never a folder this tool did not write, nor a model folder
    assert "is not a token cache written by this tool (--overwrite replaces only such a folder)" in one_line(
        capsys, args)
    assert "not a token cache written by this tool" in one_line(capsys, args + ["--overwrite"])
    assert tree(out) == {"notes.txt": b"precious"}
    model = tmp_path / "model"
    shutil.copytree(demo_model_dir, model)
    before = tree(model)
    assert "not a token cache" in one_line(capsys, args[:-1] + [str(model), "--overwrite"])
    # nor the folder it reads from: a model folder's tokenizer/ is the tokenizer it encodes with
    line = one_line(capsys, ["extract-tokens", "--tokenizer", str(model), "--data", "synthetic", "--limit", "4",
                             "--out", str(model / "tokenizer"), "--overwrite"])
    assert "which this command reads" in line and tree(model) == before
    cache = tmp_path / "cache"
    assert hart_main(args[:-1] + [str(cache)]) == 0
    assert "already holds a token cache; choose another --out or pass --overwrite" in one_line(
        capsys, args[:-1] + [str(cache)])
    assert hart_main(args[:-1] + [str(cache), "--overwrite", "--limit", "2"]) == 0
    assert json.loads((cache / "meta.json").read_text())["num"] == 2
    assert "--batch-size must be >= 1" in one_line(capsys, args[:-1] + [str(tmp_path / "c2"), "--batch-size", "0"])


def test_export_never_replaces_the_folder_it_reads(demo_model_dir, tmp_path, capsys):
    parent = tmp_path / "x"
    shutil.copytree(demo_model_dir, parent / "gen")
    shutil.copytree(demo_model_dir / "generator", parent / "old-export")  # a folder this tool wrote
    before = tree(parent)
    for out in (parent, parent / "gen", parent / "gen" / "generator"):
        line = one_line(capsys, ["export", "--model", str(parent / "gen"), "--out", str(out), "--overwrite"])
        assert "which this command reads" in line
    assert tree(parent) == before
    line = one_line(capsys, ["export", "--model", str(demo_model_dir), "--tokenizer", str(parent / "gen" / "tokenizer"),
                             "--out", str(parent), "--overwrite"])
    assert "which this command reads" in line and tree(parent) == before


def test_overwrite_never_replaces_a_run_or_a_models_part(demo_model_dir, tmp_path, capsys):
    """--overwrite onto a training run (its train_state/ checkpoints) or onto the generator/ of
    another model folder (it would nest a model inside it) is refused; nothing changes."""
    run = tmp_path / "run"
    shutil.copytree(demo_model_dir, run)
    (run / "train_state").mkdir()
    (run / "train_state" / "meta.json").write_text("{}")
    other = tmp_path / "other"
    shutil.copytree(demo_model_dir, other)
    before = tree(tmp_path)
    line = one_line(capsys, ["export", "--model", str(demo_model_dir), "--out", str(run), "--overwrite"])
    assert "holds a training run (train_state/" in line
    line = one_line(capsys, ["export", "--model", str(demo_model_dir), "--out", str(other / "generator"), "--overwrite"])
    assert f"is the generator/ of the model folder {other}" in line
    assert tree(tmp_path) == before


def test_train_out_that_is_a_file(tokdir, tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    line = one_line(capsys, ["train", "--tokenizer", str(tokdir), "--preset", "tiny", "--data", "synthetic",
                             "--steps", "1", "--out", str(f)])
    assert "is a file, not a folder" in line and f.read_text() == "x"


# ----------------------------------------------------------------------------- damaged model files

@pytest.mark.parametrize("damage, words", [
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:1000]), "cannot read"),
    (lambda d: (d / "model.safetensors").write_bytes(bytes(range(256)) * 8), "cannot read"),
    (lambda d: (d / "config.json").write_bytes(bytes(range(128, 256))), "not valid JSON"),
    (lambda d: (d / "config.json").write_text("[1, 2]"), "holds a JSON list"),
    (lambda d: (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()),
                                                          "depth": "two"})), "wrong type"),
    (lambda d: (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()),
                                                          "patch_nums": None})), "wrong type"),
])
def test_damaged_generator_folder(demo_model_dir, tmp_path, capsys, damage, words):
    model = tmp_path / "m"
    shutil.copytree(demo_model_dir, model)
    damage(model / "generator")
    for argv in (["generate", "--model", str(model), "--class", "0", "--num", "1", "--out", str(tmp_path / "g.png")],
                 ["export", "--model", str(model), "--out", str(tmp_path / "e")]):
        assert words in one_line(capsys, argv)
    assert not (tmp_path / "g.png").exists() and not (tmp_path / "e").exists()


def test_damaged_run_files(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    from hart.common.metrics import read_metrics

    good = json.dumps({"step": 1, "loss": 2.0})
    (run / "metrics.jsonl").write_bytes(good.encode() + b"\n" + bytes(range(128, 256)) + b"\n" + good.replace("1", "2").encode())
    assert [r["step"] for r in read_metrics(run)] == [1, 2]  # the damaged line is skipped
    (tmp_path / "file").write_text("x")
    assert "is a file; a folder was expected" in one_line(capsys, ["generate", "--model", str(tmp_path / "file"),
                                                                   "--class", "0"])


# ----------------------------------------------------------------------------- options

@pytest.mark.parametrize("extra, words", [
    (["--lr", "nan"], "--lr must be in"), (["--lr", "-1"], "--lr must be in"),
    (["--label-smoothing", "2"], "--label-smoothing must be in"), (["--ema", "2"], "--ema must be in"),
    (["--ema", "1"], "--ema must be in"), (["--weight-decay", "inf"], "--weight-decay must be in"),
])
def test_train_option_ranges(tokdir, tmp_path, capsys, extra, words):
    out = tmp_path / "new" / "r"
    line = one_line(capsys, ["train", "--tokenizer", str(tokdir), "--preset", "tiny", "--data", "synthetic",
                             "--steps", "1", "--out", str(out), *extra])
    assert words in line and not (tmp_path / "new").exists()  # a bad command makes nothing


def test_train_tokenizer_option_ranges(tmp_path, capsys):
    for extra in (["--lr", "nan"], ["--disc-weight", "-1"]):
        line = one_line(capsys, ["train-tokenizer", "--preset", "tiny", "--data", "synthetic", "--steps", "1",
                                 "--out", str(tmp_path / "t"), *extra])
        assert "must be in" in line


def test_eval_tokenizer_batch_size_and_model_folder(demo_model_dir, tmp_path, capsys):
    for bs in ("0", "-1"):
        assert "--batch-size must be positive" in one_line(
            capsys, ["eval-tokenizer", "--model", str(demo_model_dir), "--data", "synthetic", "--batch-size", bs])
    # a model folder stands for its tokenizer/
    out = tmp_path / "e.json"
    assert hart_main(["eval-tokenizer", "--model", str(demo_model_dir), "--data", "synthetic", "--num", "4",
                      "--out", str(out)]) == 0
    assert json.loads(out.read_text())["num_images"] == 4


def test_the_split_named_in_data_is_the_one_reported(demo_model_dir, tmp_path, capsys):
    out = tmp_path / "e.json"
    argv = ["eval-tokenizer", "--model", str(demo_model_dir), "--data", "synthetic:train", "--num", "4"]
    assert hart_main(argv + ["--out", str(out)]) == 0
    assert json.loads(out.read_text())["split"] == "train" and "4 train images" in capsys.readouterr().out
    assert "names the train split and --split says test" in one_line(capsys, argv + ["--split", "test"])


def test_eval_tokenizer_on_a_class_folder_spreads_num_over_it_and_names_no_split(demo_model_dir, tmp_path, capsys):
    from PIL import Image

    from hart.data.datasets import make_dataset
    from tokenizer.evaluate import evaluate
    from tokenizer.model import HybridTokenizer

    for c, colour in (("a", (250, 0, 0)), ("b", (0, 0, 250))):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (32, 32), colour).save(tmp_path / "imgs" / c / f"{i}.png")
    out = tmp_path / "e.json"
    assert hart_main(["eval-tokenizer", "--model", str(demo_model_dir), "--data", f"folder:{tmp_path / 'imgs'}",
                      "--num", "2", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["split"] is None and "(2 images)" in capsys.readouterr().out
    tok = HybridTokenizer.from_pretrained(demo_model_dir / "tokenizer")
    ds = make_dataset(f"folder:{tmp_path / 'imgs'}", "train", 32)
    two = evaluate(tok, ds, num=2, progress=False)["psnr_hybrid"]
    firsts = evaluate(tok, torch.utils.data.Subset(ds, [0, 6]), progress=False)["psnr_hybrid"]  # one of each class
    assert two == pytest.approx(firsts)


def test_eval_residual_refuses_a_text_model(t2i_model_dir, tmp_path, capsys):
    line = one_line(capsys, ["eval-residual", "--model", str(t2i_model_dir), "--data", "shapes", "--num", "4",
                             "--out", str(tmp_path / "r")])
    assert "text-to-image model" in line and "eval-alignment" in line


def test_generate_refuses_a_grid_too_large(demo_model_dir, tmp_path, capsys):
    for extra in (["--num", "100000000"], ["--scale", "100000"]):
        line = one_line(capsys, ["generate", "--model", str(demo_model_dir), "--class", "0", *extra,
                                 "--out", str(tmp_path / "g.png")])
        assert "megapixels" in line
    assert not (tmp_path / "g.png").exists()


def test_generate_writes_the_format_its_out_names(demo_model_dir, tmp_path, capsys):
    """--out grid.jpg is a JPEG (it was PNG bytes under a .jpg name); an extension no image
    format has is one line before any sampling."""
    from PIL import Image

    from hart.cli import main

    for name, fmt in (("g.jpg", "JPEG"), ("g.webp", "WEBP"), ("g", "PNG")):
        assert main(["generate", "--model", str(demo_model_dir), "--class", "0", "--num", "1",
                     "--out", str(tmp_path / name)]) == 0
        with Image.open(tmp_path / name) as im:
            assert im.format == fmt
    assert "wrote" in capsys.readouterr().out
    for ext in (".xyz", ".h5", ".ico", ".xbm"):  # no format, or one that shrinks or refuses an RGB grid
        line = one_line(capsys, ["generate", "--model", str(tmp_path / "no-model"), "--class", "0", "--num", "1",
                                 "--out", str(tmp_path / f"g{ext}")])
        assert f"cannot write a {ext} image" in line  # said before the model is even looked for
    line = one_line(capsys, ["generate", "--model", str(demo_model_dir), "--class", "0", "--num", "130", "--scale", "8",
                             "--out", str(tmp_path / "wide.webp")])
    assert "a WEBP image is at most 16383 px a side" in line and not (tmp_path / "wide.webp").exists()
    assert not (tmp_path / "g.xyz").exists()


def test_prompts_that_are_not_text():
    from hart.common.errors import UserError
    from hart.text import check_prompts

    assert check_prompts(["a red circle", "\u2764 heart", "123"]) == ["a red circle", "\u2764 heart", "123"]
    assert check_prompts(["\U0001fae8", "e\u0301"])  # a character newer than Python's tables; a mark
    for bad, words in (("\ud800", "not valid text"), ("\u200b\u200b", "empty"), (" \t\n", "empty")):
        with pytest.raises(UserError, match=words):
            check_prompts(["a red circle", bad])


# ----------------------------------------------------------------------------- runs

def test_init_of_another_kind_and_resume_with_other_options(tokdir, t2i_model_dir, tmp_path, capsys, monkeypatch):
    import hart.train as ht

    monkeypatch.setattr(ht, "measure_latent_scales", lambda batches, tokenizer=None, **kw: (0.17, tokenizer and 1.0),
                        raising=False)
    base = ["train", "--tokenizer", str(tokdir), "--preset", "tiny", "--data", "synthetic", "--no-tensorboard"]
    line = one_line(capsys, base + ["--steps", "1", "--out", str(tmp_path / "k"), "--init", str(t2i_model_dir)])
    assert "text-to-image model" in line and "same kind" in line
    out = tmp_path / "run"
    assert hart_main(base + ["--steps", "2", "--batch-size", "4", "--seed", "3", "--out", str(out)]) == 0
    state = tree(out / "train_state")
    for extra, flag in ((["--batch-size", "8", "--seed", "3"], "--batch-size"),
                        (["--batch-size", "4", "--seed", "9"], "--seed")):
        line = one_line(capsys, base + ["--steps", "4", *extra, "--out", str(out), "--resume"])
        assert f"started with {flag}" in line and "--init" in line
    line = one_line(capsys, base[:5] + ["--data", "shapes", "--no-tensorboard", "--steps", "4", "--batch-size", "4",
                                        "--seed", "3", "--out", str(out), "--resume"])
    assert "was trained on synthetic:train (2,048 items), not shapes:train (1,000,000 items)" in line
    assert tree(out / "train_state") == state
    # the same data spelled another way is the same run
    assert hart_main(base[:5] + ["--data", "synthetic:train", "--no-tensorboard", "--steps", "3", "--batch-size", "4",
                                 "--seed", "3", "--out", str(out), "--resume"]) == 0
    # a token cache of other data (here: 16 of synthetic's 2,048 images) is another run
    meta = json.loads((out / "train_state" / "meta.json").read_text())
    assert meta["source"] == {"data": "synthetic:train", "num": 2048}
    assert hart_main(["extract-tokens", "--tokenizer", str(tokdir), "--data", "synthetic", "--limit", "16",
                      "--out", str(tmp_path / "cache")]) == 0
    line = one_line(capsys, ["train", "--tokenizer", str(tokdir), "--preset", "tiny", "--tokens", str(tmp_path / "cache"),
                             "--no-tensorboard", "--steps", "4", "--batch-size", "4", "--seed", "3", "--out", str(out),
                             "--resume"])
    assert "was trained on synthetic:train (2,048 items), not synthetic:train (16 items)" in line
    assert tree(out / "train_state") != state and json.loads((out / "train_state" / "meta.json").read_text())["step"] == 3
    # a run saved before the batch size was recorded is not checked for it
    del meta["batch_size"]
    (out / "train_state" / "meta.json").write_text(json.dumps(meta))
    assert hart_main(base + ["--steps", "4", "--batch-size", "8", "--seed", "3", "--out", str(out), "--resume"]) == 0
    assert json.loads((out / "train_state" / "meta.json").read_text())["step"] == 4


def test_hart_version_and_help_examples(capsys):
    from importlib.metadata import version

    assert hart_main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"hart {version('hart-open')}"
    for command in ("generate", "export", "convert", "fid"):
        with pytest.raises(SystemExit):
            hart_main([command, "--help"])
        out = capsys.readouterr().out
        assert "\nexamples:\n" in out and "``" not in out and ":mod:" not in out and ":func:" not in out


def test_a_preset_on_data_of_the_other_kind_says_what_it_needs(tokdir, tmp_path, capsys):
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (16, 16), (80 * i, 0, 0)).save(tmp_path / f"{i}.png")
    base = ["train", "--tokenizer", str(tokdir), "--steps", "1", "--no-tensorboard"]
    line = one_line(capsys, base + ["--preset", "t2i-tiny", "--data", "synthetic", "--out", str(tmp_path / "a")])
    assert "--preset t2i-tiny is a text-to-image model: it needs captioned data (captions:PATH" in line
    line = one_line(capsys, base + ["--preset", "tiny", "--data", f"images:{tmp_path}", "--out", str(tmp_path / "b")])
    assert "no class names" in line and "folder:PATH" in line
    assert "did you mean captions:PATH?" in one_line(
        capsys, base + ["--preset", "tiny", "--data", f"caption:{tmp_path}", "--out", str(tmp_path / "c")])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_train_takes_the_bundled_models_by_name(tmp_path, capsys):
    # --init default-t2i is the bundled text model's folder: here refused for the class data it is given
    line = one_line(capsys, ["train", "--init", "default-t2i", "--tokenizer", "default", "--data", "synthetic",
                             "--steps", "1", "--no-tensorboard", "--out", str(tmp_path / "r")])
    assert "text-to-image model: it needs captioned data" in line
    assert "no such folder: nope" in one_line(capsys, ["train", "--init", "nope", "--tokenizer", "default", "--data",
                                                       "synthetic", "--steps", "1", "--out", str(tmp_path / "r")])
