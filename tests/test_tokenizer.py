import pytest
import torch
import torch.nn.functional as F

from hart.common.errors import UserError
from tokenizer import HybridTokenizer, TokenizerConfig


def make(phi_last=False, **kw):
    torch.manual_seed(0)
    return HybridTokenizer(TokenizerConfig.from_name("tiny", phi_last=phi_last, **kw)).eval()


def trained_a_bit(model, steps=3):
    """A few training passes: k-means init + EMA updates give a real codebook."""
    model.train()
    for s in range(steps):
        model(torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(s)) * 2 - 1)
    return model.eval()


@pytest.mark.parametrize("phi_last", [False, True])
def test_ids_in_range_and_shapes(phi_last):
    m = trained_a_bit(make(phi_last))
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    code = m.encode(x)
    cfg = m.config
    assert len(code.ids) == len(cfg.patch_nums)
    for ids, pn in zip(code.ids, cfg.patch_nums):
        assert ids.shape == (3, pn * pn) and ids.dtype == torch.long
        assert ids.min() >= 0 and ids.max() < cfg.codebook_size
    n = cfg.latent_size
    assert code.residual.shape == (3, cfg.z_channels, n, n)


@pytest.mark.parametrize("phi_last", [False, True])
def test_fhat_plus_residual_is_latent(phi_last):
    m = trained_a_bit(make(phi_last))
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        code = m.encode(x)
        f = m.latent(x)
        f_hat = m.ids_to_fhat(code.ids)  # rebuilt from the ids alone
    assert torch.allclose(f_hat + code.residual, f, atol=1e-5)
    assert torch.allclose(f_hat, code.f_hat, atol=1e-5)
    # the discrete part explains a real share of the latent once the codebook is fitted
    assert code.residual.pow(2).mean() < f.pow(2).mean()


@pytest.mark.parametrize("phi_last", [False, True])
def test_last_scale_change_is_the_fhat_of_swapped_ids(phi_last):
    m = trained_a_bit(make(phi_last))
    with torch.no_grad():
        code = m.encode(torch.rand(3, 3, 16, 16) * 2 - 1)
        new = torch.randint(0, m.config.codebook_size, code.ids[-1].shape, generator=torch.Generator().manual_seed(1))
        change = m.last_scale_change(code.ids[-1], new)
        swapped = m.ids_to_fhat(code.ids[:-1] + [new])
    assert change.abs().max() > 0
    torch.testing.assert_close(code.f_hat + change, swapped, atol=1e-5, rtol=1e-5)
    assert m.last_scale_change(new, new).abs().max() == 0


def test_teacher_inputs_match_incremental_helper_and_quantizer():
    m = trained_a_bit(make())
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        code = m.encode(x)
        ti = m.teacher_inputs(code.ids)
        cfg = m.config
        L = cfg.num_tokens
        assert ti.shape == (2, L - 1, cfg.z_channels)
        # incremental helper, as the sampler uses it
        f_hat, chunks = None, []
        for k, ids in enumerate(code.ids):
            f_hat, nxt = m.next_scale_input(k, f_hat, ids)
            if nxt is not None:
                chunks.append(nxt)
        assert torch.allclose(torch.cat(chunks, 1), ti, atol=1e-6)
        # independent check against the definition: the input at scale k+1 is the area
        # downsample of sum_{j<=k} Phi_j(up(e[ids_j]))
        n = cfg.latent_size
        acc = torch.zeros(2, cfg.z_channels, n, n)
        off = 0
        for k in range(len(cfg.patch_nums) - 1):
            pn = cfg.patch_nums[k]
            e = m.codebook[code.ids[k]].view(2, pn, pn, -1).permute(0, 3, 1, 2)
            h = F.interpolate(e, size=(n, n), mode="bicubic") if pn != n else e
            acc = acc + m.quantize.quant_resi(h, k, len(cfg.patch_nums))
            nxt = cfg.patch_nums[k + 1]
            want = F.interpolate(acc, size=(nxt, nxt), mode="area").flatten(2).transpose(1, 2)
            assert torch.allclose(ti[:, off:off + nxt * nxt], want, atol=1e-5)
            off += nxt * nxt


def test_decode_paths():
    m = trained_a_bit(make())
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        code = m.encode(x)
        d = m.decode(code, use_residual=False)
        h = m.decode(code, use_residual=True)
        assert d.shape == h.shape == x.shape
        assert d.min() >= -1 and d.max() <= 1
        assert torch.allclose(d, m.decode_ids(code.ids), atol=1e-5)
        assert torch.allclose(h, m.decode_latent(m.latent(x)), atol=1e-5)
        assert not torch.allclose(d, h)


