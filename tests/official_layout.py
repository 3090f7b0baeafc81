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


# ----------------------------------------------------------------------------- HART text-to-image
# mit-han-lab/hart: hart_transformer_t2i.py (HARTForT2I), basic_hart.py (AdaLNSelfAttn with
# LlamaAttention + LlamaMLP, LlamaRMSNormFused, AdaLNBeforeHead, TimestepEmbedder),
# diffusion/diffloss.py (DiffLoss.net = SimpleMLPAdaLN, learned sigma: 2z outputs).

def hart_llm_config(depth=2, width=64, heads=2, context_token=8, context_dim=32,
                    patch_nums=(1, 2, 3, 4), diff_width=32, diff_depth=2, **extra) -> dict:
    """The keys of HART's ``llm/config.json`` (HARTForT2IConfig) that describe the model."""
    return {
        "model_type": "hart_transformer_t2i", "architectures": ["HARTForT2I"],
        "context_token": context_token, "context_dim": context_dim, "depth": depth, "embed_dim": width,
        "num_heads": heads, "mlp_ratio": 4.0, "drop_rate": 0.0, "attn_drop_rate": 0.0, "drop_path_rate": 0.0,
        "norm_eps": 1e-6, "shared_aln": False, "cond_drop_rate": 0.1, "attn_l2_norm": False,
        "patch_nums": list(patch_nums), "mlp_type": "llama", "attn_type": "llama", "disable_aln": False,
        "use_timestep_embed": True, "sep_aln_pooling_mode": "max", "use_cross_attn": False,
        "diff_width": diff_width, "diff_depth": diff_depth, "num_sampling_steps": "8",
        "diffusion_batch_mul": 4, "sampler": "iddpm", "use_context_norm": True, "context_norm_scale": 1.0,
        **extra,
    }


