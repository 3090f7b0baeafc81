"""HART's releases -> this project's model folders (``hart convert hart`` and ``hart convert
hart-tokenizer``; the CLI is :mod:`hart.convert`, the readers of the official tensors
:mod:`hart.convert_var`).

HART's transformer keeps its names but four: ``blocks.i.attn.qkv_proj`` -> ``mat_qkv``,
``blocks.i.ln_wo_grad`` -> ``blocks.i.norm.ln_wo_grad``, ``head_nm.ln_wo_grad`` ->
``head_nm.norm.ln_wo_grad``, ``diffloss.net.*`` -> ``diffusion.*``. Its saved buffers
``attn_bias_for_masking`` (L x L, 380 MB at 1024px; read memory-mapped and never
materialised), ``lvl_1L`` and ``zero_k_bias`` are recomputed and left out. The converted
config keeps HART's conditioning as its code computes it: ``mask_pads=False`` (pads attended
to and max-pooled, text positions ``cumsum(mask) - 1`` unclamped), ``context_pool`` from
``sep_aln_pooling_mode`` (``avg`` -> ``mean``, over the mask), and ``head_norm_pool=
"max_unmasked"`` (the head norm's condition is an unmasked max whatever that mode says).
"""
from __future__ import annotations

import re
from pathlib import Path

from hart.common.errors import UserError
from hart.common.fs import prepare_out_dir
from hart.common.io import read_json
from hart.common.models import write_models
from hart.convert_var import (block_indices, check_checkpoint_file, check_keys, need_tensor, published_schedule,
                              read_checkpoint, tokenizer_from_state)


# training-only parts of HART's checkpoint: the GAN discriminator and, when HART trained
# with double_decoder=True, a second decoder that inference never runs
HART_TRAINING_ONLY = ("disc.", "vae.decoder2.", "vae.post_quant_conv2.")


def split_hart_tokenizer(state: dict, path) -> tuple[dict, int]:
    """HART's tokenizer checkpoint: ``vae.*`` (the autoencoder) and ``disc.*`` (its GAN
    discriminator, not needed to run the model). Returns (autoencoder state, dropped count)."""
    dropped = [k for k in state if k.startswith(HART_TRAINING_ONLY)]
    vae = {k[4:]: v for k, v in state.items() if k.startswith("vae.") and not k.startswith(HART_TRAINING_ONLY)}
    if not vae:
        head = ", ".join(sorted(state)[:4])
        raise UserError(f"{path} is not a HART tokenizer checkpoint: no vae.* keys (its keys start with: {head})")
    other = {k: v for k, v in state.items() if not k.startswith(("vae.", "disc."))}
    check_keys({}, other, set(), path, "HART tokenizer")
    return vae, len(dropped)


HART_LLM_WEIGHTS = ("ema_model.bin", "pytorch_model.bin", "model.safetensors")  # first found wins (EMA)
HART_TOKENIZER_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "ema_model.bin")
HART_RENAMES = (  # (HART's name prefix, ours); "#" stands for a block index
    ("blocks.#.attn.qkv_proj.", "blocks.#.attn.mat_qkv."),
    ("blocks.#.ln_wo_grad.", "blocks.#.norm.ln_wo_grad."),
    ("head_nm.ln_wo_grad.", "head_nm.norm.ln_wo_grad."),
    ("diffloss.net.", "diffusion."),
)
# buffers HART saves and we recompute (the mask is never read: it stays a shape)
HART_RECOMPUTED = re.compile(r"^(attn_bias_for_masking|lvl_1L|blocks\.\d+\.attn\.zero_k_bias|.*\.inv_freq)$")


def _rename(name: str, to_ours: bool) -> str:
    for hart, ours in HART_RENAMES:
        src, dst = (hart, ours) if to_ours else (ours, hart)
        pattern = "^" + re.escape(src).replace("\\#", r"(\d+)")
        new, n = re.subn(pattern, dst.replace("#", r"\1"), name)
        if n:
            return new
    return name


def hart_to_ours(name: str) -> str:
    """One of HART's parameter names -> ours."""
    return _rename(name, True)


def ours_to_hart(name: str) -> str:
    """One of our parameter names -> HART's."""
    return _rename(name, False)


def _weights_in(folder: Path, names, what: str) -> Path:
    for n in names:
        if (folder / n).is_file():
            return folder / n
    raise UserError(f"{folder} has no {what} weights: expected one of {', '.join(names)}")


