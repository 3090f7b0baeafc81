import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from hart.cli import main as hart_main
from tokenizer import HybridTokenizer
from tokenizer import train as tok_train

# on the CPU: bit-exact resume is a CPU property (cuDNN's conv backward is not deterministic;
# tests/test_cuda.py checks the GPU's resume up to that)
ARGS = ["--preset", "tiny", "--data", "synthetic", "--batch-size", "4", "--disc-start", "2", "--device", "cpu"]


def error_lines(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]  # bar closed first


def run(out, *extra):
    return tok_train.main(ARGS + ["--out", str(out), *extra])


def test_train_writes_model_recon_and_state(tmp_path):
    out = tmp_path / "tok"
    assert run(out, "--steps", "3", "--save-every", "2") == 0
    m = HybridTokenizer.from_pretrained(out)
    assert m.config.resolution == 16
    im = Image.open(out / "recon.png")
    assert im.size[0] > 8 * 16 and im.size[1] >= 3 * 2 * 16  # 8 columns, 3 rows at 2x
    meta = json.loads((out / "train_state" / "meta.json").read_text())
    assert meta["step"] == 3


def test_resume_is_exact(tmp_path):
    torch.manual_seed(123)
    run(tmp_path / "a", "--steps", "4", "--save-every", "4")
    torch.manual_seed(123)
    run(tmp_path / "b", "--steps", "2", "--save-every", "2")
    torch.manual_seed(999)  # resume must restore the RNG itself
    run(tmp_path / "b", "--steps", "4", "--save-every", "4", "--resume")
    for name in ("model.safetensors", "ema.safetensors", "disc.safetensors"):
        a = load_file(str(tmp_path / "a" / "train_state" / name))
        b = load_file(str(tmp_path / "b" / "train_state" / name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)


def test_nan_stops_with_message_and_keeps_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "tok"
    run(out, "--steps", "2", "--save-every", "2")
    good = load_file(str(out / "model.safetensors"))
    real = tok_train.reconstruction_loss
    monkeypatch.setattr(tok_train, "reconstruction_loss", lambda a, b: real(a, b) * float("nan"))
    with pytest.raises(SystemExit) as e:
        run(out, "--steps", "4", "--save-every", "1", "--resume")
    assert e.value.code == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "loss became nan at step 2" in err[0] and "(step 2)" in err[0]
    after = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(good[k], after[k]) for k in good)


