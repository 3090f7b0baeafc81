import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hart.condition import drop_labels
from hart.train import main as train_main
from tests.gen_common import batch_for, make_trainer
from tokenizer import HybridTokenizer, TokenizerConfig

ROOT = Path(__file__).resolve().parents[1]


def train_cli(tokdir, out, *extra):
    return train_main(["--tokenizer", str(tokdir), "--preset", "tiny", "--data", "synthetic",
                       "--out", str(out), "--batch-size", "8", *extra])


@pytest.mark.parametrize("diff_head", [False, True])
def test_loss_falls_on_synthetic(tokdir, diff_head):
    trainer = make_trainer(tokdir, diff_head=diff_head)
    trainer.args.lr, trainer.args.steps = 2e-3, 40
    ids, residual, labels = batch_for(trainer, 16)
    ces = [trainer.train_step(ids, residual, labels)["ce"] for _ in range(40)]
    assert sum(ces[-5:]) / 5 < 0.8 * sum(ces[:5]) / 5


def test_condition_dropout_rate():
    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(20000, dtype=torch.long)
    dropped = (drop_labels(labels, 0.1, 10, g) == 10).float().mean().item()
    assert abs(dropped - 0.1) < 0.01


def test_training_objective_drops_conditions_uniformly(tokdir):
    trainer = make_trainer(tokdir, cond_drop=0.1)
    g = torch.Generator().manual_seed(1)
    seen = []
    real = trainer.model.forward

    def spy(labels, teacher, drop):
        seen.append(drop)
        return real(labels, teacher, drop)

    trainer.model.forward = spy
    ids, residual, labels = batch_for(trainer, 8)
    big = [i.repeat(250, 1) for i in ids], residual.repeat(250, 1, 1, 1), labels.repeat(250)
    with torch.no_grad():
        trainer.objective(*big, g)
    assert abs(seen[0].float().mean().item() - 0.1) < 0.02