def read_hart_config(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path.parent} has no config.json: --ckpt must be HART's release folder (llm/ and tokenizer/)")
    cfg = read_json(path)
    kind = cfg.get("model_type", "hart_transformer_t2i")
    if kind != "hart_transformer_t2i":
        raise UserError(f"{path}: model_type {kind!r} is not HART's text-to-image transformer (hart_transformer_t2i)")
    unsupported = [k for k in ("attn_type", "mlp_type") if cfg.get(k, "gpt2") != "llama"]
    unsupported += [k for k in ("shared_aln", "disable_aln", "use_cross_attn") if cfg.get(k)]
    if unsupported:
        what = ", ".join(f"{k}={cfg.get(k)!r}" for k in unsupported)
        raise UserError(f"{path}: {what}; only the layout of HART's released models is supported "
                        "(attn_type and mlp_type 'llama', no shared/disabled AdaLN, no cross-attention)")
    for k in ("num_heads", "context_token", "patch_nums"):
        if k not in cfg:
            raise UserError(f"{path} has no {k!r}; is it HART's llm/config.json?")
    if cfg.get("sep_aln_pooling_mode", "max") not in POOLING:
        raise UserError(f"{path}: unknown sep_aln_pooling_mode {cfg['sep_aln_pooling_mode']!r} (HART's: max, avg)")
    if cfg.get("sampler", "iddpm") != "iddpm":
        raise UserError(f"{path}: diffusion sampler {cfg['sampler']!r}; HART's released models use iddpm")
    return cfg


# HART's sep_aln_pooling_mode -> ours (config.context_pool)
POOLING = {"max": "max", "avg": "mean"}


def hart_generator_config(state: dict, cfg: dict, path, text_encoder: str = ""):
    """HART's sizes, from its tensors and its config.json -> :class:`GeneratorConfig`."""
    from hart.config import GeneratorConfig

    what = "a HART text-to-image transformer"
    word = need_tensor(state, "word_embed.weight", what, path)
    ctx = need_tensor(state, "context_embed.weight", what, path)
    head = need_tensor(state, "head.weight", what, path)
    gate = need_tensor(state, "blocks.0.ffn.gate_proj.weight", what, path)
    depth = len(block_indices(state, r"blocks\.(\d+)\."))
    C, z = int(word.shape[0]), int(word.shape[1])
    mlp_ratio = float(cfg.get("mlp_ratio", 4.0))
    if int(C * mlp_ratio * 2 / 3 + 255) // 256 * 256 != gate.shape[0]:
        raise UserError(f"{path}: the FFN width {gate.shape[0]} does not follow mlp_ratio {mlp_ratio} of config.json")
    if int(cfg.get("context_dim", ctx.shape[1])) != ctx.shape[1]:
        raise UserError(f"{path}: context_embed takes {ctx.shape[1]} channels but config.json says {cfg['context_dim']}")
    # the blocks' AdaLN condition follows sep_aln_pooling_mode ("avg": the mean over the mask);
    # HART's head norm (AdaLNBeforeHead) takes an unmasked max over the context in either mode
    pool = POOLING[cfg.get("sep_aln_pooling_mode", "max")]  # checked by read_hart_config
    diff_width = need_tensor(state, "diffloss.net.input_proj.weight", what, path).shape[0]
    out = need_tensor(state, "diffloss.net.final_layer.linear.weight", what, path).shape[0]
    return GeneratorConfig(
        depth=depth, width=C, heads=int(cfg["num_heads"]), mlp_ratio=mlp_ratio, num_classes=1,
        patch_nums=tuple(cfg["patch_nums"]), codebook_size=int(head.shape[0]), z_channels=z,
        attn_l2_norm="blocks.0.attn.scale_mul_1H11" in state, norm_eps=float(cfg.get("norm_eps", 1e-6)),
        dropout=float(cfg.get("drop_rate", 0.0)), drop_path=float(cfg.get("drop_path_rate", 0.0)),
        head=dict(width=int(diff_width), depth=len(block_indices(state, r"diffloss\.net\.res_blocks\.(\d+)\.")),
                  sample_steps=int(cfg.get("num_sampling_steps", "8")), sampler="iddpm", learn_sigma=out == 2 * z),
        stats=dict(residual_scale=0.6),  # DiffLoss.vae_scale
        training=dict(cond_drop=float(cfg.get("cond_drop_rate", 0.1)),
                      diff_batch_mul=int(cfg.get("diffusion_batch_mul", 4))),
        cond="text", text_encoder="qwen2", text_encoder_path=str(text_encoder or ""),
        context_tokens=int(cfg["context_token"]), context_dim=int(ctx.shape[1]),
        context_norm="context_norm.weight" in state, context_pool=pool, mask_pads=False,
        head_norm_pool="max_unmasked",
        norm="rms", mlp="swiglu", pos="rope", rope_2d="hart",
        level_embed="timestep" if "lvl_embed.mlp.0.weight" in state else "table", display=dict(sampling="hart"),
    )


