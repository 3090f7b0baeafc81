"""Faults of the machine and of the user's files end in one line, with nothing lost: a disk
that fills while a checkpoint is written (both trainers, model folders), text files that are not
UTF-8, output paths that cannot be written, prompts longer than the text encoder's context, and
any OSError inside any `hart` command."""
import errno
import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

import hart.common.io as hio
from hart.cli import COMMANDS
from hart.cli import main as hart_main
from hart.common.errors import FaultError, UserError, cli_entry

TORCH_SAVE_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 3691008 vs 3690896"
SAFETENSORS_FULL = ('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                    'message: "No space left on device" })')


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]  # progress bars aside
    assert len(lines) == 1, err
    return lines[0]


def temp_files(folder: Path) -> list:
    return [p for p in folder.rglob("*") if ".tmp-" in p.name]


def cut_short(exc):
    """A writer (torch.save / safetensors' save_file) that writes part of the file, then fails."""
    def write(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"\0" * 64)
        raise exc
    return write


def same_state(a: Path, b: Path, names) -> None:
    for name in names:
        x, y = load_file(str(a / "train_state" / name)), load_file(str(b / "train_state" / name))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name


# ----------------------------------------------------------------------------- trainers

TOK_ARGS = ["--preset", "tiny", "--data", "synthetic", "--batch-size", "4", "--disc-start", "2", "--device", "cpu",
            "--no-tensorboard"]


def test_tokenizer_disk_full_keeps_checkpoint_and_resumes_exactly(tmp_path, monkeypatch, capsys):
    from tokenizer import HybridTokenizer
    from tokenizer import train as tok_train

    def run(out, *extra):
        return tok_train.main(TOK_ARGS + ["--out", str(out), *extra])

    torch.manual_seed(123)
    run(tmp_path / "a", "--steps", "4", "--save-every", "4")
    out = tmp_path / "b"
    torch.manual_seed(123)
    run(out, "--steps", "2", "--save-every", "2")
    with monkeypatch.context() as m:  # the disk fills while step 3's optimizer state is written
        m.setattr(hio.torch, "save", cut_short(RuntimeError(TORCH_SAVE_FULL)))
        with pytest.raises(SystemExit) as e:
            run(out, "--steps", "4", "--save-every", "1", "--resume")
    assert e.value.code == 1
    line = one_error_line(capsys)
    assert "disk is full" in line and str(out / "train_state" / "optim.pt") in line
    assert "(step 2) is intact" in line and "hart train-tokenizer" in line and line.endswith("--resume")
    assert temp_files(tmp_path) == []
    assert json.loads((out / "train_state" / "meta.json").read_text())["step"] == 2
    HybridTokenizer.from_pretrained(out)  # the model folder still loads
    torch.manual_seed(999)  # resume restores the RNG itself
    run(out, "--steps", "4", "--save-every", "4", "--resume")
    same_state(tmp_path / "a", out, ("model.safetensors", "ema.safetensors", "disc.safetensors"))


def test_generator_disk_full_keeps_checkpoint_and_resumes_exactly(tokdir, tmp_path, monkeypatch, capsys):
    import hart.train as ht
    from hart.model import HARTGenerator

    # the head's target scale, measured over 2048 encoded images by a new run: fixed here (both runs
    # get the same), which keeps the test fast
    monkeypatch.setattr(ht, "measure_latent_scales", lambda batches, tokenizer=None, **kw: (0.17, tokenizer and 1.0),
                        raising=False)
    train_main = ht.main

    def run(out, *extra):
        return train_main(["--tokenizer", str(tokdir), "--preset", "tiny", "--data", "synthetic", "--out", str(out),
                           "--batch-size", "8", "--no-tensorboard", *extra])

    run(tmp_path / "a", "--steps", "4", "--save-every", "4")
    out = tmp_path / "b"
    run(out, "--steps", "2", "--save-every", "2")
    real_replace = hio.os.replace

    def replace(src, dst):  # step 3's train_state is in place; the disk fills on the EMA model's rename
        if Path(dst) == out / "generator" / "model.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device", str(src))
        return real_replace(src, dst)

    with monkeypatch.context() as m:
        m.setattr(hio.os, "replace", replace)
        with pytest.raises(SystemExit) as e:
            run(out, "--steps", "4", "--save-every", "1", "--resume")
    assert e.value.code == 1
    line = one_error_line(capsys)
    assert "disk is full" in line and str(out / "generator" / "model.safetensors") in line
    assert "(step 3) is intact" in line and "hart train`" in line and line.endswith("--resume")
    assert temp_files(tmp_path) == []
    HARTGenerator.from_pretrained(out / "generator")  # the step-2 model folder is whole
    torch.manual_seed(1234)
    run(out, "--steps", "4", "--save-every", "4", "--resume")
    same_state(tmp_path / "a", out, ("model.safetensors", "ema.safetensors"))