@pytest.mark.parametrize("workers", ["0", "2"])
def test_cli_writes_model_folder_and_resumes_exactly(tokdir, tmp_path, workers):
    train_cli(tokdir, tmp_path / "a", "--steps", "4", "--save-every", "4")  # in process
    train_cli(tokdir, tmp_path / "b", "--steps", "2", "--save-every", "2", "--workers", workers)
    torch.manual_seed(1234)  # the run must restore its own RNG
    train_cli(tokdir, tmp_path / "b", "--steps", "4", "--save-every", "4", "--resume", "--workers", workers)
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(str(tmp_path / "a" / "train_state" / name))
        b = load_file(str(tmp_path / "b" / "train_state" / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    from hart.model import HARTGenerator

    gen = HARTGenerator.from_pretrained(tmp_path / "a" / "generator")
    assert gen.config.display.class_names[0] == "circle"
    tok = HybridTokenizer.from_pretrained(tmp_path / "a" / "tokenizer")
    assert gen.config.patch_nums == tok.config.patch_nums


def test_token_cache_matches_on_the_fly(tokdir, tmp_path):
    from hart.tokens import TokenCache, main as extract_main, split_scales

    extract_main(["--tokenizer", str(tokdir), "--data", "synthetic", "--out", str(tmp_path / "tc")])
    cache = TokenCache(tmp_path / "tc")
    tok = HybridTokenizer.from_pretrained(tokdir)
    from hart.data.datasets import make_dataset

    ds = make_dataset("synthetic", "train", 16)
    x = torch.stack([ds[i][0] for i in range(4)])
    code = tok.encode(x)
    ids = split_scales(torch.stack([cache[i][0] for i in range(4)]), tok.config.patch_nums)
    assert all(torch.equal(a, b) for a, b in zip(ids, code.ids))
    res = torch.stack([cache[i][1] for i in range(4)])
    assert torch.allclose(res, code.residual, atol=2e-3)  # stored as float16
    train_main(["--tokenizer", str(tokdir), "--tokens", str(tmp_path / "tc"), "--preset", "tiny",
                "--out", str(tmp_path / "g"), "--steps", "2", "--batch-size", "8"])
    assert (tmp_path / "g" / "generator" / "model.safetensors").is_file()


def test_cache_from_another_tokenizer_is_refused(tokdir, tmp_path, capsys):
    from hart.tokens import main as extract_main

    extract_main(["--tokenizer", str(tokdir), "--data", "synthetic", "--out", str(tmp_path / "tc")])
    other = tmp_path / "other"
    torch.manual_seed(5)
    HybridTokenizer(TokenizerConfig.from_name("tiny")).save_pretrained(other)
    with pytest.raises(SystemExit):
        train_main(["--tokenizer", str(other), "--tokens", str(tmp_path / "tc"), "--out", str(tmp_path / "g"),
                    "--preset", "tiny", "--steps", "1"])
    assert "made with another tokenizer" in capsys.readouterr().err


def test_nan_stops_cleanly(tokdir, tmp_path, monkeypatch, capsys):
    import hart.objective as ht

    train_cli(tokdir, tmp_path / "g", "--steps", "2", "--save-every", "2")
    monkeypatch.setattr(ht.F, "cross_entropy", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(SystemExit):
        train_cli(tokdir, tmp_path / "g", "--steps", "4", "--resume")
    err = capsys.readouterr().err
    assert "loss became nan at step 2" in err and "Traceback" not in err
    assert (tmp_path / "g" / "generator" / "model.safetensors").is_file()


@pytest.mark.parametrize("argv, msg", [
    (["--preset", "nope", "--data", "synthetic"], "unknown generator preset 'nope'"),
    (["--data", "folder:/no/such"], "does not exist"),
    (["--data", "synthetic", "--batch-size", "0"], "must be positive"),
    (["--data", "synthetic", "--device", "cpu", "--attention", "flex"], "--attention flex needs a GPU"),
])
def test_bad_input(tokdir, tmp_path, capsys, argv, msg):
    with pytest.raises(SystemExit) as e:
        train_main(["--tokenizer", str(tokdir), "--out", str(tmp_path / "o"), *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gradient_equals_single_process(tokdir, tmp_path):
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "tests" / "ddp_worker.py"), str(tmp_path), str(tokdir)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    for p in procs:
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0, out.decode()[-2000:]
    # the same model, one process, the concatenated batch
    trainer = make_trainer(tokdir)
    ids, residual, labels = batch_for(trainer, 8)
    loss, _ = trainer.objective(ids, residual, labels, trainer.gen)
    loss.backward()
    g0 = load_file(str(tmp_path / "grads0.safetensors"))
    g1 = load_file(str(tmp_path / "grads1.safetensors"))
    for n, p in trainer.model.named_parameters():
        if p.grad is None:
            continue
        assert torch.allclose(g0[n], p.grad, atol=1e-6, rtol=1e-4), n
        assert torch.equal(g0[n], g1[n]), n
    p0 = load_file(str(tmp_path / "params0.safetensors"))
    p1 = load_file(str(tmp_path / "params1.safetensors"))
    assert all(torch.equal(p0[k], p1[k]) for k in p0)


def test_torchrun_one_process_joins_a_process_group(tokdir, tmp_path):
    """``torchrun --nproc_per_node 1`` runs the collective path (gloo here, NCCL on a GPU):
    a process group of one, DDP around the objective, and a model folder at the end."""
    port = _free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", str(port),
           "-m", "hart.train", "--tokenizer", str(tokdir), "--preset", "tiny", "--data", "synthetic",
           "--out", str(tmp_path / "g"), "--batch-size", "4", "--steps", "2", "--save-every", "2", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "distributed: gloo process group of 1" in p.stdout
    assert (tmp_path / "g" / "generator" / "model.safetensors").is_file()


def test_compile_trains_the_same_model(tokdir, tmp_path):
    """hart train --compile: blocks compiled in place; the same state-dict keys, and the same
    losses as the eager run up to the compiler's float reordering."""
    import json

    train_cli(tokdir, tmp_path / "eager", "--steps", "2", "--save-every", "2", "--log-every", "1")
    train_cli(tokdir, tmp_path / "comp", "--steps", "2", "--save-every", "2", "--log-every", "1", "--compile")
    a = load_file(str(tmp_path / "eager" / "generator" / "model.safetensors"))
    b = load_file(str(tmp_path / "comp" / "generator" / "model.safetensors"))
    assert a.keys() == b.keys()
    la = [json.loads(x)["loss/total"] for x in (tmp_path / "eager" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss/total"] for x in (tmp_path / "comp" / "metrics.jsonl").read_text().splitlines()]
    assert len(la) == len(lb) == 2
    assert all(abs(x - y) < 1e-3 * abs(x) for x, y in zip(la, lb)), (la, lb)


def test_latent_scales_are_measured_over_one_pass_of_a_small_folder(tokdir, tmp_path, monkeypatch):
    """A folder smaller than the measurement's cap is read once, not encoded again and again
    until 2,048 images have gone by (minutes on a CPU for a folder of 20)."""
    from PIL import Image

    import hart.train as train_mod

    folder = tmp_path / "imgs"
    g = torch.Generator().manual_seed(0)
    for i in range(10):
        (folder / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        px = (torch.rand(16, 16, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(px).save(folder / f"c{i % 2}" / f"{i}.png")
    seen = []
    real = train_mod.measure_latent_scales

    def spy(batches, *a, **kw):
        def counted():
            for b in batches:
                seen.append(b[1].shape[0])
                yield b
        return real(counted(), *a, **kw)

    monkeypatch.setattr(train_mod, "measure_latent_scales", spy)
    assert train_main(["--tokenizer", str(tokdir), "--preset", "tiny", "--data", f"folder:{folder}",
                       "--out", str(tmp_path / "run"), "--batch-size", "4", "--steps", "1"]) == 0
    assert 10 <= sum(seen) < 10 + 4  # one pass, in batches of 4


def _class_folder(root, names, per=2):
    from PIL import Image

    g = torch.Generator().manual_seed(1)
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(per):
            px = (torch.rand(16, 16, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(px).save(root / name / f"{i}.png")
    return root


def test_init_on_other_classes_continues_rows_by_name(tokdir, tmp_path, capsys):
    """--init of a 6-class model on classes of one's own: the data's classes and names; a class
    the model knows by name keeps its row (in any order), a new one starts fresh, the null row of
    guidance stays (was: cat trained class 0's row, and 8 classes an IndexError or the null class)."""
    from hart.model import HARTGenerator
    from sampling.pipeline import HARTPipeline

    base = tmp_path / "base"  # another seed than the fine-tunes: a fresh row is none of its rows
    assert train_cli(tokdir, base, "--steps", "1", "--seed", "5", "--no-tensorboard") == 0  # synthetic: 6 named classes
    before = HARTGenerator.from_pretrained(base / "generator")
    own = list(before.config.display.class_names)
    E = before.class_emb.weight
    for names, said in ((("cat", "dog"), "are new to its 6: their rows of the class embedding start fresh"),
                        (("ring", "square", "zebra"), "continue its rows by name; 1 new (zebra) start fresh"),
                        (tuple(f"k{i}" for i in range(8)), "are new to its 6")):
        data = _class_folder(tmp_path / f"data{len(names)}", names)
        out = tmp_path / f"ft{len(names)}"
        capsys.readouterr()
        assert train_main(["--init", str(base), "--tokenizer", str(tokdir), "--data", f"folder:{data}", "--steps", "1",
                           "--batch-size", "4", "--lr", "1e-9", "--out", str(out), "--no-tensorboard"]) == 0
        out_text = capsys.readouterr().out
        assert said in out_text and "starting fresh: class_emb" not in out_text, out_text
        after = HARTGenerator.from_pretrained(out / "generator")
        assert after.config.num_classes == len(names) and after.config.display.class_names == names
        F = after.class_emb.weight
        assert F.shape[0] == len(names) + 1
        torch.testing.assert_close(F[-1], E[-1], atol=1e-4, rtol=0)  # the null class
        for i, n in enumerate(names):
            if n in own:
                torch.testing.assert_close(F[i], E[own.index(n)], atol=1e-4, rtol=0)
            else:
                assert all(not torch.allclose(F[i], e, atol=1e-3) for e in E)
        HARTPipeline.from_pretrained(out)(class_ids=[names[-1]], seed=0)  # by name
    assert train_main(["--init", str(base), "--tokenizer", str(tokdir), "--data", "synthetic", "--steps", "1",
                       "--batch-size", "4", "--lr", "1e-9", "--out", str(tmp_path / "same"), "--no-tensorboard"]) == 0
    assert "--init" not in capsys.readouterr().out.replace(f"--init {base}: loaded", "")
    kept = HARTGenerator.from_pretrained(tmp_path / "same" / "generator")
    torch.testing.assert_close(kept.class_emb.weight, E, atol=1e-4, rtol=0)


def test_class_embedding_follows_the_loaded_tensor_and_leaves_another_width_alone():
    """The fresh rows are moved to the loaded tensor's device and dtype (the model's own rows
    sit on the GPU, the loaded ones on the CPU); another width is init_weights' to refuse."""
    from hart.run_config import class_embedding

    loaded = torch.randn(7, 8)
    got = class_embedding(loaded, [4, None], torch.randn(3, 8, dtype=torch.float64))
    assert got.dtype == loaded.dtype and torch.equal(got[0], loaded[4]) and torch.equal(got[2], loaded[6])
    assert class_embedding(loaded, [4, None], torch.randn(3, 16)) is loaded  # init_weights refuses it in one line


def test_init_refusals_come_before_anything_is_written(tokdir, tmp_path, capsys):
    """A tokenizer of another token layout than the --init generator reads, and
    --freeze-transformer on other classes: one line each, no --out made."""
    from hart.cli import main as hart_main
    from tokenizer import HybridTokenizer, TokenizerConfig

    base = tmp_path / "base"
    assert train_cli(tokdir, base, "--steps", "1", "--no-tensorboard") == 0
    other = tmp_path / "tok64"
    HybridTokenizer(TokenizerConfig.from_name("tiny", codebook_size=32)).save_pretrained(other)
    data = _class_folder(tmp_path / "data", ("cat", "dog"))
    cases = [(["--tokenizer", str(other), "--data", "synthetic"], "32 codes"),
             (["--tokenizer", str(other), "--data", "synthetic", "--preset", "tiny"], "32 codes"),  # weights from --init
             (["--tokenizer", str(tokdir), "--data", f"folder:{data}", "--freeze-transformer"],
              "--freeze-transformer keeps")]
    for extra, words in cases:
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            hart_main(["train", "--init", str(base), "--steps", "1", "--batch-size", "4",
                       "--out", str(tmp_path / "no"), *extra])
        err = capsys.readouterr().err
        assert e.value.code == 2 and "Traceback" not in err and words in err, err
        assert not (tmp_path / "no").exists()


def test_head_flags_add_a_head_to_a_model_without_one(tokdir, tmp_path, capsys):
    """--diff-width on --init of a plain (VAR-like) model adds a head, which starts fresh."""
    from hart.config import GeneratorConfig
    from hart.model import HARTGenerator

    plain = tmp_path / "plain"
    cfg = GeneratorConfig.from_name("tiny", head=None, num_classes=6,
                                    display=dict(class_names=("circle", "square", "triangle", "cross", "ring", "bars")))
    HARTGenerator(cfg).save_pretrained(plain / "generator")
    HybridTokenizer.from_pretrained(tokdir).save_pretrained(plain / "tokenizer")
    assert train_main(["--init", str(plain), "--tokenizer", str(tokdir), "--data", "synthetic", "--diff-width", "32",
                       "--residual-target", "true", "--freeze-transformer", "--steps", "1", "--batch-size", "4", "--out", str(tmp_path / "h"),
                       "--no-tensorboard"]) == 0
    assert "starting fresh: decoder_norm, diffusion" in capsys.readouterr().out
    got = HARTGenerator.from_pretrained(tmp_path / "h" / "generator")
    assert got.config.has_head and got.config.head.width == 32 and got.config.stats.residual_scale > 0
    assert not got.config.training.residual_from_sampled
