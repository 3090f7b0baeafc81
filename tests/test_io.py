import pytest
import torch

from hart.common.errors import UserError
from hart.common.io import (atomic_dir, atomic_file, load_state, read_json, resolve_dir, save_state,
                     write_json)
from tokenizer import HybridTokenizer, TokenizerConfig


def test_atomic_file_keeps_previous_on_failure(tmp_path):
    p = tmp_path / "a.json"
    write_json(p, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_file(p) as tmp:
            tmp.write_text('{"v": 2, "half')
            raise RuntimeError("killed mid-write")
    assert read_json(p) == {"v": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["a.json"]  # no temp file left behind


def test_atomic_dir_swap_and_recovery(tmp_path):
    d = tmp_path / "state"
    with atomic_dir(d) as tmp:
        (tmp / "x").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(d) as tmp:
            (tmp / "x").write_text("2")
            raise RuntimeError("killed")
    assert (d / "x").read_text() == "1"
    # a kill between the two renames leaves only <dir>.old: readers fall back to it
    d.rename(tmp_path / "state.old")
    assert resolve_dir(d).name == "state.old"
    with atomic_dir(d) as tmp:
        (tmp / "x").write_text("3")
    assert (resolve_dir(d) / "x").read_text() == "3"


def test_save_load_round_trip_same_outputs(tmp_path, tiny_tokenizer):
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    loaded = HybridTokenizer.from_pretrained(tmp_path / "tok")
    assert loaded.config == tiny_tokenizer.config
    a, b = tiny_tokenizer.encode(x), loaded.encode(x)
    assert all(torch.equal(i, j) for i, j in zip(a.ids, b.ids))
    assert torch.equal(tiny_tokenizer.decode(a), loaded.decode(b))


def test_weights_not_matching_config_are_refused(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    cfg = read_json(tmp_path / "tok" / "config.json")
    cfg["z_channels"] = 4
    write_json(tmp_path / "tok" / "config.json", cfg)
    with pytest.raises(UserError, match="do not match its config.*shape differs.*quant_conv"):
        HybridTokenizer.from_pretrained(tmp_path / "tok")


def test_missing_and_unknown_keys_are_named(tmp_path, tiny_tokenizer):
    from safetensors.torch import load_file, save_file

    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    w = tmp_path / "tok" / "model.safetensors"
    state = load_file(str(w))
    state.pop("post_quant_conv.bias")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(w))
    with pytest.raises(UserError, match=r"missing: post_quant_conv.bias; unexpected: extra.weight"):
        HybridTokenizer.from_pretrained(tmp_path / "tok")


def test_load_state_never_runs_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, str(p))
    with pytest.raises(UserError, match="refusing to load"):
        load_state(p)
    save_state({"t": torch.arange(3), "step": 5}, tmp_path / "ok.pt")
    assert load_state(tmp_path / "ok.pt")["step"] == 5


def test_unknown_preset_lists_presets():
    with pytest.raises(UserError, match="fm-32.*tiny"):
        TokenizerConfig.from_name("nope")


@pytest.mark.parametrize("kw, msg", [
    (dict(resolution=30), "not divisible"),
    (dict(patch_nums=(1, 2, 3)), "last patch_num"),
    (dict(patch_nums=(2, 4)), "start at 1"),
])
def test_bad_config_one_line(kw, msg):
    with pytest.raises(UserError, match=msg):
        TokenizerConfig.from_name("tiny", **kw)


# ----------------------------------------------------------------------------- storage precision

def test_pack_unpack_fp16_and_int8():
    from hart.common.io import pack_state, unpack_state

    g = torch.Generator().manual_seed(0)
    state = {
        "big.weight": torch.randn(96, 64, generator=g),  # int8 with per-row scales
        "conv.weight": torch.randn(16, 8, 3, 3, generator=g) * 0.1,  # 1152 elements < 4096: fp16
        "small.bias": torch.randn(96, generator=g),
        "mask": torch.tensor([0.0, float("-inf")]),
        "ids": torch.arange(5),
        "flag": torch.tensor(True),
    }
    state["odd.weight"] = torch.randn(128, 40, generator=g)  # 40 columns: no int4 groups, int8 instead
    for storage in ("fp32", "fp16", "int8", "int4"):
        packed = pack_state(state, storage)
        back = unpack_state(packed)
        assert set(back) == set(state)
        for k, v in state.items():
            assert back[k].shape == v.shape and back[k].dtype == v.dtype
            if not v.is_floating_point():
                assert torch.equal(back[k], v)
        assert torch.equal(back["mask"], state["mask"])  # -inf survives every storage
        err = (back["big.weight"] - state["big.weight"]).abs()
        if storage == "fp32":
            assert torch.equal(back["big.weight"], state["big.weight"])
        elif storage == "fp16":
            assert packed["big.weight"].dtype == torch.float16 and err.max() < 2e-3
        elif storage == "int8":
            assert packed["big.weight"].dtype == torch.int8 and packed["small.bias"].dtype == torch.float16
            half_step = state["big.weight"].abs().amax(1, keepdim=True) / 127 / 2
            assert (err <= half_step + 1e-6).all() and err.max() > 0
        else:  # two 4-bit values per byte, groups of 32 along a row, each within half its own step
            assert packed["big.weight"].dtype == torch.uint8 and packed["big.weight"].shape == (96, 32)
            assert packed["big.weight.int4_scale"].shape == (96, 2) and packed["odd.weight"].dtype == torch.int8
            groups = state["big.weight"].view(96, 2, 32)
            half_step = (groups.amax(-1) - groups.amin(-1)) / 15 / 2  # (96, 2)
            assert (err.view(96, 2, 32) <= half_step[..., None] * 1.01 + 2e-3).all() and err.max() > 0
            # every code 0..15 is used and round-trips: a ramp of 16 steps per group comes back exactly
            ramp = torch.arange(16.0).repeat(2).repeat(3, 2)  # (3, 64)
            assert torch.equal(unpack_state(pack_state({"r.weight": ramp.repeat(22, 1)}, "int4"))["r.weight"],
                               ramp.repeat(22, 1))
            flat = torch.full((64, 64), 0.25)  # constant groups: no zero scale, exact
            assert torch.equal(unpack_state(pack_state({"c.weight": flat}, "int4"))["c.weight"], flat)
    with pytest.raises(UserError, match="unknown weight storage"):
        pack_state(state, "int3")


def test_export_int8_folder_is_smaller_and_loads(tmp_path, capsys):
    from hart.config import GeneratorConfig
    from hart.export import main as export_main
    from hart.model import HARTGenerator

    torch.manual_seed(0)
    src = tmp_path / "model"
    HybridTokenizer(TokenizerConfig.from_name("tiny")).save_pretrained(src / "tokenizer")
    gen = HARTGenerator(GeneratorConfig.from_name("tiny")).eval()
    gen.save_pretrained(src / "generator")
    (src / "train_state").mkdir()  # left behind by the export
    assert export_main(["--model", str(src), "--out", str(tmp_path / "small")]) == 0
    assert "int8" in capsys.readouterr().out
    small = tmp_path / "small"
    assert sorted(p.name for p in small.iterdir()) == ["generator", "model_index.json", "tokenizer"]  # + diffusers' index
    size = lambda d: (d / "model.safetensors").stat().st_size  # noqa: E731
    assert size(small / "generator") < 0.4 * size(src / "generator")
    loaded = HARTGenerator.from_pretrained(small / "generator")
    x = torch.randn(2, loaded.config.seq_len - 1, loaded.config.z_channels)
    labels = torch.tensor([1, 2])
    with torch.no_grad():
        a, b = gen(labels, x).logits, loaded(labels, x).logits
    assert (a - b).abs().max() < 0.05 * a.abs().max()
    # a single tokenizer folder, and an existing output that must be kept
    assert export_main(["--model", str(src / "tokenizer"), "--out", str(tmp_path / "tok16"), "--storage", "fp16"]) == 0
    HybridTokenizer.from_pretrained(tmp_path / "tok16")
    with pytest.raises(SystemExit):
        export_main(["--model", str(src), "--out", str(small)])
    assert "already holds a model folder; choose another --out or pass --overwrite" in capsys.readouterr().err


def test_bf16_on_a_cpu_without_bf16_arithmetic_is_said_once(monkeypatch, capsys):
    import torch

    from hart.common import dist

    x86 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"
    assert not dist.cpu_has_bf16(x86)
    assert dist.cpu_has_bf16(x86.replace("avx2", "avx2 avx512f avx512_bf16"))
    assert dist.cpu_has_bf16(x86.replace("avx2", "avx2 amx_bf16 amx_tile"))
    assert dist.cpu_has_bf16("processor\t: 0\nFeatures\t: fp asimd bf16\n")  # not x86: nothing said
    monkeypatch.setattr(dist, "cpu_has_bf16", lambda: False)
    cpu = torch.device("cpu")
    assert dist.resolve_dtype("bf16", cpu) == torch.bfloat16
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and "--dtype auto" in err[0]
    assert dist.resolve_dtype("auto", cpu) == torch.float32 and dist.resolve_dtype("fp32", cpu) == torch.float32
    monkeypatch.setattr(dist, "cpu_has_bf16", lambda: True)
    assert dist.resolve_dtype("bf16", cpu) == torch.bfloat16
    assert capsys.readouterr().err == ""


def test_grid_row_labels_are_cut_and_drawn_in_a_font_that_has_their_letters():
    from PIL import ImageFont

    from hart.common.images import LABEL_MAX_CHARS, grid, grid_size, label_font, short_label

    rows = [torch.zeros(2, 3, 8, 8)] * 2
    long = "a " * 200  # a 200-word caption
    assert len(short_label(long)) <= LABEL_MAX_CHARS and short_label(long).endswith("...")
    w, h = grid_size(2, 2, 8, [long, "x"])
    assert grid(rows, [long, "x"]).size == (w, h) and w < 400  # was 10,000 px wide
    assert label_font(["Dress", "T-shirt/top"]) is None  # ASCII: Pillow's own font, the same pixels everywhere
    font = label_font(["un carr\u00e9 rouge"])
    try:
        ImageFont.truetype("DejaVuSans.ttf", 11)
    except OSError:
        pytest.skip("no DejaVu Sans on this machine")
    assert font is not None and font.getname()[0] == "DejaVu Sans"


def test_example_prompts_are_short_distinct_captions():
    from hart.tokens import EXAMPLE_MAX_CHARS, EXAMPLES, pick_examples

    long = "word " * 60
    caps = ["a red circle", long, "a red circle", "two blue squares"] + [f"shape {i}" for i in range(10)]
    picked = pick_examples(caps)
    assert picked[:3] == ["a red circle", "two blue squares", "shape 0"] and len(picked) == EXAMPLES
    assert all(len(c) <= EXAMPLE_MAX_CHARS for c in picked)
    assert pick_examples([long + "x", long]) == [long, long + "x"]  # none short: the shortest first
