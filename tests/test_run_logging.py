"""Training runs that show what they do: metrics.jsonl (always), TensorBoard event files (with
the tensorboard extra), sample / reconstruction grids, resume without duplicate steps, rank 0
only under torchrun, and ``hart plot``. Tiny configs, a few steps each."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from hart.cli import main as hart_main
from hart.common.metrics import METRICS_NAME, TENSORBOARD_DIR, RunLog, read_metrics
from tokenizer import train as tok_train

ROOT = Path(__file__).resolve().parents[1]
TOK_ARGS = ["--preset", "tiny", "--data", "synthetic", "--batch-size", "4", "--disc-start", "2"]


def steps(out) -> list[int]:
    return [r["step"] for r in read_metrics(Path(out) / METRICS_NAME)]


def events(out):
    """TensorBoard's own reader on the run's event files."""
    ea_mod = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    ea = ea_mod.EventAccumulator(str(Path(out) / TENSORBOARD_DIR), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    return ea


def tok_run(out, *extra):
    return tok_train.main(TOK_ARGS + ["--out", str(out), *extra])


def gen_run(tokdir, out, *extra):
    """``hart train`` through the router, which hands in the sampler of the sample grids."""
    return hart_main(["train", "--tokenizer", str(tokdir), "--preset", "tiny", "--data", "synthetic",
                      "--out", str(out), "--batch-size", "8", *extra])


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_run_writes_jsonl_and_tensorboard_events(tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "tok"
    assert tok_run(out, "--steps", "3", "--save-every", "3", "--log-every", "1", "--image-every", "2") == 0
    recs = read_metrics(out / METRICS_NAME)
    assert [r["step"] for r in recs] == [1, 2, 3]
    want = {"loss/total", "loss/rec", "loss/vq", "loss/disc", "psnr", "codebook/usage", "lr",
            "throughput/images_per_s", "grad_norm"}
    assert want <= set(recs[0])
    assert all(0 < r["codebook/usage"] <= 1 and r["throughput/images_per_s"] > 0 for r in recs)
    assert recs[0]["loss/disc"] == 0 and recs[2]["loss/disc"] > 0  # the GAN loss starts at --disc-start 2
    ea = events(out)
    assert want <= set(ea.Tags()["scalars"])
    assert [e.step for e in ea.Scalars("psnr")] == [1, 2, 3]
    assert [e.value for e in ea.Scalars("psnr")] == pytest.approx([r["psnr"] for r in recs])
    # reconstructions (input | discrete | hybrid) every 2 steps and at the end
    shots = ea.Images("reconstructions")
    assert [e.step for e in shots] == [2, 3]
    with Image.open(out / "recon.png") as png:  # the same grid as the PNG written at the checkpoint
        assert (shots[-1].width, shots[-1].height) == png.size


def test_resumed_run_logs_each_step_once(tmp_path, monkeypatch, capsys):
    """A run killed after step 3 (its checkpoint is at step 2) and resumed: step 3 is logged
    again by the resumed run, and metrics.jsonl / TensorBoard hold every step once."""
    pytest.importorskip("tensorboard")
    out = tmp_path / "tok"
    real, calls = tok_train.reconstruction_loss, []

    def dies_at_step_4(a, b):
        calls.append(1)
        return real(a, b) * (float("nan") if len(calls) == 4 else 1.0)

    monkeypatch.setattr(tok_train, "reconstruction_loss", dies_at_step_4)
    with pytest.raises(SystemExit):
        tok_run(out, "--steps", "5", "--save-every", "2", "--log-every", "1")
    assert "loss became nan at step 3" in capsys.readouterr().err
    assert steps(out) == [1, 2, 3]  # step 3 was logged after the last checkpoint (step 2)
    first_3 = read_metrics(out / METRICS_NAME)[2]
    monkeypatch.setattr(tok_train, "reconstruction_loss", real)
    with open(out / METRICS_NAME, "a") as fh:  # and the kill cut a line short
        fh.write('{"step": 4, "loss/to')
    assert tok_run(out, "--steps", "5", "--save-every", "2", "--log-every", "1", "--resume") == 0
    recs = read_metrics(out / METRICS_NAME)
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5]
    assert recs[2]["time"] > first_3["time"]  # the resumed run's step 3, not the lost one
    assert (out / METRICS_NAME).read_text().count("\n") == 5  # the cut line is gone too
    assert [e.step for e in events(out).Scalars("loss/total")] == [1, 2, 3, 4, 5]


def test_missing_tensorboard_is_one_line_and_training_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # the import fails
    out = tmp_path / "tok"
    assert tok_run(out, "--steps", "2", "--save-every", "2", "--log-every", "1") == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "tensorboard" in line.lower()]
    assert len(err) == 1 and "pip install 'hart-open[tensorboard]'" in err[0]
    assert steps(out) == [1, 2] and not (out / TENSORBOARD_DIR).exists()


def test_no_tensorboard_flag_writes_only_jsonl(tmp_path):
    out = tmp_path / "tok"
    assert tok_run(out, "--steps", "2", "--save-every", "2", "--log-every", "2", "--no-tensorboard") == 0
    assert steps(out) == [2] and not (out / TENSORBOARD_DIR).exists()


@pytest.mark.parametrize("flag", ["--log-every", "--image-every"])
def test_bad_logging_flags_are_one_line(tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as e:
        tok_run(tmp_path / "tok", "--steps", "2", flag, "0")
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"{flag} must be positive" in err and err.count("\n") == 1


# ----------------------------------------------------------------------------- generator


def test_generator_run_writes_jsonl_events_and_a_sample_grid_per_class(tokdir, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "gen"
    assert gen_run(tokdir, out, "--steps", "2", "--save-every", "2", "--log-every", "1", "--image-every", "1") == 0
    recs = read_metrics(out / METRICS_NAME)
    assert [r["step"] for r in recs] == [1, 2]
    want = {"loss/total", "loss/ce", "acc", "grad_norm", "lr", "throughput/images_per_s", "throughput/tokens_per_s"}
    assert want <= set(recs[0]) and all(0 <= r["acc"] <= 1 for r in recs)
    ea = events(out)
    assert want <= set(ea.Tags()["scalars"])
    shots = ea.Images("samples")
    assert [e.step for e in shots] == [1, 2]
    # one row per class of the synthetic data (6), 4 fixed seeds; 16 px images drawn at 4x
    from hart.train_samples import SAMPLE_COLS

    with Image.open(out / "samples.png") as png:
        assert png.size == (shots[-1].width, shots[-1].height)
        w, h = png.size
        assert h == 6 * (64 + 2) + 2 and w > SAMPLE_COLS * 64


def test_sample_grid_uses_fixed_seeds(tokdir):
    from hart.train_samples import sample_grid
    from sampling.previews import sample_images
    from tests.gen_common import make_trainer

    trainer = make_trainer(tokdir)
    model, tok = trainer.ema.shadow, trainer.objective.tokenizer
    seen = []

    def spy(generator, tokenizer, class_ids, seeds):
        seen.append((list(class_ids), list(seeds)))
        return sample_images(generator, tokenizer, class_ids, seeds)

    a, b = sample_grid(spy, model, tok), sample_grid(spy, model, tok)
    assert a.tobytes() == b.tobytes()  # the same model: the same grid
    assert seen[0] == ([k for k in range(6) for _ in range(4)], [0, 1, 2, 3] * 6)


def test_generator_resume_drops_lines_after_the_checkpoint(tokdir, tmp_path):
    out = tmp_path / "gen"
    gen_run(tokdir, out, "--steps", "2", "--save-every", "2", "--log-every", "1", "--no-tensorboard")
    with open(out / METRICS_NAME, "a") as fh:  # logged after the checkpoint, then the process died
        fh.write(json.dumps({"step": 3, "time": 0.0, "loss/total": -1.0}) + "\n")
    gen_run(tokdir, out, "--steps", "4", "--save-every", "2", "--log-every", "1", "--no-tensorboard", "--resume")
    recs = read_metrics(out / METRICS_NAME)
    assert [r["step"] for r in recs] == [1, 2, 3, 4] and recs[2]["loss/total"] > 0


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_only_rank_0_writes_under_torchrun(tokdir, tmp_path):
    """``python -m hart.train`` in two processes with torchrun's variables (gloo)."""
    out = tmp_path / "gen"
    port = _free_port()
    argv = [sys.executable, "-m", "hart.train", "--tokenizer", str(tokdir), "--preset", "tiny", "--data",
            "synthetic", "--out", str(out), "--batch-size", "8", "--steps", "2", "--save-every", "2",
            "--log-every", "1", "--device", "cpu"]
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        procs.append(subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    for p in procs:
        log, _ = p.communicate(timeout=240)
        assert p.returncode == 0, log.decode()[-2000:]
    assert steps(out) == [1, 2]  # one writer: each step once
    assert all(r["throughput/images_per_s"] > 0 for r in read_metrics(out / METRICS_NAME))
    if (out / TENSORBOARD_DIR).exists():
        assert len(list((out / TENSORBOARD_DIR).iterdir())) == 1  # one event file, rank 0's
    assert (out / "samples.png").exists()  # the router handed the sampler in for `python -m hart.train`


def test_runlog_disabled_writes_nothing(tmp_path):
    log = RunLog(tmp_path / "r", enabled=False)
    log.scalars(1, {"a": 1.0})
    log.close()
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- hart plot


def _fake_run(d: Path, curve):
    d.mkdir(parents=True)
    (d / METRICS_NAME).write_text("".join(json.dumps({"step": s, "time": 0.0, "loss/total": v, "acc": 1 / v}) + "\n"
                                          for s, v in curve))
    return d


def test_hart_plot_draws_one_or_several_runs_as_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    a = _fake_run(tmp_path / "with-head", [(10, 4.0), (20, 3.0), (30, 2.5)])
    b = _fake_run(tmp_path / "no-head", [(10, 4.2), (20, 3.4)])
    png = tmp_path / "curves.png"
    assert hart_main(["plot", str(a), str(b), "--out", str(png)]) == 0
    assert "2 metrics of 2 runs" in capsys.readouterr().out
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 400 and im.height > 200
        two = im.size
    one = tmp_path / "one.png"
    assert hart_main(["plot", str(a), "--out", str(one), "--metrics", "acc", "--smooth", "0.5"]) == 0
    with Image.open(one) as im:
        assert im.width < two[0]  # one panel instead of two
    # without --out: one run's plot goes beside its metrics, so two runs' plots do not collide
    for run in (a, b):
        assert hart_main(["plot", str(run)]) == 0 and (run / "curves.png").is_file()


@pytest.mark.parametrize("case, message", [
    ("missing", "has no metrics.jsonl"),
    ("empty", "holds no logged step"),
    ("metric", "no metric nope in these runs; they have: loss/total, acc"),
    ("smooth", "--smooth must be in [0, 1)"),
    ("matplotlib", "pip install 'hart-open[plot]'"),
])
def test_hart_plot_bad_input_is_one_line(tmp_path, capsys, monkeypatch, case, message):
    run = _fake_run(tmp_path / "r", [(1, 2.0)])
    argv = ["plot", str(run), "--out", str(tmp_path / "c.png")]
    if case == "missing":
        argv[1] = str(tmp_path / "nothing")
    elif case == "empty":
        (run / METRICS_NAME).write_text("")
    elif case == "metric":
        argv += ["--metrics", "nope"]
    elif case == "smooth":
        argv += ["--smooth", "1"]
    else:
        monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit) as e:
        hart_main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "c.png").exists()


