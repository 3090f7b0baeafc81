"""The hybrid half: the head's target scale, its view of the drawn code, the second tokenizer
stage, head-only training on a trained transformer, hart eval-residual and hart export --tokenizer."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from hart.data.datasets import make_dataset
from hart.model import HARTGenerator
from hart.train import main as train_main
from tokenizer import HybridTokenizer, TokenizerConfig


@pytest.fixture(scope="module")
def gendir(tokdir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "g"
    train_main(["--tokenizer", str(tokdir), "--preset", "tiny", "--data", "synthetic", "--out", str(out),
                "--batch-size", "8", "--steps", "3"])
    return out


def _residual_rms(tokdir, n=2048):
    tok = HybridTokenizer.from_pretrained(tokdir)
    ds = make_dataset("synthetic", "train", 16)
    x = torch.stack([ds[i][0] for i in range(min(n, len(ds)))])
    with torch.no_grad():
        r = tok.encode(x).residual
    return r.double().pow(2).mean().sqrt().item()


def test_residual_scale_is_measured_saved_and_loaded(tokdir, gendir):
    gen = HARTGenerator.from_pretrained(gendir / "generator")
    assert gen.config.stats.residual_scale is not None
    # the first 2048 images the run drew are a shuffle of the same data: same RMS within sampling noise
    assert gen.config.stats.residual_scale == pytest.approx(_residual_rms(tokdir), rel=0.1)
    saved = json.loads((gendir / "generator" / "config.json").read_text())
    assert saved["stats"]["residual_scale"] == gen.config.stats.residual_scale
    state = json.loads((gendir / "train_state" / "meta.json").read_text())
    assert state["config"]["stats"]["residual_scale"] == gen.config.stats.residual_scale


def test_head_condition_depends_on_the_drawn_code(gendir):
    torch.manual_seed(0)
    gen = HARTGenerator.from_pretrained(gendir / "generator")
    c = gen.config
    with torch.no_grad():  # a head whose output layer is not zero, as after training
        gen.diffusion.final_layer.linear.weight.normal_(std=0.2)
    hidden = torch.randn(2, 5, c.width) * 3.0  # a hidden state much larger than the code term
    code_a, code_b = torch.randn(2, 5, c.z_channels), torch.randn(2, 5, c.z_channels)
    x = torch.randn(10, c.z_channels)
    t = torch.full((10,), 500)
    with torch.no_grad():
        ca, cb = gen.diffusion_cond(hidden, code_a), gen.diffusion_cond(hidden, code_b)
        ea = gen.diffusion(x, t, ca.flatten(0, 1))
        eb = gen.diffusion(x, t, cb.flatten(0, 1))
        ea2 = gen.diffusion(x, t, gen.diffusion_cond(hidden, code_a).flatten(0, 1))
    assert torch.equal(ea, ea2)
    assert not torch.allclose(ea, eb, atol=1e-6)
    # the condition is normalised after the sum (HART's decoder_norm): unit RMS per token
    rms = ca.pow(2).mean(-1).sqrt()
    assert torch.allclose(rms, torch.ones_like(rms), atol=0.05)


def test_second_tokenizer_stage_keeps_frozen_parts_bit_identical(tokdir, tmp_path):
    from tokenizer.train import main as tok_main

    out = tmp_path / "tok2"
    tok_main(["--init", str(tokdir), "--freeze-codebook", "--data", "synthetic", "--out", str(out),
              "--steps", "4", "--batch-size", "8", "--disc-start", "2", "--save-every", "4"])
    before = load_file(str(tokdir / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    raw = load_file(str(out / "train_state" / "model.safetensors"))
    frozen = [k for k in before if k.startswith(("encoder.", "quant_conv.", "quantize."))]
    assert frozen and any(k.startswith("quantize.codebook") for k in frozen)
    for state in (after, raw):
        assert all(torch.equal(before[k], state[k]) for k in frozen)
    trained = [k for k in before if k.startswith(("decoder.", "post_quant_conv."))]
    assert any(not torch.equal(before[k], raw[k]) for k in trained)
    # so the ids and the residual are exactly those of the first stage
    a, b = HybridTokenizer.from_pretrained(tokdir), HybridTokenizer.from_pretrained(out)
    x = torch.stack([make_dataset("synthetic", "test", 16)[i][0] for i in range(4)])
    ca, cb = a.encode(x), b.encode(x)
    assert all(torch.equal(i, j) for i, j in zip(ca.ids, cb.ids)) and torch.equal(ca.residual, cb.residual)


def test_grayscale_output_is_the_channel_mean_and_travels_with_the_weights(tmp_path):
    torch.manual_seed(0)
    tok = HybridTokenizer(TokenizerConfig.from_name("tiny", grayscale=True)).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        for img in (tok.decode(tok.encode(x)), tok(x).recon):
            assert torch.equal(img[:, 0], img[:, 1]) and torch.equal(img[:, 1], img[:, 2])
        colour = tok.decoder(tok.post_quant_conv(tok.latent(x)))
        assert not torch.equal(colour[:, 0], colour[:, 1])  # the option, not the network, makes it gray
        exact = tok(x, torch.zeros(2, dtype=torch.bool)).recon  # False: decode the exact latent
        assert torch.allclose(exact, colour.mean(1, keepdim=True).expand_as(colour))
    tok.save_pretrained(tmp_path / "t")
    assert HybridTokenizer.from_pretrained(tmp_path / "t").config.grayscale


def test_a_decoder_stage_measures_grayscale_data_and_export_accepts_it(tokdir, gendir, tmp_path, capsys):
    """Grayscale is measured on the training data at a new run or an --init stage; it changes
    what the decoder outputs, not the tokens, so export still swaps the tokenizer in."""
    from PIL import Image

    from hart.export import main as export_main
    from tokenizer.train import is_grayscale
    from tokenizer.train import main as tok_main

    colour = make_dataset("synthetic", "train", 16)
    assert not is_grayscale(colour)
    g = torch.Generator().manual_seed(0)
    folder = tmp_path / "gray"
    folder.mkdir()
    for i in range(12):
        v = (torch.rand(16, 16, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(v, mode="L").convert("RGB").save(folder / f"{i}.png")
    gray = make_dataset(f"images:{folder}", "train", 16)
    assert is_grayscale(gray)
    assert not HybridTokenizer.load_config(gendir / "tokenizer").grayscale
    out = tmp_path / "tokg"
    tok_main(["--init", str(gendir / "tokenizer"), "--freeze-codebook", "--data", f"images:{folder}", "--out",
              str(out), "--steps", "2", "--batch-size", "4", "--save-every", "2"])
    assert HybridTokenizer.load_config(out).grayscale
    assert "grayscale output on" in capsys.readouterr().out
    # --grayscale off trains every channel on gray data (export --grayscale on ships the mean)
    tok_main(["--init", str(out), "--freeze-codebook", "--data", f"images:{folder}", "--out",
              str(tmp_path / "tokc"), "--steps", "1", "--batch-size", "4", "--grayscale", "off"])
    assert not HybridTokenizer.load_config(tmp_path / "tokc").grayscale
    export_main(["--model", str(gendir), "--tokenizer", str(out), "--out", str(tmp_path / "m"), "--storage", "fp32"])
    assert HybridTokenizer.load_config(tmp_path / "m" / "tokenizer").grayscale
    # export --grayscale sets it on a tokenizer trained before it existed; the weights stay
    export_main(["--model", str(gendir), "--out", str(tmp_path / "g"), "--storage", "fp32", "--grayscale", "on"])
    assert HybridTokenizer.load_config(tmp_path / "g" / "tokenizer").grayscale
    a = load_file(str(gendir / "tokenizer" / "model.safetensors"))
    b = load_file(str(tmp_path / "g" / "tokenizer" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        export_main(["--model", str(gendir / "generator"), "--out", str(tmp_path / "x"), "--grayscale", "on"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tokenizer" in err[0]


def test_second_stage_needs_init(tmp_path, capsys):
    from tokenizer.train import main as tok_main

    with pytest.raises(SystemExit):
        tok_main(["--freeze-codebook", "--data", "synthetic", "--out", str(tmp_path / "t"), "--steps", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--init" in err[0]


def test_head_only_training_keeps_the_transformer(tokdir, gendir, tmp_path):
    out = tmp_path / "head"
    train_main(["--init", str(gendir), "--freeze-transformer", "--tokenizer", str(tokdir), "--data", "synthetic",
                "--out", str(out), "--batch-size", "8", "--steps", "3"])
    a = load_file(str(gendir / "generator" / "model.safetensors"))
    b = load_file(str(out / "train_state" / "model.safetensors"))
    head = ("diffusion.", "decoder_norm.")
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith(head))
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith(head))
    # a head kept from --init keeps its scale
    assert (HARTGenerator.from_pretrained(out / "generator").config.stats.residual_scale
            == HARTGenerator.from_pretrained(gendir / "generator").config.stats.residual_scale)


def test_residual_target_true_trains_the_head_on_the_tokenizers_residual(tokdir, gendir, tmp_path, capsys,
                                                                           monkeypatch):
    """--residual-target true: the head's target is the true residual whatever the transformer
    would draw; sampled (the default) shifts it by the drawn codes; the choice is saved and a
    resume that contradicts it is one line."""
    import hart.objective as train_mod

    out = tmp_path / "true"
    train_main(["--init", str(gendir), "--freeze-transformer", "--residual-target", "true", "--tokenizer",
                str(tokdir), "--data", "synthetic", "--out", str(out), "--batch-size", "8", "--steps", "2"])
    assert not HARTGenerator.from_pretrained(out / "generator").config.training.residual_from_sampled
    assert HARTGenerator.from_pretrained(gendir / "generator").config.training.residual_from_sampled
    capsys.readouterr()
    with pytest.raises(SystemExit):
        train_main(["--freeze-transformer", "--residual-target", "sampled", "--tokenizer", str(tokdir), "--data",
                    "synthetic", "--out", str(out), "--batch-size", "8", "--steps", "3", "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--residual-target true" in err[0], err

    tok = HybridTokenizer.from_pretrained(tokdir)
    ds = make_dataset("synthetic", "train", tok.config.resolution)
    with torch.no_grad():
        code = tok.encode(torch.stack([ds[i][0] for i in range(4)]))
    labels = torch.zeros(4, dtype=torch.long)
    seen = []
    monkeypatch.setattr(train_mod, "diffusion_loss", lambda head, target, *a: seen.append(target) or target.sum())
    targets = {}
    for sampled in (False, True):
        gen = HARTGenerator.from_pretrained(gendir / "generator")
        gen.config = gen.config.replace_in("training", residual_from_sampled=sampled, diff_keep_frac=1.0)
        with torch.no_grad():  # a transformer that never draws the true last-scale codes
            gen.head.weight.zero_()
            gen.head.bias.fill_(-30.0)
            gen.head.bias[(code.ids[-1].flatten()[0] + 1) % tok.config.codebook_size] = 30.0
        seen.clear()
        train_mod.TrainingObjective(gen, tok)(code.ids, code.residual, labels, torch.Generator().manual_seed(0))
        targets[sampled] = seen[0]
        true = code.residual.flatten(2).transpose(1, 2).reshape(-1, code.residual.shape[1]) / gen.config.target_scale
        assert torch.allclose(targets[sampled], true, atol=1e-5) == (not sampled)


def test_init_adds_a_head_to_a_model_without_one(tokdir, tmp_path, capsys):
    plain = tmp_path / "plain"
    train_main(["--tokenizer", str(tokdir), "--preset", "tiny", "--data", "synthetic", "--out", str(plain),
                "--batch-size", "8", "--steps", "2"])
    cfg = json.loads((plain / "generator" / "config.json").read_text())
    cfg["head"] = None  # pretend it was trained without a head
    (plain / "generator" / "config.json").write_text(json.dumps(cfg))
    state = {k: v for k, v in load_file(str(plain / "generator" / "model.safetensors")).items()
             if not k.startswith(("diffusion.", "decoder_norm."))}
    from safetensors.torch import save_file

    save_file(state, str(plain / "generator" / "model.safetensors"))
    capsys.readouterr()
    train_main(["--init", str(plain), "--preset", "tiny", "--freeze-transformer", "--tokenizer", str(tokdir),
                "--data", "synthetic", "--out", str(tmp_path / "h"), "--batch-size", "8", "--steps", "2"])
    out = capsys.readouterr().out
    assert "starting fresh: decoder_norm, diffusion" in out and "residual scale" in out
    assert HARTGenerator.from_pretrained(tmp_path / "h" / "generator").diffusion is not None


def test_eval_residual_runs_and_reports(tokdir, gendir, tmp_path, capsys):
    from sampling.eval.residual import main as eval_main

    assert eval_main(["--model", str(gendir), "--data", "synthetic", "--num", "12", "--batch-size", "8",
                      "--out", str(tmp_path / "r")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    keys = [kv.split("=")[0] for kv in last.split()]
    assert keys == ["psnr_discrete", "psnr_hybrid", "psnr_head", "psnr_head_mean", "r2_mean", "r2_one"]  # true ids
    res = json.loads((tmp_path / "r" / "residual.json").read_text())
    assert res["num_images"] == 12
    # the hybrid row is the decode of the exact latent, the discrete row that of the ids alone
    from tokenizer.losses import psnr

    tok = HybridTokenizer.from_pretrained(gendir / "tokenizer")
    x = torch.stack([make_dataset("synthetic", "test", 16)[i][0] for i in range(12)])
    with torch.no_grad():
        exact = psnr(tok.decode_latent(tok.latent(x)), x).mean().item()
        discrete = psnr(tok.decode_ids(tok.encode(x).ids), x).mean().item()
    assert res["psnr_hybrid"] == pytest.approx(exact, abs=1e-3)
    assert res["psnr_discrete"] == pytest.approx(discrete, abs=1e-3)
    assert (tmp_path / "r" / "residual.png").is_file()


def test_eval_residual_fd_reports_true_and_own_ids(tokdir, gendir, tmp_path, capsys, monkeypatch):
    """--fd: FD of the five decodes and both recovered shares, each from its own FD values."""
    import sampling.eval.features as features
    from sampling.eval.residual import main as eval_main
    from tests.test_fid import FakeExtractor

    monkeypatch.setenv("HART_CACHE", str(tmp_path / "cache"))  # fake statistics stay out of the real cache
    monkeypatch.setattr(features, "load_extractor", lambda name, weights=None, device="cpu": FakeExtractor(name))
    assert eval_main(["--model", str(gendir), "--data", "synthetic", "--num", "12", "--batch-size", "8",
                      "--ref-num", "16", "--fd", "--out", str(tmp_path / "r")]) == 0
    own_line, last = capsys.readouterr().out.strip().splitlines()[-2:]
    assert [kv.split("=")[0] for kv in last.split()][-4:] == ["fd_discrete", "fd_hybrid", "fd_head", "fd_recovered"]
    assert "fd_own_discrete=" in own_line and "fd_recovered_own=" in own_line
    res = json.loads((tmp_path / "r" / "residual.json").read_text())
    for pre, key in (("", "fd_recovered"), ("own_", "fd_recovered_own")):
        gain = res[f"fd_{pre}discrete"] - res["fd_hybrid"]
        want = (res[f"fd_{pre}discrete"] - res[f"fd_{pre}head"]) / gain if gain > 0 else None
        assert res[key] == (pytest.approx(want) if want is not None else None)
    assert all(res[f"fd_{k}"] >= 0 for k in ("discrete", "hybrid", "head", "own_discrete", "own_head"))
    assert res["fd_reference"] == {"data": "synthetic:train", "num": 16}
    # too few images for a covariance of the features' rank: refused, as hart fid refuses it
    for num, ref_num in (("12", "16"), ("40", "16")):
        with pytest.raises(SystemExit):
            eval_main(["--model", str(gendir), "--data", "synthetic", "--num", num, "--ref-num", ref_num, "--fd",
                       "--min-samples", "20", "--out", str(tmp_path / "r2")])
        assert "needs at least 20" in capsys.readouterr().err


def test_eval_residual_head_settings(tokdir, gendir, tmp_path, capsys):
    """--diff-steps / --diff-temperature change the head's draws only, and are recorded."""
    from sampling.eval.residual import main as eval_main

    base = ["--model", str(gendir), "--data", "synthetic", "--num", "8", "--batch-size", "8"]
    res = {}
    for name, extra in (("model", []), ("cold", ["--diff-steps", "4", "--diff-temperature", "0.3"])):
        assert eval_main(base + extra + ["--out", str(tmp_path / name)]) == 0
        res[name] = json.loads((tmp_path / name / "residual.json").read_text())
    cfg = HARTGenerator.from_pretrained(gendir / "generator").config
    assert (res["model"]["diff_steps"], res["model"]["diff_temperature"]) == (cfg.head.sample_steps, cfg.head.temperature)
    assert (res["cold"]["diff_steps"], res["cold"]["diff_temperature"]) == (4, 0.3)
    for k in ("psnr_discrete", "psnr_hybrid"):
        assert res["cold"][k] == res["model"][k]
    assert res["cold"]["psnr_head"] != res["model"]["psnr_head"]
    assert "head: 4 steps, temperature 0.3" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["no-head", "tokenizer-only", "split", "temperature"])