def hart_transformer_state(cfg: dict, vocab=64, z=8, seed=3) -> dict:
    """HARTForT2I's state dict for ``cfg`` (:func:`hart_llm_config`), random tensors, with the
    buffers HART saves (``lvl_1L``, ``attn_bias_for_masking``, ``zero_k_bias``)."""
    g = torch.Generator().manual_seed(seed)
    C, T, D = cfg["embed_dim"], cfg["context_token"], cfg["context_dim"]
    pns = cfg["patch_nums"]
    S = T + sum(p * p for p in pns) - 1
    hidden = int(C * cfg["mlp_ratio"] * 2 / 3 + 255) // 256 * 256
    lvl = torch.cat([torch.zeros(T)] + [torch.full((p * p,), k) for k, p in enumerate(pns) if k]).view(1, S)
    sd = {
        "word_embed.weight": _t(g, C, z, std=0.3), "word_embed.bias": _t(g, C),
        "context_embed.weight": _t(g, C, D, std=D ** -0.5), "context_embed.bias": _t(g, C),
        "lvl_1L": lvl.long(),
        "attn_bias_for_masking": torch.where(lvl.view(S, 1) >= lvl.view(1, S), 0.0, float("-inf")).view(1, 1, S, S),
        "head_nm.ln_wo_grad.weight": 1 + _t(g, C, std=0.1),
        "head_nm.ada_lin.1.weight": _t(g, 2 * C, C, std=0.1), "head_nm.ada_lin.1.bias": _t(g, 2 * C, std=0.1),
        "head.weight": _t(g, vocab, C, std=0.3), "head.bias": _t(g, vocab),
        "decoder_norm.weight": 1 + _t(g, C, std=0.1),
    }
    if cfg.get("use_context_norm"):
        sd["context_norm.weight"] = 1 + _t(g, D, std=0.1)
    if cfg.get("use_timestep_embed"):
        sd.update({"lvl_embed.mlp.0.weight": _t(g, C, 256, std=0.1), "lvl_embed.mlp.0.bias": _t(g, C),
                   "lvl_embed.mlp.2.weight": _t(g, C, C, std=0.1), "lvl_embed.mlp.2.bias": _t(g, C)})
    else:
        sd["lvl_embed.weight"] = _t(g, len(pns), C, std=0.3)
    for i in range(cfg["depth"]):
        b = f"blocks.{i}"
        sd.update({
            f"{b}.attn.qkv_proj.weight": _t(g, 3 * C, C, std=C ** -0.5),
            f"{b}.attn.q_bias": _t(g, C), f"{b}.attn.v_bias": _t(g, C), f"{b}.attn.zero_k_bias": torch.zeros(C),
            f"{b}.attn.proj.weight": _t(g, C, C, std=C ** -0.5), f"{b}.attn.proj.bias": _t(g, C),
            f"{b}.ffn.gate_proj.weight": _t(g, hidden, C, std=C ** -0.5),
            f"{b}.ffn.up_proj.weight": _t(g, hidden, C, std=C ** -0.5),
            f"{b}.ffn.down_proj.weight": _t(g, C, hidden, std=hidden ** -0.5),
            f"{b}.ln_wo_grad.weight": 1 + _t(g, C, std=0.1),
            f"{b}.ada_lin.1.weight": _t(g, 6 * C, C, std=0.1), f"{b}.ada_lin.1.bias": _t(g, 6 * C, std=0.1),
        })
        if cfg.get("attn_l2_norm"):
            sd[f"{b}.attn.scale_mul_1H11"] = torch.full((1, cfg["num_heads"], 1, 1), 4.0).log()
    W, n = cfg["diff_width"], "diffloss.net"
    sd.update({
        f"{n}.time_embed.mlp.0.weight": _t(g, W, 256), f"{n}.time_embed.mlp.0.bias": _t(g, W),
        f"{n}.time_embed.mlp.2.weight": _t(g, W, W), f"{n}.time_embed.mlp.2.bias": _t(g, W),
        f"{n}.cond_embed.weight": _t(g, W, C, std=C ** -0.5), f"{n}.cond_embed.bias": _t(g, W),
        f"{n}.input_proj.weight": _t(g, W, z, std=z ** -0.5), f"{n}.input_proj.bias": _t(g, W),
        f"{n}.final_layer.linear.weight": _t(g, 2 * z, W, std=W ** -0.5), f"{n}.final_layer.linear.bias": _t(g, 2 * z),
        f"{n}.final_layer.adaLN_modulation.1.weight": _t(g, 2 * W, W, std=0.1),
        f"{n}.final_layer.adaLN_modulation.1.bias": _t(g, 2 * W, std=0.1),
    })
    for i in range(cfg["diff_depth"]):
        r = f"{n}.res_blocks.{i}"
        sd.update({
            f"{r}.in_ln.weight": 1 + _t(g, W, std=0.1), f"{r}.in_ln.bias": _t(g, W),
            f"{r}.mlp.0.weight": _t(g, W, W, std=W ** -0.5), f"{r}.mlp.0.bias": _t(g, W),
            f"{r}.mlp.2.weight": _t(g, W, W, std=W ** -0.5), f"{r}.mlp.2.bias": _t(g, W),
            f"{r}.adaLN_modulation.1.weight": _t(g, 3 * W, W, std=0.1), f"{r}.adaLN_modulation.1.bias": _t(g, 3 * W, std=0.1),
        })
    return sd


def write_hart_release(folder, cfg: dict, vocab=64, z=8, tokenizer_ch=32, seed=3):
    """A HART release folder as the user downloads it: ``llm/config.json`` + ``llm/ema_model.bin``
    and ``tokenizer/config.json`` + ``tokenizer/pytorch_model.bin`` (``vae.*`` + ``disc.*``).
    The tokenizer downsamples by 16 (VAR's ch_mult), so its resolution is 16 * patch_nums[-1].
    Returns the transformer's state dict."""
    import json
    from pathlib import Path

    folder = Path(folder)
    (folder / "llm").mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer").mkdir(exist_ok=True)
    sd = hart_transformer_state(cfg, vocab=vocab, z=z, seed=seed)
    torch.save(sd, folder / "llm" / "ema_model.bin")
    (folder / "llm" / "config.json").write_text(json.dumps(cfg))
    vae = var_vae_state(ch=tokenizer_ch, z=z, vocab=vocab, num_scales=len(cfg["patch_nums"]), seed=seed + 1)
    tok = {**{"vae." + k: v for k, v in vae.items()}, **discriminator_state(seed=seed + 2)}
    torch.save(tok, folder / "tokenizer" / "pytorch_model.bin")
    (folder / "tokenizer" / "config.json").write_text(json.dumps({"model_type": "hart_autoencoder_with_disc"}))
    return sd