def test_read_metrics_skips_cut_and_foreign_lines(tmp_path):
    p = tmp_path / METRICS_NAME
    p.write_text('{"step": 1, "a": 1}\nnot json\n[1, 2]\n{"a": 3}\n{"step": 2, "a": 2}\n{"step": 3, "a"')
    assert [r["step"] for r in read_metrics(p)] == [1, 2]
    assert torch.tensor([r["a"] for r in read_metrics(tmp_path)]).tolist() == [1, 2]


def test_hart_plot_draws_a_single_step_and_names_damaged_lines(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    import numpy as np

    run = _fake_run(tmp_path / "r", [(1, 2.0)])
    with open(run / METRICS_NAME, "a") as f:
        f.write("{bad\n")
    assert hart_main(["plot", str(run), "--metrics", "acc"]) == 0
    assert "1 line(s) that are not metric records skipped" in capsys.readouterr().err
    with Image.open(run / "curves.png") as im:
        a = np.asarray(im.convert("RGB")).astype(int)
    blue = (abs(a[..., 0] - 31) < 30) & (abs(a[..., 1] - 119) < 30) & (abs(a[..., 2] - 180) < 30)  # matplotlib's C0
    h, w = blue.shape  # one point sits in the middle of its panel (the legend's sample line lies in a corner)
    assert blue[int(0.3 * h):int(0.7 * h), int(0.3 * w):int(0.7 * w)].sum() > 5  # a line of one point draws nothing
