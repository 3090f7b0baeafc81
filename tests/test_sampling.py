"""Sampling engine, pipeline and ``hart generate``: cache parity, seeds, batch independence,
options, CLI errors. Tiny CPU models with random weights."""
from __future__ import annotations

import re

import pytest
import torch

from hart.config import GeneratorConfig
from hart.common.errors import UserError
from hart.model import HARTGenerator
from sampling import HARTPipeline, SamplingEngine, SamplingOptions
from sampling.seeds import make_generators
from tokenizer import HybridTokenizer, TokenizerConfig


def _models(seed=0, **gen_kw):
    torch.manual_seed(seed)
    tok = HybridTokenizer(TokenizerConfig.from_name("tiny")).eval()
    gen = HARTGenerator(GeneratorConfig.from_name("tiny", **gen_kw)).eval()
    with torch.no_grad():
        # VAR's init nearly closes the gates (1e-5) and zeroes the diffusion output: open
        # both so that the blocks, the cache and the residual matter in these tests
        for blk in gen.blocks:
            blk.ada_lin[-1].bias[: 2 * gen.config.width].fill_(1.0)
        if gen.diffusion is not None:
            torch.nn.init.normal_(gen.diffusion.final_layer.linear.weight, std=0.1)
    return tok, gen


@pytest.fixture(scope="module")
def pipe():
    tok, gen = _models()
    return HARTPipeline(tok, gen)


# ----------------------------------------------------------------------------- engine invariants

@pytest.mark.parametrize("l2", [True, False])
@pytest.mark.parametrize("cfg", [0.0, 2.5])
def test_cache_parity_with_teacher_forcing(l2, cfg):
    tok, gen = _models(attn_l2_norm=l2)
    engine = SamplingEngine(gen, tok)
    labels = torch.tensor([1, 4, 7])
    out = engine.sample(labels, make_generators([0, 1, 2]), SamplingOptions(cfg=cfg, top_k=0, top_p=1.0),
                        decode=False, return_logits=True)
    cached = torch.cat(out.logits, dim=1)  # (2B or B, L, V)
    with torch.no_grad():
        teacher = tok.teacher_inputs(out.ids)
        dense_c = gen(labels, teacher).logits
        torch.testing.assert_close(cached[:3], dense_c, atol=1e-4, rtol=0)
        if cfg > 0:
            dense_u = gen(torch.full_like(labels, gen.config.null_class), teacher).logits
            torch.testing.assert_close(cached[3:], dense_u, atol=1e-4, rtol=0)
        else:
            assert cached.shape[0] == 3  # no doubled batch without guidance


def test_outputs_shapes_and_ranges(pipe):
    c = pipe.generator.config
    n = pipe.tokenizer.config.latent_size
    out = pipe.sample([0, 9], seed=3, cfg=1.5, top_k=20, top_p=0.9)
    assert [tuple(i.shape) for i in out.ids] == [(2, p * p) for p in c.patch_nums]
    assert all(((i >= 0) & (i < c.codebook_size)).all() for i in out.ids)
    assert out.residual.shape == (2, c.z_channels, n, n) and torch.isfinite(out.residual).all()
    assert out.residual.abs().sum() > 0
    torch.testing.assert_close(out.f_hat, pipe.tokenizer.ids_to_fhat(out.ids))
    R = pipe.tokenizer.config.resolution
    assert out.images.shape == (2, 3, R, R) and out.images.abs().max() <= 1
    assert out.previews is None


def test_top_k_one_is_greedy(pipe):
    """top-k 1 takes the argmax of the guided logits at every scale, whatever the seed, with
    t_k = cfg * k / (K - 1)."""
    opts = dict(cfg=2.0, top_k=1, decode=False)
    a = pipe.sample([2], seed=0, return_logits=True, **opts)
    b = pipe.sample([2], seed=99, **opts)
    K = len(a.ids)
    for k, (ia, ib, lg) in enumerate(zip(a.ids, b.ids, a.logits)):
        t = cfg_ratio(2.0, k, K)
        guided = (1 + t) * lg[:1] - t * lg[1:]
        assert torch.equal(ia, ib) and torch.equal(ia, guided.argmax(-1))