def test_run_faults_name_the_file_the_checkpoint_and_the_next_step(tmp_path):
    from hart.common.loop import run_faults

    with pytest.raises(FaultError) as e, run_faults(tmp_path, "train"):  # before the first checkpoint
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "metrics.jsonl"))
    assert str(e.value) == (f"read-only file system: {tmp_path / 'metrics.jsonl'}; no checkpoint of this run was "
                            "saved yet: fix that, then run the same `hart train` command again")
    (tmp_path / "train_state").mkdir()
    (tmp_path / "train_state" / "meta.json").write_text('{"step": 7}')
    with pytest.raises(FaultError) as e, run_faults(tmp_path, "train"):  # a write to an open file names none
        raise OSError(errno.ENOSPC, "No space left on device")
    assert str(e.value) == (f"the disk is full (no space left on device) while writing {tmp_path}; the last "
                            f"checkpoint in {tmp_path / 'train_state'} (step 7) is intact: free some space, then "
                            "run the same `hart train` command again with --resume")
    with pytest.raises(FaultError, match="disk is full"), run_faults(tmp_path, "train"):  # a writer's own wrapper
        raise SafetensorError(SAFETENSORS_FULL)
    with pytest.raises(UserError, match="loss became"), run_faults(tmp_path, "train"):  # no fault: untouched
        raise UserError("loss became nan")
    with pytest.raises(RuntimeError, match="shape mismatch"), run_faults(tmp_path, "train"):
        raise RuntimeError("shape mismatch")


def test_ctrl_c_in_a_run_names_its_last_checkpoint_and_resume(tmp_path, capsys):
    from hart.common.loop import run_faults

    @cli_entry
    def train(argv=None):
        with run_faults(tmp_path, "train"):
            raise KeyboardInterrupt

    with pytest.raises(SystemExit) as e:
        train([])
    assert e.value.code == 130
    assert capsys.readouterr().err == ("interrupted: no checkpoint of this run was saved yet; run the same "
                                       "`hart train` command again to start it\n")
    (tmp_path / "train_state").mkdir()
    (tmp_path / "train_state" / "meta.json").write_text('{"step": 70}')
    with pytest.raises(SystemExit):
        train([])
    assert capsys.readouterr().err == (f"interrupted: the last checkpoint in {tmp_path / 'train_state'} (step 70) is "
                                       "intact: run the same `hart train` command with --resume to go on from it\n")


# ----------------------------------------------------------------------------- model folders

def test_model_folder_disk_full_is_one_line_and_leaves_nothing(tokdir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(hio, "save_file", cut_short(SafetensorError(SAFETENSORS_FULL)))
    out = tmp_path / "exp" / "tok"
    with pytest.raises(SystemExit) as e:
        hart_main(["export", "--model", str(tokdir), "--out", str(out), "--storage", "fp16"])
    assert e.value.code == 1
    line = one_error_line(capsys)
    assert line == (f"error: the disk is full (no space left on device) while writing {out / 'model.safetensors'}; "
                    "free some space and run the command again")
    assert not out.exists() and temp_files(tmp_path) == []
    from tokenizer import HybridTokenizer

    with pytest.raises(OSError) as e:  # save_pretrained on its own: an OSError naming the file, no temp file
        HybridTokenizer.from_pretrained(tokdir).save_pretrained(tmp_path / "sp")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "sp" / "model.safetensors")
    assert temp_files(tmp_path) == []


# ----------------------------------------------------------------------------- text files

def test_prompts_file_not_utf8_is_one_line(tmp_path, capsys):
    f = tmp_path / "prompts.txt"
    f.write_bytes("a red circle\nun c\u00e9l\u00e8bre carr\u00e9\n".encode("latin-1"))  # "é" at byte 17
    with pytest.raises(SystemExit) as e:
        hart_main(["generate", "--prompts", str(f), "--out", str(tmp_path / "g.png")])
    assert e.value.code == 2
    assert one_error_line(capsys) == (f"error: prompts file {f} is not UTF-8 text (byte 0xe9 at offset 17, line 2); "
                                      "save it as UTF-8")
    f.write_bytes(b"\xef\xbb\xbfa red circle\n")  # a UTF-8 byte-order mark is fine
    from sampling.generate import read_prompts

    assert read_prompts(f) == ["a red circle"]


def test_caption_files_not_utf8(tmp_path, capsys):
    from PIL import Image

    from hart.data.datasets import make_dataset

    for name in ("a", "b"):
        Image.new("RGB", (8, 8), (200, 30, 30)).save(tmp_path / f"{name}.png")
    (tmp_path / "a.txt").write_text("a red square")
    (tmp_path / "b.txt").write_bytes("un carr\u00e9 rouge".encode("latin-1"))
    ds = make_dataset(f"captions:{tmp_path}", "train", 8)
    assert re.search(r"1 caption not UTF-8 \(save captions as UTF-8\) \(.*b\.txt, a bad byte at offset 7\)",
                     capsys.readouterr().err)
    assert len(ds) == 1
    (tmp_path / "captions.jsonl").write_bytes(b'{"file": "a.png", "text": "caf\xe9"}\n')  # the byte at 30
    with pytest.raises(UserError, match=r"caption manifest .*captions\.jsonl is not UTF-8 text \(byte 0xe9 at "
                                        r"offset 30, line 1\); save it as UTF-8"):
        make_dataset(f"captions:{tmp_path}", "train", 8)


