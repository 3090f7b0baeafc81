"""`hart convert`: official-layout checkpoints -> model folders that compute VAR's functions."""
from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from hart.convert import main
from hart.convert_var import PATCH_NUMS, convert_var, read_checkpoint
from hart.convert_hart import convert_hart_tokenizer
from hart.common.errors import UserError
from hart.model import HARTGenerator
from tests.official_layout import discriminator_state, var_transformer_state, var_vae_state
from tokenizer.model import HybridTokenizer

PN = PATCH_NUMS[256]


@pytest.fixture(scope="module")
def vae_sd():
    return var_vae_state()


@pytest.fixture(scope="module")
def var_sd():
    return var_transformer_state()


@pytest.fixture(scope="module")
def converted(tmp_path_factory, vae_sd, var_sd):
    d = tmp_path_factory.mktemp("conv")
    torch.save(vae_sd, d / "vae.pth")
    torch.save(var_sd, d / "var.pth")
    assert main(["var", "--vae", str(d / "vae.pth"), "--var", str(d / "var.pth"), "--out", str(d / "model")]) == 0
    return d / "model"


# ----------------------------------------------------------------------------- references
# VAR's functions written directly on the raw official tensors, from the documented algorithm.

def _phi(sd, k, K, h):
    ticks = np.linspace(1 / 12, 11 / 12, 4)
    i = int(np.argmin(np.abs(ticks - k / (K - 1))))
    w, b = sd[f"quantize.quant_resi.qresi_ls.{i}.weight"], sd[f"quantize.quant_resi.qresi_ls.{i}.bias"]
    return 0.5 * h + 0.5 * F.conv2d(h, w, b, padding=1)


def ref_ids_and_teacher(sd, f, pns):
    """VAR's multi-scale quantization of latent f and its teacher-forcing inputs."""
    emb = sd["quantize.embedding.weight"]
    B, z, n, _ = f.shape
    K = len(pns)
    rest, f_hat, ids, nxt = f.clone(), torch.zeros_like(f), [], []
    for k, pn in enumerate(pns):
        r = F.interpolate(rest, size=(pn, pn), mode="area") if k < K - 1 else rest
        flat = r.permute(0, 2, 3, 1).reshape(-1, z)
        idx = torch.cdist(flat, emb).argmin(1)
        ids.append(idx.view(B, -1))
        h = emb[idx].view(B, pn, pn, z).permute(0, 3, 1, 2)
        if k < K - 1:
            h = F.interpolate(h, size=(n, n), mode="bicubic")
        h = _phi(sd, k, K, h)
        f_hat, rest = f_hat + h, rest - h
        if k < K - 1:
            nxt.append(F.interpolate(f_hat, size=(pns[k + 1],) * 2, mode="area").flatten(2).transpose(1, 2))
    return ids, torch.cat(nxt, 1), f_hat


