"""Official-layout state dicts with random tensors, built from the documented layouts
(FoundationVision/VAR models/vqvae.py, basic_vae.py, quant.py, var.py, basic_var.py) and
never from this project's modules, so the converter is tested against the layout itself.
"""
from __future__ import annotations

import torch


def _t(g, *shape, std=0.02):
    return torch.randn(*shape, generator=g) * std


def _norm(sd, g, name, c):
    sd[f"{name}.weight"] = 1 + _t(g, c, std=0.1)
    sd[f"{name}.bias"] = _t(g, c)


def _conv(sd, g, name, cout, cin, k):
    sd[f"{name}.weight"] = _t(g, cout, cin, k, k, std=(1.0 / (cin * k * k)) ** 0.5)
    sd[f"{name}.bias"] = _t(g, cout)


def _resblock(sd, g, name, cin, cout):
    _norm(sd, g, f"{name}.norm1", cin)
    _conv(sd, g, f"{name}.conv1", cout, cin, 3)
    _norm(sd, g, f"{name}.norm2", cout)
    _conv(sd, g, f"{name}.conv2", cout, cout, 3)
    if cin != cout:
        _conv(sd, g, f"{name}.nin_shortcut", cout, cin, 1)


def _attn(sd, g, name, c):
    _norm(sd, g, f"{name}.norm", c)
    _conv(sd, g, f"{name}.qkv", 3 * c, c, 1)  # one 1x1 conv for q, k, v
    _conv(sd, g, f"{name}.proj_out", c, c, 1)


def var_vae_state(ch=32, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z=8, vocab=64, num_scales=10,
                  num_phi=4, seed=0) -> dict:
    """VAR's VQVAE: ``encoder.*``, ``decoder.*``, quant convs, codebook, 4 shared Phi, usage buffer."""
    g = torch.Generator().manual_seed(seed)
    sd: dict = {}
    levels = len(ch_mult)
    # encoder: down.i has num_res_blocks blocks; attention only at the lowest resolution
    _conv(sd, g, "encoder.conv_in", ch, 3, 3)
    cin = ch
    for i, m in enumerate(ch_mult):
        cout = ch * m
        for j in range(num_res_blocks):
            _resblock(sd, g, f"encoder.down.{i}.block.{j}", cin, cout)
            cin = cout
            if i == levels - 1:
                _attn(sd, g, f"encoder.down.{i}.attn.{j}", cout)
        if i != levels - 1:
            _conv(sd, g, f"encoder.down.{i}.downsample.conv", cout, cout, 3)
    top = ch * ch_mult[-1]
    _resblock(sd, g, "encoder.mid.block_1", top, top)
    _attn(sd, g, "encoder.mid.attn_1", top)
    _resblock(sd, g, "encoder.mid.block_2", top, top)
    _norm(sd, g, "encoder.norm_out", top)
    _conv(sd, g, "encoder.conv_out", z, top, 3)
    # decoder: up.i is resolution level i; up.{L-1} runs first, up.0 last (no upsample)
    _conv(sd, g, "decoder.conv_in", top, z, 3)
    _resblock(sd, g, "decoder.mid.block_1", top, top)
    _attn(sd, g, "decoder.mid.attn_1", top)
    _resblock(sd, g, "decoder.mid.block_2", top, top)
    cin = top
    for i in reversed(range(levels)):
        cout = ch * ch_mult[i]
        for j in range(num_res_blocks + 1):
            _resblock(sd, g, f"decoder.up.{i}.block.{j}", cin, cout)
            cin = cout
            if i == levels - 1:
                _attn(sd, g, f"decoder.up.{i}.attn.{j}", cout)
        if i != 0:
            _conv(sd, g, f"decoder.up.{i}.upsample.conv", cout, cout, 3)
    _norm(sd, g, "decoder.norm_out", ch * ch_mult[0])
    _conv(sd, g, "decoder.conv_out", 3, ch * ch_mult[0], 3)
    # quantizer
    _conv(sd, g, "quant_conv", z, z, 3)
    _conv(sd, g, "post_quant_conv", z, z, 3)
    sd["quantize.embedding.weight"] = torch.randn(vocab, z, generator=g) * 0.5
    for k in range(num_phi):
        _conv(sd, g, f"quantize.quant_resi.qresi_ls.{k}", z, z, 3)
    sd["quantize.ema_vocab_hit_SV"] = torch.rand(num_scales, vocab, generator=g)
    return sd


def var_transformer_state(depth=2, width=128, num_classes=1000, vocab=64, z=8,
                          patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16), seed=1) -> dict:
    """VAR (shared_aln False, attn_l2_norm True): C = width, heads = depth, D = C."""
    g = torch.Generator().manual_seed(seed)
    C, H = width, depth
    L = sum(p * p for p in patch_nums)
    lvl = torch.cat([torch.full((p * p,), k) for k, p in enumerate(patch_nums)]).view(1, L)
    mask = torch.where(lvl.view(L, 1) >= lvl.view(1, L), 0.0, float("-inf")).view(1, 1, L, L)
    sd = {
        "word_embed.weight": _t(g, C, z), "word_embed.bias": _t(g, C),
        "class_emb.weight": _t(g, num_classes + 1, C, std=0.3),
        "pos_start": _t(g, 1, 1, C, std=0.3), "pos_1LC": _t(g, 1, L, C, std=0.3),
        "lvl_embed.weight": _t(g, len(patch_nums), C, std=0.3),
        "lvl_1L": lvl, "attn_bias_for_masking": mask,
    }
    for i in range(depth):
        b = f"blocks.{i}"
        sd.update({
            f"{b}.attn.mat_qkv.weight": _t(g, 3 * C, C, std=C ** -0.5),
            f"{b}.attn.q_bias": _t(g, C), f"{b}.attn.v_bias": _t(g, C),
            f"{b}.attn.zero_k_bias": torch.zeros(C),
            f"{b}.attn.scale_mul_1H11": torch.full((1, H, 1, 1), 4.0).log() + _t(g, 1, H, 1, 1, std=0.5),
            f"{b}.attn.proj.weight": _t(g, C, C, std=C ** -0.5), f"{b}.attn.proj.bias": _t(g, C),
            f"{b}.ffn.fc1.weight": _t(g, 4 * C, C, std=C ** -0.5), f"{b}.ffn.fc1.bias": _t(g, 4 * C),
            f"{b}.ffn.fc2.weight": _t(g, C, 4 * C, std=(4 * C) ** -0.5), f"{b}.ffn.fc2.bias": _t(g, C),
            f"{b}.ada_lin.1.weight": _t(g, 6 * C, C), f"{b}.ada_lin.1.bias": _t(g, 6 * C, std=0.1),
        })
    sd["head_nm.ada_lin.1.weight"] = _t(g, 2 * C, C)
    sd["head_nm.ada_lin.1.bias"] = _t(g, 2 * C)
    sd["head.weight"] = _t(g, vocab, C, std=0.2)
    sd["head.bias"] = _t(g, vocab)
    return sd


def discriminator_state(ndf=16, layers=3, seed=2) -> dict:
    """A PatchGAN (NLayerDiscriminator-like) stand-in for HART's ``disc.*`` tensors."""
    g = torch.Generator().manual_seed(seed)
    sd: dict = {}
    cin, cout = 3, ndf
    for n in range(layers + 2):
        sd[f"disc.main.{3 * n}.weight"] = _t(g, cout, cin, 4, 4)
        sd[f"disc.main.{3 * n}.bias"] = _t(g, cout)
        cin, cout = cout, (1 if n == layers else min(cout * 2, ndf * 8))
    return sd
