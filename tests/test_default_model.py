"""The bundled default model (sampling/default_model): loads, samples every class, is
reproducible, and ships inside the wheel."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from sampling import HARTPipeline
from sampling.pipeline import DEFAULT_MODEL_DIR

FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pipe():
    return HARTPipeline.from_pretrained("default")


def test_default_model_loads_as_shipped(pipe):
    gc, tc = pipe.generator.config, pipe.tokenizer.config
    assert gc.num_classes == 10 and tuple(gc.class_names) == FASHION
    assert gc.diff_head and tc.resolution == 32 and gc.patch_nums == tc.patch_nums
    files = [f for f in DEFAULT_MODEL_DIR.rglob("*") if f.is_file()]
    assert sorted(f.suffix for f in files) == [".json", ".json", ".safetensors", ".safetensors"]
    assert sum(f.stat().st_size for f in files) < 25e6
    assert HARTPipeline.from_pretrained(None).generator.config == gc
    # the head's target scale was measured on the training data, and its condition is normed
    assert gc.residual_scale is not None and 0.01 < gc.residual_scale < 1.0
    assert pipe.generator.decoder_norm is not None


def test_every_class_has_the_right_shape(pipe):
    out = pipe.sample(list(range(10)), seed=0)
    assert out.images.shape == (10, 3, 32, 32)
    assert torch.isfinite(out.images).all() and out.images.abs().max() <= 1
    assert out.residual is not None and out.residual.shape == (10, 16, 8, 8)
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
    # build isolation fetches setuptools from PyPI, as `pip install` itself does
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    wheel = next(tmp_path.glob("*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for sub in ("tokenizer", "generator"):
        for f in ("config.json", "model.safetensors"):
            assert f"sampling/default_model/{sub}/{f}" in names
    assert "sampling/fid/cli.py" in names and "hart/common/io.py" in names
    assert not any("screenshot" in n for n in names)  # a dev tool (tools/), not installed