def test_top_k_schedule_switches_from_a_scale_on(pipe):
    """A schedule (HART's top-k drop) applies its top-k from its first scale on: top-k 1 from
    scale 2 makes those scales greedy whatever the seed; earlier scales stay random."""
    sched = dict(cfg=1.0, top_k=0, top_p=1.0, top_k_schedule=((2, 1),))
    runs = [pipe.sample([2] * 8, seed=s, return_logits=True, decode=False, **sched) for s in (0, 50)]
    K = len(runs[0].ids)
    for k in range(2, K):
        t = cfg_ratio(1.0, k, K)
        lg = runs[0].logits[k]
        assert torch.equal(runs[0].ids[k], ((1 + t) * lg[:8] - t * lg[8:]).argmax(-1))
    assert not torch.equal(runs[0].ids[1], runs[1].ids[1])  # 8 images x 4 tokens drawn freely
    hart = SamplingOptions.preset("hart")
    assert [hart.top_k_at(k) for k in (0, 6, 7, 13)] == [600, 600, 300, 300] and hart.smooth and hart.cfg == 4.5
    assert SamplingOptions.preset("var-demo", cfg=2.0).cfg == 2.0


def cfg_ratio(cfg: float, k: int, num_scales: int) -> float:
    return SamplingOptions(cfg=cfg).guidance(k, num_scales)


def test_cfg_ratio_schedule():
    assert [cfg_ratio(3.0, k, 4) for k in range(4)] == [0.0, 1.0, 2.0, 3.0]
    assert cfg_ratio(2.0, 0, 1) == 2.0


def test_same_seed_same_images_other_seed_different(pipe):
    a = pipe.sample([3, 3], seed=5).images
    b = pipe.sample([3, 3], seed=5).images
    c = pipe.sample([3, 3], seed=6).images
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a[0], a[1])  # seeds 5 and 6 inside one batch differ too
    torch.testing.assert_close(a[1], c[0])  # image with seed 6 is the same in either call


@pytest.mark.parametrize("smooth", [False, True])
def test_batch_independence(pipe, smooth):
    labels, seeds = [1, 5, 8, 2], [10, 11, 12, 13]
    batch = pipe.sample(labels, seed=seeds, smooth=smooth)
    for i in (0, 2, 3):
        alone = pipe.sample([labels[i]], seed=[seeds[i]], smooth=smooth)
        assert all(torch.equal(x[i], y[0]) for x, y in zip(batch.ids, alone.ids))
        torch.testing.assert_close(batch.images[i], alone.images[0], atol=1e-4, rtol=0)
        torch.testing.assert_close(batch.residual[i], alone.residual[0], atol=1e-4, rtol=0)


def test_previews_one_per_scale(pipe):
    out = pipe.sample([4], seed=0, previews=True)
    K = pipe.generator.config.num_scales
    assert len(out.previews) == K
    assert all(p.shape == out.images.shape for p in out.previews)
    assert torch.equal(out.previews[-1], out.images)
    pil = pipe.previews([4, 5], seed=0)
    assert len(pil) == 2 and len(pil[0]) == K


def test_smoothing_changes_latent_not_validity(pipe):
    out = pipe.sample([6], seed=1, smooth=True)
    assert torch.isfinite(out.images).all()
    assert not torch.allclose(out.f_hat, pipe.tokenizer.ids_to_fhat(out.ids))


def test_diffusion_steps_and_no_head():
    tok, gen = _models()
    p = HARTPipeline(tok, gen)
    a = p.sample([1], seed=0, diff_steps=2).residual
    b = p.sample([1], seed=0, diff_steps=8).residual
    assert not torch.allclose(a, b)
    tok, gen = _models(head=None)
    out = HARTPipeline(tok, gen).sample([1], seed=0)
    assert out.residual is None and torch.isfinite(out.images).all()


def test_bf16_autocast_runs(pipe):
    tok, gen = pipe.tokenizer, pipe.generator
    out = HARTPipeline(tok, gen, dtype="bf16").sample([1, 2], seed=0)
    assert torch.isfinite(out.images).all()
    assert all(((i >= 0) & (i < gen.config.codebook_size)).all() for i in out.ids)


def test_compiled_step_matches_eager(pipe):
    """fullgraph capture of the per-scale step (the 'eager' backend keeps the test fast)."""
    tok, gen = pipe.tokenizer, pipe.generator
    compiled = HARTPipeline(tok, gen, compile="eager").sample([1, 2], seed=0)
    eager = pipe.sample([1, 2], seed=0)
    assert all(torch.equal(x, y) for x, y in zip(compiled.ids, eager.ids))
    torch.testing.assert_close(compiled.images, eager.images)


def test_pil_output(pipe):
    imgs = pipe([0, 1, 2], seed=0)
    R = pipe.tokenizer.config.resolution
    assert len(imgs) == 3 and imgs[0].size == (R, R) and imgs[0].mode == "RGB"