def hart_generator_from_state(state: dict, cfg: dict, path, text_encoder: str = ""):
    """HART's transformer state dict + config.json -> (:class:`HARTGenerator`, names left out)."""
    from hart.model import HARTGenerator

    config = hart_generator_config(state, cfg, path, text_encoder)
    model = HARTGenerator(config)
    ours = model.state_dict()
    derived = {k for k in ours if k.endswith(".attn.zero_k_bias")}
    expected = {ours_to_hart(k): tuple(v.shape) for k, v in ours.items() if k not in derived}  # HART's names
    found = {k: v for k, v in state.items() if not HART_RECOMPUTED.match(k)}
    check_keys(expected, found, set(), path, "HART text-to-image transformer")
    weights = {hart_to_ours(k): v.float() for k, v in found.items()}
    model.load_state_dict({**weights, **{k: ours[k] for k in derived}}, strict=True)
    dropped = sorted(k for k in state if HART_RECOMPUTED.match(k))
    return model.eval(), dropped


def convert_hart(ckpt, out, text_encoder=None, overwrite: bool = False) -> tuple[Path, list[str]]:
    """HART's release folder (``llm/`` + ``tokenizer/``) -> a text-to-image model folder.

    Returns (out, the names left out: recomputed buffers and the tokenizer's training-only tensors).
    """
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        raise UserError(f"--ckpt {ckpt} is not a folder: give HART's release folder (with llm/ and tokenizer/)")
    for sub in ("llm", "tokenizer"):
        if not (ckpt / sub).is_dir():
            raise UserError(f"{ckpt} has no {sub}/: --ckpt must be HART's release folder (llm/ and tokenizer/)")
    if text_encoder is not None and not Path(text_encoder).is_dir():
        raise UserError(f"--text-encoder {text_encoder} is not a folder (HART's Qwen2 text model, its "
                        "Qwen2-VL-1.5B-Instruct download)")
    out = prepare_out_dir(out, overwrite, sources=(ckpt, text_encoder))
    cfg = read_hart_config(ckpt / "llm" / "config.json")
    llm = _weights_in(ckpt / "llm", HART_LLM_WEIGHTS, "transformer")
    state = read_checkpoint(llm, skip=("attn_bias_for_masking",))
    generator, dropped = hart_generator_from_state(state, cfg, llm, str(Path(text_encoder).resolve()) if text_encoder else "")
    if text_encoder is not None:
        from hart.text import check_encoder_width

        check_encoder_width(text_encoder, generator.config.context_dim, "--text-encoder")
    del state
    tok_file = _weights_in(ckpt / "tokenizer", HART_TOKENIZER_WEIGHTS, "tokenizer")
    vae, n_train = split_hart_tokenizer(read_checkpoint(tok_file), tok_file)
    tokenizer = tokenizer_from_state(vae, generator.config.patch_nums, phi_last=False, path=tok_file)
    tc, gc = tokenizer.config, generator.config
    for name in ("codebook_size", "z_channels"):
        if getattr(tc, name) != getattr(gc, name):
            raise UserError(f"{tok_file} and {llm} do not belong together: {name} {getattr(tc, name)} vs {getattr(gc, name)}")
    write_models(out, {"tokenizer": tokenizer, "generator": generator})
    return out, dropped + [f"{n_train} tokenizer training-only tensors (disc.*)"] * bool(n_train)


def convert_hart_tokenizer(ckpt, out, resolution: int = 1024, patch_nums=None, overwrite: bool = False) -> tuple[Path, int]:
    """HART's hybrid tokenizer (``vae.*`` + ``disc.*``) -> a tokenizer folder (no Phi at the last scale)."""
    check_checkpoint_file(ckpt)
    out = prepare_out_dir(out, overwrite, sources=(ckpt,))
    vae, dropped = split_hart_tokenizer(read_checkpoint(ckpt), ckpt)
    pns = tuple(patch_nums) if patch_nums else published_schedule(resolution)
    write_models(out, {"": tokenizer_from_state(vae, pns, phi_last=False, path=ckpt)})
    return out, dropped