def ref_logits(sd, label, teacher, pns, depth):
    """VAR's teacher-forced forward: l2-norm attention, q/v bias, AdaLN (g1 g2 s1 s2 sh1 sh2)."""
    C = sd["class_emb.weight"].shape[1]
    H = depth
    L = sum(p * p for p in pns)
    lvl = torch.cat([torch.full((p * p,), k) for k, p in enumerate(pns)])
    cond = sd["class_emb.weight"][label]  # (B, C)
    B = cond.shape[0]
    x = torch.cat([(cond[:, None] + sd["pos_start"]), F.linear(teacher, sd["word_embed.weight"], sd["word_embed.bias"])], 1)
    x = x + sd["lvl_embed.weight"][lvl][None] + sd["pos_1LC"]
    mask = lvl[:, None] >= lvl[None, :]
    ln = lambda t: F.layer_norm(t, (C,), eps=1e-6)  # noqa: E731
    for i in range(depth):
        p = lambda n: sd[f"blocks.{i}.{n}"]  # noqa: E731
        g1, g2, s1, s2, b1, b2 = F.linear(F.silu(cond), p("ada_lin.1.weight"), p("ada_lin.1.bias")).view(B, 1, 6, C).unbind(2)
        h = ln(x) * (1 + s1) + b1
        qkv = F.linear(h, p("attn.mat_qkv.weight"), torch.cat([p("attn.q_bias"), torch.zeros(C), p("attn.v_bias")]))
        q, k, v = qkv.view(B, L, 3, H, C // H).permute(2, 0, 3, 1, 4)
        q = F.normalize(q, dim=-1) * p("attn.scale_mul_1H11").clamp(max=math.log(100)).exp()
        k = F.normalize(k, dim=-1)
        att = (q @ k.transpose(-1, -2)).masked_fill(~mask, float("-inf")).softmax(-1)
        a = (att @ v).transpose(1, 2).reshape(B, L, C)
        x = x + F.linear(a, p("attn.proj.weight"), p("attn.proj.bias")) * g1
        h = ln(x) * (1 + s2) + b2
        h = F.linear(F.gelu(F.linear(h, p("ffn.fc1.weight"), p("ffn.fc1.bias")), approximate="tanh"),
                     p("ffn.fc2.weight"), p("ffn.fc2.bias"))
        x = x + h * g2
    sc, sh = F.linear(F.silu(cond), sd["head_nm.ada_lin.1.weight"], sd["head_nm.ada_lin.1.bias"]).view(B, 1, 2, C).unbind(2)
    return F.linear(ln(x) * (1 + sc) + sh, sd["head.weight"], sd["head.bias"])


# ----------------------------------------------------------------------------- conversion

def test_vae_only_writes_a_tokenizer_folder(tmp_path, vae_sd):
    torch.save(vae_sd, tmp_path / "vae.pth")
    out = tmp_path / "tok"
    assert main(["var", "--vae", str(tmp_path / "vae.pth"), "--out", str(out)]) == 0
    tok = HybridTokenizer.from_pretrained(out)
    c = tok.config
    assert (c.ch, c.ch_mult, c.num_res_blocks, c.z_channels, c.codebook_size) == (32, (1, 1, 2, 2, 4), 2, 8, 64)
    assert c.patch_nums == PN and c.resolution == 256 and c.phi_last
    assert torch.equal(tok.codebook, vae_sd["quantize.embedding.weight"])
    assert not (out / "generator").exists()


def test_converted_tokenizer_computes_vars_functions(converted, vae_sd):
    tok = HybridTokenizer.from_pretrained(converted / "tokenizer")
    img = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        f = tok.latent(img)
        ref_ids, ref_teacher, ref_fhat = ref_ids_and_teacher(vae_sd, f, PN)
        code = tok.encode(img)
        teacher = tok.teacher_inputs(code.ids)
        img_ours = tok.decode_ids(code.ids)
        img_ref = tok.decode_latent(ref_fhat)
    for a, b in zip(code.ids, ref_ids):
        assert (a == b).float().mean() > 0.999  # float ties aside, the same ids
    assert torch.allclose(teacher, ref_teacher, atol=1e-4)
    assert torch.allclose(code.f_hat, ref_fhat, atol=1e-4)
    assert img_ours.shape == (2, 3, 256, 256) and torch.allclose(img_ours, img_ref, atol=1e-4)
    # residual is exact: discrete + residual decodes the latent itself
    assert torch.allclose(code.f_hat + code.residual, f, atol=1e-5)


def test_converted_generator_gives_vars_logits(converted, var_sd):
    gen = HARTGenerator.from_pretrained(converted / "generator")
    c = gen.config
    assert (c.depth, c.width, c.heads, c.num_classes, c.codebook_size, c.z_channels) == (2, 128, 2, 1000, 64, 8)
    assert c.attn_l2_norm and c.patch_nums == PN and c.mlp_ratio == 4.0
    g = torch.Generator().manual_seed(3)
    labels = torch.tensor([3, 1000])  # 1000: the unconditional class
    teacher = torch.randn(2, c.seq_len - 1, c.z_channels, generator=g)
    with torch.no_grad():
        ours = gen(labels, teacher).logits
        ref = ref_logits(var_sd, labels, teacher, PN, depth=2)
    assert torch.allclose(ours, ref, atol=1e-4, rtol=1e-4)


def test_converted_model_runs_through_the_pipeline_at_256(converted, tmp_path):
    from sampling.generate import main as generate_main
    from sampling.pipeline import HARTPipeline

    pipe = HARTPipeline.from_pretrained(converted)
    out = pipe.sample([7, 999], seed=0, cfg=4.0, top_k=900, top_p=0.95)
    assert out.images.shape == (2, 3, 256, 256) and torch.isfinite(out.images).all()
    assert [i.shape[1] for i in out.ids] == [p * p for p in PN]
    again = pipe.sample([7], seed=0, cfg=4.0, top_k=900, top_p=0.95)
    # the same ids alone or in a batch; the decoder's batched convolutions may round differently
    assert all(torch.equal(a[:1], b) for a, b in zip(out.ids, again.ids))
    torch.testing.assert_close(again.images[0], out.images[0], atol=1e-4, rtol=0)
    grid = tmp_path / "g.png"
    assert generate_main(["--model", str(converted), "--class", "5", "--num", "1", "--sampling", "var-demo",
                          "--out", str(grid)]) == 0
    assert grid.is_file()


def test_reads_safetensors_bin_and_nested_state(tmp_path, vae_sd):
    save_file({k: v.contiguous() for k, v in vae_sd.items()}, str(tmp_path / "vae.safetensors"))
    torch.save({"state_dict": vae_sd, "epoch": 3}, tmp_path / "vae.bin")
    a = read_checkpoint(tmp_path / "vae.safetensors")
    b = read_checkpoint(tmp_path / "vae.bin")
    assert set(a) == set(b) == set(vae_sd)
    convert_var(tmp_path / "vae.safetensors", tmp_path / "out")
    assert HybridTokenizer.from_pretrained(tmp_path / "out").config.codebook_size == 64


def test_reads_vars_training_checkpoint_and_wrapped_names(tmp_path, var_sd):
    """VAR's own ar-ckpt-*.pth (trainer -> var_wo_ddp, beside the optimizer and the args) and a
    DDP- or compile-wrapped model saved whole (module. / _orig_mod. on every name) read as the
    release file does."""
    opt = {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-4, "params": [0]}]}
    torch.save({"epoch": 3, "iter": 10, "trainer": {"var_wo_ddp": var_sd, "var_opt": opt},
                "args": {"depth": 16, "tlr": 1e-4}}, tmp_path / "ar-ckpt-best.pth")
    torch.save({f"module.{k}": v for k, v in var_sd.items()}, tmp_path / "ddp.pth")
    torch.save({f"_orig_mod.{k}": v for k, v in var_sd.items()}, tmp_path / "compiled.pth")
    for name in ("ar-ckpt-best.pth", "ddp.pth", "compiled.pth"):
        got = read_checkpoint(tmp_path / name)
        assert got.keys() == var_sd.keys() and all(torch.equal(got[k], var_sd[k]) for k in var_sd), name