@pytest.mark.parametrize("bad, message", [
    (dict(cfg=-0.1), "cfg must be >= 0"), (dict(top_p=0.0), "top_p must be in (0, 1]"), (dict(top_p=1.5), "top_p"),
    (dict(top_k=-1), "top_k must be >= 0"), (dict(temperature=0.0), "temperature"), (dict(diff_steps=0), "diff_steps must be >= 1"),
    (dict(head_cfg=-1), "head_cfg must be >= 0"),
    (dict(cfg=10 ** 400), "cfg is out of range: a number of 401 digits"),
    (dict(cfg="x"), "cfg must be a number, got 'x'"), (dict(cfg=None), "cfg must be a number, got None"),
    (dict(top_k=1.5), "top_k must be a whole number, got 1.5"), (dict(smooth="yes"), "smooth must be True or False"),
    (dict(seed="abc"), "a seed must be a whole number, got 'abc'"), (dict(seed=None), "got None"),
    (dict(seed=1.7), "got 1.7"), (dict(seed=2**70), "out of range"), (dict(seed=-1), "out of range"),
    (dict(seed=2**63 - 1), "seed 9223372036854775808 is out of range"),  # the second image's seed
    (dict(seed=[1, "b"]), "got 'b'"),
])
def test_bad_options(pipe, bad, message):
    with pytest.raises(UserError, match=re.escape(message)):
        pipe.sample([1, 2], **{"seed": 0, **bad})


def test_option_values_of_other_numeric_types_are_taken(pipe):
    import numpy as np

    ref = pipe.sample([1], seed=3, cfg=2.0, top_k=5).images
    torch.testing.assert_close(pipe.sample([1], seed=np.int64(3), cfg=np.float32(2), top_k=5.0).images, ref)


def test_one_class_id_alone(pipe):
    assert len(pipe(5, seed=0)) == 1 and pipe(5, seed=0)[0].tobytes() == pipe([5], seed=0)[0].tobytes()
    assert pipe([], seed=0) == []


def test_from_pretrained_on_a_missing_gpu_is_one_line():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(UserError, match=r"device='cuda': no CUDA GPU is visible here; use device='cpu'"):
        HARTPipeline.from_pretrained("default", device="cuda")


def test_bad_class_ids(pipe):
    with pytest.raises(UserError, match="out of range"):
        pipe.sample([10], seed=0)
    with pytest.raises(UserError, match="out of range"):
        pipe.sample([-1], seed=0)


# ----------------------------------------------------------------------------- loading and CLI

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, pipe):
    d = tmp_path_factory.mktemp("model")
    pipe.tokenizer.save_pretrained(d / "tokenizer")
    pipe.generator.save_pretrained(d / "generator")
    return d


def test_from_pretrained_round_trip(model_dir, pipe):
    loaded = HARTPipeline.from_pretrained(model_dir)
    torch.testing.assert_close(loaded.sample([3], seed=2).images, pipe.sample([3], seed=2).images)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        HARTPipeline.from_pretrained(tmp_path / "missing")
    with pytest.raises(UserError, match="not a model folder"):
        HARTPipeline.from_pretrained(tmp_path)