def test_phi_schedule_matches_var():
    m = make()
    phi = m.quantize.quant_resi
    # VAR's 10 scales map to the 4 shared convs by nearest tick in linspace(1/12, 11/12, 4)
    assert [phi.index(k, 10) for k in range(10)] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    # HART's 1024px schedule has 14 scales
    assert [phi.index(k, 14) for k in range(14)] == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3]
    # other counts of shared convs use VAR's linspace(1/(2n), 1 - 1/(2n), n) ticks
    from tokenizer.quant import SharedPhi

    two = SharedPhi(4, 0.5, 2)
    assert list(two.ticks) == [0.25, 0.75] and [two.index(k, 5) for k in range(5)] == [0, 0, 0, 1, 1]


def test_last_scale_phi_flag():
    for phi_last in (False, True):
        m = make(phi_last)
        ids = torch.zeros(1, 16, dtype=torch.long)
        h = m.quantize.contribution(ids, 3, 4)
        raw = m.codebook[ids].view(1, 4, 4, -1).permute(0, 3, 1, 2)
        assert torch.allclose(h, raw) != phi_last


def test_training_updates_codebook_and_keeps_usage():
    m = make()
    before = m.codebook.clone()
    trained_a_bit(m, steps=5)
    assert bool(m.quantize.codebook.initted)
    assert not torch.allclose(before, m.codebook)
    code = m.encode(torch.rand(16, 3, 16, 16) * 2 - 1)
    used = torch.cat([i.flatten() for i in code.ids]).unique().numel()
    assert used > m.config.codebook_size // 4  # k-means init + dead-code re-seeding: no collapse


def test_hybrid_training_mask_routes_decoder_input():
    m = make().train()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    out = m(x, discrete=torch.tensor([True, False]))
    out.recon.sum().backward()
    assert m.encoder.conv_in.weight.grad is not None  # straight-through reaches the encoder
    m.eval()
    with torch.no_grad():
        exact = m.decoder(m.post_quant_conv(m.latent(x)))
    m.train()
    with torch.no_grad():
        out2 = m(x, discrete=torch.tensor([False, False]))
    assert torch.allclose(out2.recon, exact, atol=1e-5)


def test_var_256_preset_shape():
    cfg = TokenizerConfig.from_name("var-256")
    assert (cfg.ch, cfg.ch_mult, cfg.z_channels, cfg.codebook_size) == (160, (1, 1, 2, 2, 4), 32, 4096)
    assert cfg.patch_nums == (1, 2, 3, 4, 5, 6, 8, 10, 13, 16) and cfg.resolution == 256
    with torch.device("meta"):
        m = HybridTokenizer(cfg)
    keys = set(m.state_dict())
    # official key layout (REFERENCE.md), so converted checkpoints load without renaming
    for k in ["encoder.down.4.attn.1.qkv.weight", "encoder.down.3.downsample.conv.weight",
              "decoder.up.4.attn.2.proj_out.weight", "decoder.up.1.upsample.conv.weight",
              "decoder.up.0.block.2.conv2.weight", "encoder.mid.attn_1.qkv.weight",
              "quantize.quant_resi.qresi_ls.3.weight", "quant_conv.weight", "post_quant_conv.weight"]:
        assert k in keys, k
    assert "decoder.up.0.upsample.conv.weight" not in keys
    assert "encoder.down.0.block.0.nin_shortcut.weight" not in keys
    assert "encoder.down.2.block.0.nin_shortcut.weight" in keys
    assert m.quant_conv.weight.shape == (32, 32, 3, 3)


def test_bad_resolution_is_one_line():
    with pytest.raises(UserError, match="not divisible by the downsampling factor 4"):
        TokenizerConfig.from_name("tiny", resolution=18)


def test_quantizer_ignores_autocast():
    """Under bf16 autocast (``train-tokenizer --dtype bf16``) the quantizer still runs in fp32:
    the same ids and f_hat as without autocast, so bf16 cannot flip a nearest-code choice."""
    m = trained_a_bit(make())
    f = m.latent(torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(7)) * 2 - 1)
    with torch.no_grad():
        ref = m.quantize(f)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            amp = m.quantize(f)
    assert amp.f_hat.dtype == torch.float32
    assert all(torch.equal(a, b) for a, b in zip(ref.ids, amp.ids))
    assert torch.equal(ref.f_hat, amp.f_hat)