# ----------------------------------------------------------------------------- refusals

def _expect_error(capsys, argv, *needles):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    for n in needles:
        assert n in err, err
    return err


def test_missing_unexpected_and_reshaped_keys_are_listed(tmp_path, capsys, vae_sd):
    sd = dict(vae_sd)
    del sd["decoder.up.0.block.1.conv1.bias"]
    sd["quantize.extra_thing"] = torch.zeros(3)
    sd["post_quant_conv.bias"] = torch.zeros(5)
    torch.save(sd, tmp_path / "bad.pth")
    _expect_error(capsys, ["var", "--vae", str(tmp_path / "bad.pth"), "--out", str(tmp_path / "o")],
                  "missing: decoder.up.0.block.1.conv1.bias", "unexpected: quantize.extra_thing",
                  "wrong shape: post_quant_conv.bias (5,)")
    assert not (tmp_path / "o").exists()


def test_partial_transformer_and_wrong_file(tmp_path, capsys, vae_sd, var_sd):
    torch.save(vae_sd, tmp_path / "vae.pth")
    sd = {k: v for k, v in var_sd.items() if not k.startswith("blocks.1.ffn.")}
    torch.save(sd, tmp_path / "var.pth")
    _expect_error(capsys, ["var", "--vae", str(tmp_path / "vae.pth"), "--var", str(tmp_path / "var.pth"),
                           "--out", str(tmp_path / "o")], "missing: blocks.1.ffn.fc1.bias")
    # the tokenizer passed as the transformer
    _expect_error(capsys, ["var", "--vae", str(tmp_path / "vae.pth"), "--var", str(tmp_path / "vae.pth"),
                           "--out", str(tmp_path / "o")], "is not a VAR transformer", "class_emb.weight")