# ----------------------------------------------------------------------------- output paths

def test_generate_makes_a_missing_out_folder(demo_model_dir, tmp_path):
    out = tmp_path / "new" / "sub" / "g.png"
    assert hart_main(["generate", "--model", str(demo_model_dir), "--class", "0", "--num", "1", "--out", str(out)]) == 0
    assert out.is_file()


@pytest.mark.parametrize("case", ["parent is a file", "read-only"])
def test_unwritable_out_is_refused_before_sampling(tmp_path, monkeypatch, capsys, case):
    import sampling.pipeline

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(sampling.pipeline.HARTPipeline, "from_pretrained", no_load)
    if case == "parent is a file":
        (tmp_path / "notes.txt").write_text("x")
        out = tmp_path / "notes.txt" / "g.png"
        want = f"error: --out {out}: {tmp_path / 'notes.txt'} is a file, not a folder"
    else:
        import hart.common.fs as fs

        def read_only(*a, **k):
            raise OSError(errno.EROFS, "Read-only file system", str(tmp_path))

        monkeypatch.setattr(fs.tempfile, "TemporaryFile", read_only)
        out = tmp_path / "g.png"
        want = f"error: --out {out}: cannot write in {tmp_path}: read-only file system"
    with pytest.raises(SystemExit) as e:
        hart_main(["generate", "--class", "0", "--out", str(out)])
    assert e.value.code == 2 and one_error_line(capsys) == want


def test_other_outputs_are_checked_first(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    (tmp_path / "m").mkdir()  # export's --model: an --out inside it would be refused for that
    bad = tmp_path / "f" / "x"
    for argv, flag in ((["plot", str(tmp_path), "--out", f"{bad}.png"], "--out"),
                       (["fid", "--images", str(tmp_path), "--ref", "synthetic", "--save-stats", f"{bad}.npz"],
                        "--save-stats"),
                       (["export", "--model", str(tmp_path / "m"), "--out", str(bad)], "--out"),
                       (["eval-tokenizer", "--model", str(tmp_path), "--data", "synthetic", "--save-recon", str(bad)],
                        "--save-recon")):
        with pytest.raises(SystemExit) as e:
            hart_main(argv)
        assert e.value.code == 2
        line = one_error_line(capsys)
        assert line.startswith(f"error: {flag} {bad}") and "is a file, not a folder" in line, (argv, line)


# ----------------------------------------------------------------------------- long prompts

def test_long_prompt_warned_once(capsys):
    from hart.text import load_text_encoder

    enc = load_text_encoder("minilm", max_length=8)
    long = "a very long prompt about a small red circle left of a large blue square"
    capsys.readouterr()
    for _ in range(3):  # one batch per image: still one line
        enc.encode([long, "a red circle"])
    warns = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(warns) == 1 and warns[0].startswith("warning: 1 of 2 prompts are longer than the text encoder's 8 tokens")
    assert warns[0].endswith("only their first 8 tokens are kept")


# ----------------------------------------------------------------------------- any command

@pytest.mark.parametrize("name", list(COMMANDS))
@pytest.mark.parametrize("fault, line", [
    (PermissionError(errno.EACCES, "Permission denied", "/srv/runs/x.png"), "permission denied: /srv/runs/x.png"),
    (OSError(errno.ENOSPC, "No space left on device", "/srv/runs/x.png"),
     "the disk is full (no space left on device) while writing /srv/runs/x.png; free some space and run the "
     "command again"),
])
def test_os_error_in_any_command_is_one_line(name, fault, line, monkeypatch, capsys):
    def main(argv=None, **wiring):
        raise fault

    monkeypatch.setitem(sys.modules, COMMANDS[name][0], types.SimpleNamespace(main=main))  # what the router imports
    with pytest.raises(SystemExit) as e:
        hart_main([name])
    assert e.value.code == 1
    assert one_error_line(capsys) == f"error: {line}"


def test_cli_entry_exit_codes(capsys):
    def failing(exc):
        return cli_entry(lambda argv=None: (_ for _ in ()).throw(exc))

    for exc, code, text in ((UserError("bad --num"), 2, "error: bad --num"),
                            (FaultError("the disk is full"), 1, "error: the disk is full"),
                            (OSError(errno.EROFS, "Read-only file system", "/mnt/x"), 1,
                             "error: read-only file system: /mnt/x")):
        with pytest.raises(SystemExit) as e:
            failing(exc)()
        assert e.value.code == code and one_error_line(capsys) == text