def test_workers_train_the_same_weights(tmp_path):
    """--workers loads the same batches and leaves the training's RNG alone: same weights."""
    for name, workers in (("a", "0"), ("b", "2")):
        torch.manual_seed(123)
        run(tmp_path / name, "--steps", "3", "--save-every", "3", "--workers", workers)
    a, b = (load_file(str(tmp_path / n / "train_state" / "model.safetensors")) for n in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("argv, msg", [
    (["--preset", "nope", "--data", "synthetic"], "unknown tokenizer preset 'nope'; choose one of: var-256"),
    (["--data", "synthetic", "--workers", "-1"], "--workers must be 0 or more, not -1"),
    (["--data", "folder:/no/such/dir"], "data folder /no/such/dir does not exist"),
    (["--data", "synthetic", "--resume"], "no run to resume"),
    (["--data", "synthetic", "--hybrid-share", "1.5"], "--hybrid-share is a share of the batches, from 0 to 1"),
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, msg):
    with pytest.raises(SystemExit) as e:
        hart_main(["train-tokenizer", *argv, "--out", str(tmp_path / "o"), "--steps", "1"])
    assert e.value.code == 2
    err = error_lines(capsys)
    assert len(err) == 1 and msg in err[0]


def test_resume_with_the_same_preset_on_gray_data(tmp_path):
    """The grayscale output is measured on the data when a run starts: resuming with the
    preset the run was started with is accepted on gray data too."""
    from hart.data import datasets

    ds = datasets.make_dataset("synthetic", "train", 16)
    gray = tmp_path / "gray"
    for i in range(40):
        (gray / str(i % 2)).mkdir(parents=True, exist_ok=True)
        x = ds[i][0].mean(0, keepdim=True).expand(3, -1, -1)
        from PIL import Image

        Image.fromarray(((x.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()).save(gray / str(i % 2) / f"{i}.png")
    out = tmp_path / "tok"
    argv = ["--preset", "tiny", "--data", f"folder:{gray}", "--out", str(out), "--batch-size", "8",
            "--no-tensorboard", "--save-every", "1"]
    assert tok_train.main(argv + ["--steps", "1"]) == 0
    assert tok_train.main(argv + ["--steps", "2", "--resume"]) == 0


def test_resume_with_other_shape_refused(tmp_path, capsys):
    out = tmp_path / "tok"
    run(out, "--steps", "1")
    with pytest.raises(SystemExit):
        tok_train.main(["--preset", "fm-32-h", "--data", "synthetic", "--out", str(out), "--steps", "2", "--resume"])
    assert "differs from the checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(out, "--steps", "2")  # no --resume: never overwrites a run
    assert "already holds a run" in capsys.readouterr().err


def test_eval_tokenizer_cli(tmp_path, capsys):
    out = tmp_path / "tok"
    run(out, "--steps", "2")
    capsys.readouterr()
    hart_main(["eval-tokenizer", "--model", str(out), "--data", "synthetic", "--num", "16",
               "--out", str(tmp_path / "r.json"), "--save-recon", str(tmp_path / "rec")])
    assert len(list((tmp_path / "rec" / "hybrid").glob("*.png"))) == 16
    assert Image.open(tmp_path / "rec" / "discrete" / "000015.png").size == (16, 16)
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["num_images"] == 16 and 0 < r["codebook_usage"] <= 1
    assert set(r["codebook_usage_per_scale"]) == {"1x1", "2x2", "3x3", "4x4"}
    assert "PSNR discrete-only" in capsys.readouterr().out


def test_lpips_from_weights_file(tmp_path):
    from safetensors.torch import save_file

    from tokenizer.losses import LPIPS

    torch.manual_seed(0)
    ref = LPIPS()
    state = {k: torch.randn_like(v) * 0.1 for k, v in ref.state_dict().items() if k.startswith("features.")}
    state.update({f"lin{i}.model.1.weight": torch.rand_like(ref.lins[i].weight) for i in range(5)})
    save_file(state, str(tmp_path / "lpips.safetensors"))
    lp = LPIPS.from_file(tmp_path / "lpips.safetensors")
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(lp(x, x), torch.zeros(2), atol=1e-6)
    assert (lp(x, y) > 0).all()
    save_file({"features.0.weight": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    from hart.common.errors import UserError

    with pytest.raises(UserError, match="missing"):
        LPIPS.from_file(tmp_path / "bad.safetensors")


def test_bf16_autocast_trains_and_resumes_exactly(tmp_path):
    """--dtype bf16: finite losses, fp32 weights, and --resume stays exact."""
    torch.manual_seed(5)
    run(tmp_path / "a", "--steps", "4", "--save-every", "4", "--dtype", "bf16")
    torch.manual_seed(5)
    run(tmp_path / "b", "--steps", "2", "--save-every", "2", "--dtype", "bf16")
    run(tmp_path / "b", "--steps", "4", "--save-every", "4", "--dtype", "bf16", "--resume")
    a = load_file(str(tmp_path / "a" / "train_state" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "train_state" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(v.dtype != torch.bfloat16 for v in a.values())  # autocast, not bf16 weights
    lines = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert lines and all(torch.isfinite(torch.tensor(x["loss/total"])) for x in lines)


def test_psnr_logged_per_decoder_input(tmp_path):
    """Each step decodes the discrete-only or the exact latent; with --log-every 1 each line
    carries that step's PSNR under exactly one of psnr/discrete, psnr/hybrid, and both occur."""
    run(tmp_path / "t", "--steps", "8", "--save-every", "8", "--log-every", "1", "--no-tensorboard")
    lines = [json.loads(x) for x in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 8
    seen = set()
    for x in lines:
        keys = [k for k in ("psnr/discrete", "psnr/hybrid") if k in x]
        assert len(keys) == 1 and x[keys[0]] == x["psnr"]
        seen.add(keys[0])
    assert seen == {"psnr/discrete", "psnr/hybrid"}


@pytest.mark.parametrize("share, only", [(1.0, "psnr/hybrid"), (0.0, "psnr/discrete")])
def test_hybrid_share_picks_the_decoder_input(tmp_path, share, only):
    """--hybrid-share 1 decodes the exact latent at every step, 0 the discrete-only latent."""
    run(tmp_path / "t", "--steps", "6", "--save-every", "6", "--log-every", "1", "--no-tensorboard",
        "--hybrid-share", str(share))
    lines = [json.loads(x) for x in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and all(only in x and x[only] == x["psnr"] for x in lines)


def test_feature_net_folds_batchnorm_into_lpips(tmp_path, capsys, load_tool):
    """scripts/feature_net.py: the folded plain VGG16 gives the BatchNorm net's features (eval), the
    file loads with --lpips-weights' loader, and unlabelled data is refused in one line."""
    from safetensors.torch import save_file

    from tokenizer.losses import LPIPS

    tool = load_tool("feature_net")
    torch.manual_seed(0)
    net = tool.vgg16_bn(4)
    for m in net.modules():  # BatchNorm statistics and affine far from the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    net.eval()
    save_file(tool.fold_to_lpips(net, 0.5), str(tmp_path / "f.safetensors"))
    lp = LPIPS.from_file(tmp_path / "f.safetensors")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        want = net[0]((x - lp.shift) / lp.scale)
        got = lp.features((x - lp.shift) / lp.scale)
    assert torch.allclose(want, got, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    assert torch.equal(lp.lins[4].weight, torch.full((1, 512, 1, 1), 0.5))

    out = tmp_path / "net.safetensors"
    tool.main(["--data", "synthetic", "--resolution", "16", "--epochs", "0.02", "--batch-size", "16",
               "--out", str(out)])
    assert "test accuracy" in capsys.readouterr().out
    lp = LPIPS.from_file(out)
    y = torch.rand(2, 3, 16, 16) * 2 - 1
    assert (lp(y, y.flip(-1)) > 0).all() and torch.allclose(lp(y, y), torch.zeros(2), atol=1e-6)
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "imgs" / "a.png")
    with pytest.raises(SystemExit):
        tool.main(["--data", "images:" + str(tmp_path / "imgs"), "--out", str(tmp_path / "x.safetensors")])
    assert "has no classes to learn" in capsys.readouterr().err