def test_mismatched_pair_is_refused(tmp_path, capsys):
    torch.save(var_vae_state(vocab=32), tmp_path / "vae.pth")
    torch.save(var_transformer_state(vocab=64), tmp_path / "var.pth")
    _expect_error(capsys, ["var", "--vae", str(tmp_path / "vae.pth"), "--var", str(tmp_path / "var.pth"),
                           "--out", str(tmp_path / "o")], "do not belong together", "codebook_size")


def test_pickle_needing_code_is_refused(tmp_path, capsys):
    torch.save({"args": argparse.Namespace(lr=1.0), "w": torch.zeros(1)}, tmp_path / "evil.pth")
    _expect_error(capsys, ["var", "--vae", str(tmp_path / "evil.pth"), "--out", str(tmp_path / "o")],
                  "refusing to load", "not a plain-tensor checkpoint")


def test_damaged_checkpoint_is_not_called_unsafe(tmp_path, capsys, vae_sd):
    torch.save(vae_sd, tmp_path / "vae.pth")
    whole = (tmp_path / "vae.pth").read_bytes()
    garbled = b"\x80\x02\x94\x94\x94garbage"  # opcodes a weights-only load refuses: damage, not code
    for name, data in (("cut.pth", whole[:len(whole) // 2]), ("empty.pth", b""), ("text.pth", b"hello"),
                       ("garbled.pth", garbled)):
        (tmp_path / name).write_bytes(data)
        _expect_error(capsys, ["var", "--vae", str(tmp_path / name), "--out", str(tmp_path / "o")],
                      "damaged or not a PyTorch checkpoint")
    torch.save({"args": argparse.Namespace(lr=1.0), "w": torch.zeros(1)}, tmp_path / "evil.pth")
    _expect_error(capsys, ["var", "--vae", str(tmp_path / "evil.pth"), "--out", str(tmp_path / "o")],
                  "Unsupported global: GLOBAL argparse.Namespace")
    _expect_error(capsys, ["var", "--vae", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "models" / "x")],
                  "no such checkpoint file")
    assert not (tmp_path / "o").exists() and not (tmp_path / "models").exists()


def test_existing_output_is_kept(tmp_path, capsys, vae_sd):
    torch.save(vae_sd, tmp_path / "vae.pth")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("mine")
    _expect_error(capsys, ["var", "--vae", str(tmp_path / "vae.pth"), "--out", str(tmp_path / "o")], "--overwrite")
    assert (tmp_path / "o" / "keep.txt").read_text() == "mine"


def test_schedule_must_match_the_usage_buffer(tmp_path, capsys, vae_sd):
    torch.save(vae_sd, tmp_path / "vae.pth")
    _expect_error(capsys, ["var", "--vae", str(tmp_path / "vae.pth"), "--resolution", "1024",
                           "--out", str(tmp_path / "o")], "10 scales", "14")


# ----------------------------------------------------------------------------- HART

def test_hart_tokenizer_strips_prefixes_and_skips_phi_at_the_last_scale(tmp_path, capsys, vae_sd):
    sd = {f"vae.{k}": v for k, v in vae_sd.items()}
    sd.update(discriminator_state())
    # HART's double_decoder=True training keeps a second decoder that inference never runs
    sd.update({f"vae.decoder2.{k[8:]}": v for k, v in vae_sd.items() if k.startswith("decoder.conv_out")})
    sd["vae.post_quant_conv2.weight"] = vae_sd["post_quant_conv.weight"]
    torch.save(sd, tmp_path / "hart.bin")
    out, dropped = convert_hart_tokenizer(tmp_path / "hart.bin", tmp_path / "tok", resolution=256)
    assert dropped == len(discriminator_state()) + 3
    tok = HybridTokenizer.from_pretrained(out)
    assert not tok.config.phi_last and tok.config.patch_nums == PN
    # the last scale adds the plain codebook vectors (no Phi)
    ids = torch.randint(0, 64, (1, 16 * 16))
    h = tok.quantize.contribution(ids, len(PN) - 1, 16)
    assert torch.equal(h, vae_sd["quantize.embedding.weight"][ids].view(1, 16, 16, 8).permute(0, 3, 1, 2))
    # a bare VAR file is not a HART one, and unknown prefixes are named
    torch.save(vae_sd, tmp_path / "var.pth")
    with pytest.raises(UserError, match="no vae"):
        convert_hart_tokenizer(tmp_path / "var.pth", tmp_path / "t2", resolution=256)
    torch.save({**sd, "ema.decay": torch.zeros(())}, tmp_path / "x.bin")
    _expect_error(capsys, ["hart-tokenizer", "--ckpt", str(tmp_path / "x.bin"), "--resolution", "256",
                           "--out", str(tmp_path / "t3")], "unexpected: ema.decay")


def test_wrong_files_and_flags_say_what_to_do(tmp_path, capsys, vae_sd, var_sd):
    """Swapped --vae / --var, HART's tokenizer given as VAR's, a folder for a file, and a
    --resolution or --patch-nums that the transformer's position table contradicts: one line
    naming the fix (was: a bare 'not a VAR tokenizer', a silently ignored --resolution, and a
    bad --patch-nums blamed on the two files)."""
    torch.save(vae_sd, tmp_path / "vae.pth")
    torch.save(var_sd, tmp_path / "var.pth")
    torch.save({f"vae.{k}": v for k, v in vae_sd.items()}, tmp_path / "hart.bin")
    (tmp_path / "rel" / "tokenizer").mkdir(parents=True)
    torch.save({}, tmp_path / "rel" / "tokenizer" / "pytorch_model.bin")
    v, r, o = str(tmp_path / "vae.pth"), str(tmp_path / "var.pth"), str(tmp_path / "out")
    _expect_error(capsys, ["var", "--vae", r, "--var", v, "--out", o], "give it as --var (swapped with --vae?)")
    _expect_error(capsys, ["var", "--vae", str(tmp_path / "hart.bin"), "--out", o], "hart convert hart-tokenizer")
    _expect_error(capsys, ["hart-tokenizer", "--ckpt", str(tmp_path / "rel"), "--out", o],
                  "is a folder, not a checkpoint file (it holds tokenizer/pytorch_model.bin: give the file)")
    _expect_error(capsys, ["var", "--vae", v, "--var", r, "--resolution", "512", "--out", o], "drop --resolution")
    _expect_error(capsys, ["var", "--vae", v, "--var", r, "--patch-nums", "1,2,3,4,5,6,8,10,13,17", "--out", o],
                  "--patch-nums 1,2,3,4,5,6,8,10,13,17 has", "position table has")
    _expect_error(capsys, ["var", "--vae", v, "--patch-nums", "1,2,4", "--resolution", "256", "--out", o], "not both")
    _expect_error(capsys, ["var", "--vae", v, "--resolution", "0", "--out", o], "no published scale schedule for --resolution 0")
    assert not (tmp_path / "out").exists()