def test_eval_residual_one_line_errors(tokdir, gendir, tmp_path, capsys, case):
    from sampling.eval.residual import main as eval_main

    if case == "no-head":
        model = tmp_path / "nohead"
        train_main(["--tokenizer", str(tokdir), "--preset", "tiny", "--data", "synthetic", "--out", str(model),
                    "--batch-size", "8", "--steps", "1", "--save-every", "1"])
        cfg = json.loads((model / "generator" / "config.json").read_text())
        cfg["head"] = None
        (model / "generator" / "config.json").write_text(json.dumps(cfg))
        st = {k: v for k, v in load_file(str(model / "generator" / "model.safetensors")).items()
              if not k.startswith(("diffusion.", "decoder_norm."))}
        from safetensors.torch import save_file

        save_file(st, str(model / "generator" / "model.safetensors"))
        argv, word = ["--model", str(model)], "no residual head"
    elif case == "tokenizer-only":
        argv, word = ["--model", str(tokdir)], "tokenizer folder"
    elif case == "split":
        argv, word = ["--model", str(gendir), "--split", "validation"], "unknown split"
    else:
        argv, word = ["--model", str(gendir), "--diff-temperature", "-1"], "--diff-temperature must be >= 0"
    capsys.readouterr()
    with pytest.raises(SystemExit):
        eval_main(argv + ["--data", "synthetic", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and word in err[0], err


def test_export_swaps_in_a_second_stage_tokenizer_only(tokdir, gendir, tmp_path, capsys):
    from hart.export import main as export_main
    from tokenizer.train import main as tok_main

    tok2 = tmp_path / "tok2"
    tok_main(["--init", str(gendir / "tokenizer"), "--freeze-codebook", "--data", "synthetic", "--out", str(tok2),
              "--steps", "2", "--batch-size", "8"])
    export_main(["--model", str(gendir), "--tokenizer", str(tok2), "--out", str(tmp_path / "m"), "--storage", "fp32"])
    a = load_file(str(tok2 / "model.safetensors"))
    b = load_file(str(tmp_path / "m" / "tokenizer" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = tmp_path / "other"
    torch.manual_seed(5)
    HybridTokenizer(TokenizerConfig.from_name("tiny")).save_pretrained(other)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        export_main(["--model", str(gendir), "--tokenizer", str(other), "--out", str(tmp_path / "m2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "same tokens" in err[0]


def test_export_records_the_heads_temperature(gendir, tmp_path, capsys):
    """--diff-temperature T travels in the generator's config: the exported model samples
    with T unless told otherwise, an explicit value still wins, and the ids never change."""
    from hart.export import main as export_main
    from sampling import HARTPipeline

    export_main(["--model", str(gendir), "--out", str(tmp_path / "cold"), "--storage", "fp32",
                 "--diff-temperature", "0.5"])
    src, cold = HARTPipeline.from_pretrained(gendir), HARTPipeline.from_pretrained(tmp_path / "cold")
    assert src.generator.config.head.temperature == 1.0 and cold.generator.config.head.temperature == 0.5
    with torch.no_grad():  # a head whose prediction depends on its condition and start noise
        for pipe in (src, cold):
            torch.manual_seed(3)
            for blk in pipe.generator.diffusion.res_blocks:
                torch.nn.init.normal_(blk.adaLN_modulation[-1].weight, std=0.1)
    kw = dict(seed=2, top_k=20)
    own, warm = cold.sample([1, 2], **kw), src.sample([1, 2], **kw)
    assert all(torch.equal(a, b) for a, b in zip(own.ids, warm.ids))
    assert torch.allclose(own.residual, src.sample([1, 2], diff_temperature=0.5, **kw).residual)
    assert torch.allclose(cold.sample([1, 2], diff_temperature=1.0, **kw).residual, warm.residual)
    assert not torch.allclose(own.residual, warm.residual)
    for argv, word in ((["--diff-temperature", "-0.5"], "--diff-temperature must be >= 0"),
                       (["--diff-temperature", "0.5", "--model", str(gendir / "tokenizer")], "residual head")):
        capsys.readouterr()
        with pytest.raises(SystemExit):
            export_main(["--model", str(gendir), "--out", str(tmp_path / "bad"), *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and word in err[0], err
    assert not (tmp_path / "bad").exists()
    # what ran is recorded with the model's value filled in; a run from --init starts at 1 again
    from sampling.options import SamplingOptions, as_sampled

    rec = as_sampled(dataclasses.asdict(SamplingOptions()), cold.generator.config)
    assert rec["diff_temperature"] == 0.5 and rec["diff_steps"] == cold.generator.config.head.sample_steps
    assert as_sampled(dataclasses.asdict(SamplingOptions(diff_temperature=2.0)), cold.generator.config)[
        "diff_temperature"] == 2.0
    train_main(["--init", str(tmp_path / "cold"), "--freeze-transformer", "--tokenizer", str(gendir / "tokenizer"),
                "--data", "synthetic", "--out", str(tmp_path / "again"), "--batch-size", "8", "--steps", "1"])
    assert HARTGenerator.from_pretrained(tmp_path / "again" / "generator").config.head.temperature == 1.0


def test_old_head_without_decoder_norm_is_refused_with_a_hint(gendir, tmp_path, capsys):
    import shutil

    from hart.common.errors import UserError

    g = tmp_path / "g"
    shutil.copytree(gendir / "generator", g)
    st = {k: v for k, v in load_file(str(g / "model.safetensors")).items() if not k.startswith("decoder_norm.")}
    from safetensors.torch import save_file

    save_file(st, str(g / "model.safetensors"))
    with pytest.raises(UserError, match="--freeze-transformer"):
        HARTGenerator.from_pretrained(g)


def test_train_a_head_of_another_size_on_an_init_transformer(tokdir, gendir, tmp_path, capsys):
    """--diff-width / --diff-depth: a fresh head of that size on the --init transformer (kept
    bit-identical under --freeze-transformer), saved in the config; a resume must keep them."""
    init = HARTGenerator.from_pretrained(gendir / "generator")
    out = tmp_path / "wide"
    train_main(["--init", str(gendir), "--freeze-transformer", "--residual-target", "true",
                "--diff-width", "96", "--diff-depth", "1", "--tokenizer", str(tokdir), "--data", "synthetic",
                "--out", str(out), "--batch-size", "8", "--steps", "2"])
    assert "starting fresh: diffusion" in capsys.readouterr().out
    gen = HARTGenerator.from_pretrained(out / "generator")
    assert (gen.config.head.width, gen.config.head.depth) == (96, 1) and len(gen.diffusion.res_blocks) == 1
    assert gen.diffusion.input_proj.weight.shape[0] == 96
    a, b = init.state_dict(), gen.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith(("diffusion.", "decoder_norm.")))
    for argv, word in [(["--diff-width", "64", "--resume"], "--diff-width 96"),
                       (["--diff-depth", "0"], "at least 1")]:
        with pytest.raises(SystemExit):
            train_main(["--freeze-transformer", "--tokenizer", str(tokdir), "--data", "synthetic", "--out", str(out),
                        "--batch-size", "8", "--steps", "3"] + argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and word in err[0], err


def _random_lpips_file(path):
    from safetensors.torch import save_file

    from tokenizer.losses import LPIPS

    torch.manual_seed(0)
    ref = LPIPS()
    state = {k: torch.randn_like(v) * 0.05 for k, v in ref.state_dict().items() if k.startswith("features.")}
    state.update({f"lin{i}.model.1.weight": torch.ones_like(ref.lins[i].weight) for i in range(5)})
    save_file(state, str(path))
    return path


def test_feature_discriminator_standardises_and_passes_gradients(tmp_path):
    """FeatureDiscriminator: after ``fit`` the real images' pooled features are standardised
    (mean 0, std 1), the VGG16 is neither a parameter nor in the state, and the decoder gets a
    gradient through it."""
    from tokenizer.losses import LPIPS, FeatureDiscriminator

    lp = LPIPS.from_file(_random_lpips_file(tmp_path / "f.safetensors"))
    disc = FeatureDiscriminator(lp)
    assert set(disc.state_dict()) == {"mu", "sd", "head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias"}
    assert all(p.requires_grad for p in disc.parameters()) and not any(p.requires_grad for p in lp.parameters())
    x = torch.rand(64, 3, 16, 16) * 2 - 1
    disc.fit(x, batch=24)
    z = (disc.pooled(x) - disc.mu) / disc.sd
    assert z.shape == (64, 1920)
    live = disc.sd > 1e-3 * disc.sd.max()  # a channel that ReLU keeps at 0 for every image has nothing to standardise
    assert live.float().mean() > 0.5
    assert z.mean(0).abs().max() < 1e-3 and (z.std(0)[live] - 1).abs().max() < 1e-2
    y = x[:4].clone().requires_grad_()
    out = disc(y)
    assert out.shape == (4, 1)
    out.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0


def test_a_decoder_stage_with_the_feature_discriminator(tokdir, tmp_path, capsys):
    """--disc-input features: the discriminator is fit to real images before the first step,
    keeps that standardisation on --resume, saves only its head, and the run refuses to start
    without --lpips-weights in one line."""
    from tokenizer.train import main as tok_main

    f = _random_lpips_file(tmp_path / "f.safetensors")
    out_dir = tmp_path / "tok-feat"
    base = ["--init", str(tokdir), "--freeze-codebook", "--data", "synthetic", "--out", str(out_dir),
            "--batch-size", "8", "--disc-start", "0", "--save-every", "2", "--log-every", "1",
            "--no-tensorboard", "--disc-input", "features", "--lpips-weights", str(f)]
    tok_main(base + ["--steps", "2"])
    disc = load_file(str(out_dir / "train_state" / "disc.safetensors"))
    assert set(disc) == {"mu", "sd", "head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias"}
    assert disc["sd"].min() > 0 and disc["mu"].abs().sum() > 0
    before = load_file(str(tokdir / "model.safetensors"))
    raw = load_file(str(out_dir / "train_state" / "model.safetensors"))
    frozen = [k for k in before if k.startswith(("encoder.", "quant_conv.", "quantize."))]
    assert frozen and all(torch.equal(before[k], raw[k]) for k in frozen)
    tok_main(["--data", "synthetic", "--out", str(out_dir), "--resume", "--steps", "3", "--batch-size", "8",
              "--save-every", "1", "--log-every", "1", "--no-tensorboard", "--disc-input", "features",
              "--lpips-weights", str(f)])
    again = load_file(str(out_dir / "train_state" / "disc.safetensors"))
    assert torch.equal(again["mu"], disc["mu"]) and torch.equal(again["sd"], disc["sd"])
    lines = [json.loads(s) for s in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3] and all(m["loss/disc"] > 0 for m in lines)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        tok_main([a for a in base if a not in ("--lpips-weights", str(f))] + ["--steps", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--lpips-weights" in err[0], err


# ----------------------------------------------------------------------------- map head (head.mix map)

def _map_head(seed=0):
    from hart.heads import MapHead

    torch.manual_seed(seed)
    return MapHead(channels=2, cond_channels=4, width=16, depth=3, grid=4)


def test_map_head_sees_f_hat_and_the_condition_and_only_its_own_image():
    n, B = 4, 3
    head = _map_head()
    x, cond = torch.randn(B * n * n, 2), torch.randn(B * n * n, 4 + 2)  # condition | f_hat
    t = torch.randint(0, 1000, (B,)).repeat_interleave(n * n)
    with torch.no_grad():
        assert head(x, t, cond).abs().max() == 0  # the output conv starts at zero
        for p in head.parameters():  # trained-looking weights
            p.normal_(std=0.2)
        y = head(x, t, cond)
        for col in (-1, 0):  # f_hat of image 0 at cell (1, 1); its transformer condition there
            c2 = cond.clone()
            c2[n + 1, col] += 1.0
            changed = (head(x, t, c2) - y).abs().sum(1).view(B, n, n) > 0
            # convs and attention over the whole grid move all of image 0, no other image
            assert changed[0].all() and not changed[1:].any()
    with pytest.raises(ValueError, match="whole 4x4"):
        head(x[:-1], t[:-1], cond[:-1])
    with pytest.raises(ValueError, match="f_hat"):
        head(x, t, cond[:, :4])


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_loss_and_sampler_read_the_heads_prediction_type(prediction):
    """An oracle head for a point mass at c (it knows x0 = c) has zero loss exactly when the
    loss reads its output as the type it predicts, and DDIM lands on c; a scheduler of the
    other type is refused. (DDIM's last step, at t = 1, nearly returns x itself, so a
    misread sampler lands close to c too: the loss is the test that tells the types apart.)"""
    from hart.diffusion import make_sample_scheduler
    from hart.diffusion import diffusion_loss, make_train_scheduler, sample_residual

    ab, c = make_train_scheduler().alphas_cumprod, torch.tensor([0.7, -1.3])

    class Oracle(torch.nn.Module):
        channels, grid, learn_sigma = 2, 0, False

        def forward(self, x, t, cond):
            a = ab[t].unsqueeze(1).to(x)
            eps = (x - a.sqrt() * c) / (1 - a).sqrt()
            return eps if prediction == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * c

    other = "epsilon" if prediction == "v_prediction" else "v_prediction"
    cond, target = torch.zeros(6, 1), c.expand(6, 2)
    losses = {p: diffusion_loss(Oracle(), target, cond, 2, None, torch.Generator().manual_seed(0), p).item()
              for p in (prediction, other)}
    assert losses[prediction] < 1e-6 and losses[other] > 1e-2, losses
    d = sample_residual(Oracle(), cond, steps=8, generator=torch.Generator().manual_seed(0), prediction=prediction)
    assert torch.allclose(d, target, atol=1e-4)
    with pytest.raises(ValueError, match="predicts"):
        sample_residual(Oracle(), cond, steps=8, scheduler=make_sample_scheduler(prediction=other), prediction=prediction)
    with pytest.raises(ValueError, match="iddpm"):
        sample_residual(Oracle(), cond, steps=8, sampler="iddpm", prediction="v_prediction")


@pytest.mark.parametrize("bad, word", [(dict(head=dict(prediction="v_prediction", sampler="iddpm")), "ddim"),
                                       (dict(head=dict(mix="map", width=20)), "multiple of 8"),
                                       (dict(stats=dict(fhat_scale=0.0)), "fhat_scale"),
                                       (dict(head=dict(metric="pixels")), "head.metric")])
def test_map_and_v_head_configs_are_checked(bad, word):
    from hart.common.errors import UserError
    from hart.config import GeneratorConfig

    with pytest.raises(UserError, match=word):
        GeneratorConfig(**{**GeneratorConfig.PRESETS["tiny"], **bad})


def test_train_a_map_head_with_v_prediction_in_the_decoders_metric(tokdir, gendir, tmp_path, capsys):
    """--diff-mix map --diff-prediction v_prediction --diff-metric decoder on an --init
    transformer: a fresh map head; f_hat's scale and the decoder metric measured and saved
    (symmetric positive definite, the target of unit RMS on the training data, inverted
    exactly); the transformer kept bit-identical; eval-residual and sampling condition the
    head on f_hat; a resume must keep the prediction type and the metric."""
    from hart.heads import MapHead
    from sampling import HARTPipeline
    from sampling.eval.residual import main as eval_main

    out = tmp_path / "map"
    train_main(["--init", str(gendir), "--freeze-transformer", "--residual-target", "true", "--diff-mix", "map",
                "--diff-prediction", "v_prediction", "--diff-metric", "decoder", "--diff-width", "16", "--diff-depth", "2",
                "--diff-batch-mul", "2",
                "--tokenizer", str(tokdir), "--data", "synthetic", "--out", str(out), "--batch-size", "8", "--steps", "2"])
    printed = capsys.readouterr().out
    assert "starting fresh: diffusion" in printed and "f_hat scale" in printed and "decoder metric" in printed
    gen = HARTGenerator.from_pretrained(out / "generator")
    c = gen.config
    assert isinstance(gen.diffusion, MapHead) and (c.head.mix, c.head.prediction) == ("map", "v_prediction")
    assert c.training.diff_batch_mul == 2
    tok = HybridTokenizer.from_pretrained(tokdir)
    ds = make_dataset("synthetic", "train", 16)
    with torch.no_grad():
        code = tok.encode(torch.stack([ds[i][0] for i in range(min(2048, len(ds)))]))
    assert c.stats.fhat_scale == pytest.approx(code.f_hat.double().pow(2).mean().sqrt().item(), rel=0.1)
    A, r = gen.residual_metric.double(), code.residual.permute(0, 2, 3, 1).reshape(-1, c.z_channels)
    assert c.head.metric == "decoder" and torch.allclose(A, A.T, atol=1e-4) and torch.linalg.eigvalsh(A).min() > 0
    assert not torch.allclose(A / A.diag().mean(), torch.eye(c.z_channels, dtype=A.dtype), atol=0.05)  # not a plain scale
    assert gen.to_target(r).pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=0.2)
    assert torch.allclose(gen.from_target(gen.to_target(r)), r, atol=1e-5)
    init = HARTGenerator.from_pretrained(gendir / "generator").state_dict()
    assert all(torch.equal(v, gen.state_dict()[k]) for k, v in init.items() if not k.startswith(("diffusion.", "decoder_norm.")))
    with torch.no_grad():
        for p in gen.diffusion.out_conv.parameters():  # a head whose draws depend on f_hat
            p.normal_(std=0.5)
    pipe = HARTPipeline.from_pretrained(str(out))
    pipe.generator.load_state_dict(gen.state_dict())
    a = pipe.sample([0, 1], seed=3)
    assert a.residual.shape == a.f_hat.shape and a.residual.abs().sum() > 0
    assert torch.equal(pipe.sample([0, 1], seed=3).residual, a.residual)
    assert eval_main(["--model", str(out), "--data", "synthetic", "--num", "6", "--batch-size", "4",
                      "--out", str(tmp_path / "r")]) == 0
    from hart.export import main as export_main  # an exported copy keeps the measured metric

    export_main(["--model", str(out), "--out", str(tmp_path / "p"), "--storage", "fp32"])
    assert torch.equal(HARTGenerator.from_pretrained(tmp_path / "p" / "generator").residual_metric, gen.residual_metric)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        train_main(["--freeze-transformer", "--diff-prediction", "epsilon", "--tokenizer", str(tokdir),
                    "--data", "synthetic", "--out", str(out), "--batch-size", "8", "--steps", "3", "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--diff-prediction v_prediction" in err[0], err
    with pytest.raises(SystemExit):
        train_main(["--freeze-transformer", "--diff-metric", "scale", "--tokenizer", str(tokdir),
                    "--data", "synthetic", "--out", str(out), "--batch-size", "8", "--steps", "3", "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--diff-metric decoder" in err[0], err


def test_sharpness_loss_holds_the_images_amount_of_fine_detail():
    """Zero for the image itself, whatever its detail; positive for a blur of it and for added
    noise; and a gradient step on a blurred decode gives it back fine detail."""
    import torch.nn.functional as F

    from tokenizer.losses import laplacian_energy, sharpness_loss

    g = torch.Generator().manual_seed(0)
    x = (torch.rand(4, 3, 16, 16, generator=g) * 2 - 1).clamp(-1, 1)
    assert sharpness_loss(x, x).item() == 0.0
    blur = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    noisy = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    assert sharpness_loss(blur, x).item() > 0.1 and sharpness_loss(noisy, x).item() > 0.01
    # the same detail shifted by a pixel has the same energy: the term asks for an amount, not a place
    assert sharpness_loss(torch.roll(x, 1, dims=3), x).item() < 0.05
    y = blur.clone().requires_grad_(True)
    sharpness_loss(y, x).backward()
    step = (y - 0.05 * y.grad / y.grad.abs().max()).detach()
    assert (laplacian_energy(step) > laplacian_energy(blur)).all()


def test_a_decoder_stage_with_the_sharpness_term(tokdir, tmp_path):
    """--sharpness-weight logs the term, trains the decoder only (frozen parts bit-identical),
    records the weight in the run, and leaves the term at 0 when off."""
    from tokenizer.train import main as tok_main

    base = ["--init", str(tokdir), "--freeze-codebook", "--data", "synthetic", "--batch-size", "8",
            "--steps", "2", "--save-every", "2", "--log-every", "1", "--no-tensorboard"]
    on, off = tmp_path / "sharp", tmp_path / "plain"
    tok_main(base + ["--out", str(on), "--sharpness-weight", "1"])
    tok_main(base + ["--out", str(off)])
    sharp = [json.loads(s)["loss/sharp"] for s in (on / "metrics.jsonl").read_text().splitlines()]
    plain = [json.loads(s)["loss/sharp"] for s in (off / "metrics.jsonl").read_text().splitlines()]
    assert len(sharp) == 2 and all(v > 0 for v in sharp) and plain == [0.0, 0.0]
    before = load_file(str(tokdir / "model.safetensors"))
    raw = load_file(str(on / "train_state" / "model.safetensors"))
    frozen = [k for k in before if k.startswith(("encoder.", "quant_conv.", "quantize."))]
    assert frozen and all(torch.equal(before[k], raw[k]) for k in frozen)
    meta = json.loads((on / "train_state" / "meta.json").read_text())
    assert meta["sharpness_weight"] == 1.0