def test_cli_writes_grid_and_images(model_dir, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from sampling.generate import main

    out = tmp_path / "grid.png"
    each = tmp_path / "each"
    main(["--model", str(model_dir), "--class", "3", "--class", "5", "--num", "3", "--cfg", "2",
          "--top-k", "10", "--top-p", "0.9", "--seed", "4", "--batch-size", "2",
          "--out", str(out), "--save-each", str(each)])
    assert Image.open(out).size[1] > 2 * 16
    files = sorted(each.iterdir())
    assert len(files) == 6
    # image j has seed 4 + j whatever the batch size
    pipe = HARTPipeline.from_pretrained(model_dir)
    ref = pipe([5], seed=4 + 4, cfg=2.0, top_k=10, top_p=0.9)[0]
    assert np.array_equal(np.asarray(Image.open(each / "c5_0004.png")), np.asarray(ref))


def test_cli_class_names_and_all_classes(model_dir, tmp_path):
    from PIL import Image

    import argparse
    import shutil

    from hart.common.io import read_json, write_json
    from sampling.generate import main, resolve_classes

    named = tmp_path / "named"
    shutil.copytree(model_dir, named)
    cfg_json = read_json(named / "generator" / "config.json")
    cfg_json["display"]["class_names"] = [f"kind{i}" for i in range(cfg_json["num_classes"])]
    write_json(named / "generator" / "config.json", cfg_json)
    cfg = HARTPipeline.from_pretrained(named).generator.config
    args = argparse.Namespace(all_classes=False, classes=["2", "KIND4"])
    assert resolve_classes(args, cfg) == [2, 4]
    main(["--model", str(named), "--all-classes", "--num", "1", "--out", str(tmp_path / "all.png")])
    assert Image.open(tmp_path / "all.png").size[1] >= cfg.num_classes * 16


@pytest.mark.parametrize("argv, message", [
    (["--class", "Unicorn"], "unknown class 'Unicorn'"),
    ([], "--all-classes"),
    (["--class", "10"], "out of range"),
    (["--class", "-2"], "out of range"),
    (["--class", "1", "--num", "-1"], "--num"),
    (["--class", "1", "--cfg", "-1"], "--cfg"),
    (["--class", "1", "--top-p", "0"], "--top-p"),
    (["--class", "1", "--top-p", "1.01"], "--top-p"),
    (["--class", "1", "--seed", str(2**70)], "out of range"),
    (["--class", "1", "--num", "2", "--seed", str(2**63 - 1)], "seed 9223372036854775808 is out of range"),
])
def test_cli_bad_input_is_one_line(model_dir, tmp_path, capsys, argv, message):
    from sampling.generate import main

    with pytest.raises(SystemExit) as e:
        main(["--model", str(model_dir), "--out", str(tmp_path / "g.png")] + argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err


def test_cli_without_model_and_no_bundled_model_says_pass_model(capsys, tmp_path, monkeypatch):
    from sampling import pipeline
    from sampling.generate import main

    monkeypatch.setattr(pipeline, "DEFAULT_MODEL_DIR", tmp_path / "missing")
    with pytest.raises(SystemExit):
        main(["--class", "1", "--out", str(tmp_path / "g.png")])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--model" in err and "default model" in err


def test_head_cfg_guides_only_the_residual():
    """--head-cfg changes the head's guidance, never the ids; None follows the last scale's ratio."""
    tok, gen = _models()
    with torch.no_grad():  # a head whose prediction depends on its condition
        for blk in gen.diffusion.res_blocks:
            torch.nn.init.normal_(blk.adaLN_modulation[-1].weight, std=0.1)
    pipe = HARTPipeline(tok, gen)
    base = pipe.sample([1, 2], seed=5, cfg=2.0, top_k=20, head_cfg=None)  # the last scale's ratio: cfg
    same = pipe.sample([1, 2], seed=5, cfg=2.0, top_k=20, head_cfg=2.0)
    off = pipe.sample([1, 2], seed=5, cfg=2.0, top_k=20)  # default: no guidance on the head
    assert all(torch.equal(a, b) for a, b in zip(base.ids, off.ids))
    assert torch.equal(base.residual, same.residual) and not torch.allclose(base.residual, off.residual)
    with pytest.raises(UserError, match="head_cfg must be >= 0"):
        SamplingOptions(head_cfg=-1.0).validate()


def test_diff_temperature_flag_cools_only_the_residual():
    """--diff-temperature reaches the head's start noise: same ids, another residual;
    a bad value is one line naming the flag."""
    from sampling.generate import build_parser
    from sampling.options import sampling_options

    parse = build_parser().parse_args
    opts = sampling_options(parse(["--class", "1", "--diff-temperature", "0.5"]))
    assert opts.diff_temperature == 0.5
    assert sampling_options(parse(["--class", "1"])).diff_temperature is None  # the model's own
    assert sampling_options(parse(["--class", "1", "--diff-temperature", "0"])).diff_temperature == 0.0  # cold
    for bad in ("-1", "nan", "inf"):
        with pytest.raises(UserError, match="^--diff-temperature must be >= 0"):
            sampling_options(parse(["--class", "1", "--diff-temperature", bad]))
    for flags, message in ((["--top-p", "2"], "--top-p must be in (0, 1], got 2.0"),
                           (["--top-k", "-3"], "--top-k must be >= 0"), (["--head-cfg", "-1"], "--head-cfg must be >= 0")):
        with pytest.raises(UserError, match="^" + re.escape(message)):  # the flag, as it was typed
            sampling_options(parse(["--class", "1", *flags]))
    tok, gen = _models()
    with torch.no_grad():
        for blk in gen.diffusion.res_blocks:
            torch.nn.init.normal_(blk.adaLN_modulation[-1].weight, std=0.1)
    pipe = HARTPipeline(tok, gen)
    warm = pipe.sample([1, 2], seed=5, top_k=20)
    cold = pipe.sample([1, 2], seed=5, top_k=20, diff_temperature=opts.diff_temperature)
    assert all(torch.equal(a, b) for a, b in zip(warm.ids, cold.ids))
    assert not torch.allclose(warm.residual, cold.residual)
