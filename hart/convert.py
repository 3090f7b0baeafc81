"""``hart convert``: official VAR / HART checkpoints -> this project's model folders.

Examples::

    hart convert var --vae vae_ch160v4096z32.pth --var var_d16.pth --out models/var-d16
    hart convert var --vae vae_ch160v4096z32.pth --out models/var-vae
    hart convert hart-tokenizer --ckpt hart-0.7b-1024px/tokenizer/pytorch_model.bin --out models/hart-tok
    hart convert hart --ckpt hart-0.7b-1024px --out models/hart-0.7b --text-encoder Qwen2-VL-1.5B-Instruct

``convert var`` with ``--var`` writes a complete model folder (``OUT/tokenizer/`` +
``OUT/generator/``) that ``hart generate --model OUT`` runs; with ``--vae`` alone, and for
``convert hart-tokenizer``, ``OUT`` is a tokenizer folder (``hart eval-tokenizer --model OUT``). ``convert hart`` reads
HART's release folder (``llm/`` with ``config.json`` and ``ema_model.bin`` or
``pytorch_model.bin``, and ``tokenizer/``) and writes a full text-to-image model folder; the
Qwen2 text encoder stays where the user keeps it (``--text-encoder``, recorded in the config,
``--text-encoder-path`` overrides it at run time).

Rules:

* ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` are read with ``torch.load(weights_only=True)``,
  so a file that would need to run code to unpickle is refused; ``.safetensors`` as is.
* Strict: every tensor of the file is consumed (HART's training-only tensors, the ``disc.*``
  discriminator and a ``decoder2`` if present, are recognised and deliberately left out), every shape is checked, and a wrong or partial file
  gets one message listing the missing and unexpected keys in the file's own names.
* Sizes (channels, levels, depth, width, heads, vocabulary) are read off the tensors. The
  scale schedule follows the generator's position table when there is one, otherwise
  ``--resolution`` (VAR's published schedules) or ``--patch-nums``.

Only the codebook is stored differently: the official ``quantize.embedding.weight`` (V, z)
becomes vector-quantize-pytorch's ``quantize.codebook.embed`` (1, V, z) with its EMA
statistics set so that further training starts from the same codebook. VAR's usage counter
``quantize.ema_vocab_hit_SV`` (K, V) is checked against the scale count and dropped.

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

import argparse
import re
from pathlib import Path

import torch

from hart.common.errors import UserError, cli_entry
from hart.common.io import key_mismatch, prepare_out_dir
from hart.common.models import write_models
from tokenizer.config import PATCH_NUMS

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
CODEBOOK = "quantize.embedding.weight"
USAGE_BUFFER = "quantize.ema_vocab_hit_SV"
GENERATOR_BUFFERS = ("lvl_1L", "attn_bias_for_masking")  # recomputed from the config


# ----------------------------------------------------------------------------- reading

def read_checkpoint(path, skip=()) -> dict:
    """A checkpoint file -> flat {name: tensor}, without ever running pickled code.

    A training checkpoint that nests the weights under one of ``state_dict`` / ``model`` /
    ``module`` is unwrapped. Names in ``skip`` come back as shape-only ``meta`` tensors and are
    never read into memory (pickles are memory-mapped; safetensors read only what is kept).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such checkpoint file: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            if skip:
                from safetensors import safe_open

                with safe_open(str(path), "pt") as f:
                    state = {k: (torch.empty(f.get_slice(k).get_shape(), device="meta") if k in skip
                                 else f.get_tensor(k)) for k in f.keys()}
            else:
                state = load_file(str(path))
        except Exception as e:
            raise UserError(f"cannot read {path} as safetensors: {_first_line(e)}") from None
    elif path.suffix in PICKLE_SUFFIXES:
        try:
            try:  # memory-mapped: a tensor is read only when used (HART's 380 MB mask never is)
                state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # not a zip-format checkpoint: no mmap
                state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(
                f"refusing to load {path}: it is not a plain-tensor checkpoint and unpickling it could run "
                f"code ({_first_line(e)}); re-save its state_dict or convert it to .safetensors"
            ) from None
    else:
        raise UserError(f"{path}: unknown checkpoint type {path.suffix!r}; expected .pth, .pt, .bin, .ckpt or .safetensors")
    while isinstance(state, dict) and not any(torch.is_tensor(v) for v in state.values()):
        inner = [k for k in ("state_dict", "model", "module") if isinstance(state.get(k), dict)]
        if not inner:
            break
        state = state[inner[0]]
    if not isinstance(state, dict) or not state:
        raise UserError(f"{path} holds no state dict (found {type(state).__name__})")
    bad = sorted(k for k, v in state.items() if not torch.is_tensor(v))
    if bad:
        raise UserError(f"{path}: entries that are not tensors: {', '.join(map(str, bad[:6]))}")
    return {k: torch.empty(v.shape, device="meta") if k in skip else v for k, v in state.items()}


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _need(state: dict, key: str, what: str, path) -> torch.Tensor:
    if key not in state:
        head = ", ".join(sorted(state)[:4])
        raise UserError(f"{path} is not {what}: it has no {key} (its keys start with: {head})")
    return state[key]


def _indices(state: dict, pattern: str) -> list[int]:
    """Sorted distinct integers captured by ``pattern`` (a regex with one group) over the keys."""
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in state if (m := rx.match(k))})


def _check_keys(expected: dict, found: dict, optional: set, path, what: str) -> None:
    """One error naming missing / unexpected / reshaped keys (all in the file's names)."""
    parts = key_mismatch(expected, found, optional, shape_label="wrong shape", limit=8)
    if parts:
        raise UserError(f"{path} is not a complete {what} checkpoint; " + "; ".join(parts))


def parse_patch_nums(text: str) -> tuple:
    try:
        pns = tuple(int(p) for p in text.replace(" ", "").split(",") if p)
    except ValueError:
        raise UserError(f"--patch-nums must be comma-separated integers like 1,2,3,4, got {text!r}") from None
    if not pns:
        raise UserError("--patch-nums is empty")
    return pns


# ----------------------------------------------------------------------------- tokenizer

def tokenizer_config_from_state(state: dict, patch_nums, phi_last: bool, path):
    """Read the tokenizer's sizes off an official (VAR layout) state dict."""
    from tokenizer.config import TokenizerConfig

    what = "a VAR/HART tokenizer"
    conv_in = _need(state, "encoder.conv_in.weight", what, path)
    emb = _need(state, CODEBOOK, what, path)
    quant = _need(state, "quant_conv.weight", what, path)
    ch, in_ch = conv_in.shape[:2]
    levels = _indices(state, r"encoder\.down\.(\d+)\.")
    blocks = _indices(state, r"encoder\.down\.0\.block\.(\d+)\.")
    if not levels or not blocks:
        raise UserError(f"{path} is not {what}: no encoder.down.*.block.* tensors")
    mult = []
    for i in levels:
        w = _need(state, f"encoder.down.{i}.block.0.conv2.weight", what, path)
        if w.shape[0] % ch:
            raise UserError(f"{path}: encoder level {i} has {w.shape[0]} channels, not a multiple of ch {ch}")
        mult.append(w.shape[0] // ch)
    num_phi = len(_indices(state, r"quantize\.quant_resi\.qresi_ls\.(\d+)\.weight"))
    if num_phi == 0:
        raise UserError(
            f"{path}: no quantize.quant_resi.qresi_ls.* (shared Phi) tensors; only VAR's released layout "
            "(share_quant_resi=4) is supported"
        )
    last = levels[-1]
    using_sa = any(k.startswith(f"encoder.down.{last}.attn.") for k in state)
    using_mid_sa = any(k.startswith("encoder.mid.attn_1.") for k in state)
    usage = state.get(USAGE_BUFFER)
    if usage is not None and usage.ndim == 2 and usage.shape[0] != len(patch_nums):
        raise UserError(
            f"{path} was trained with {usage.shape[0]} scales but the schedule {','.join(map(str, patch_nums))} "
            f"has {len(patch_nums)}; pass --patch-nums or --resolution to match"
        )
    down = 2 ** (len(mult) - 1)
    return TokenizerConfig(
        resolution=patch_nums[-1] * down, in_channels=int(in_ch), ch=int(ch), ch_mult=tuple(mult),
        num_res_blocks=len(blocks), z_channels=int(quant.shape[0]), codebook_size=int(emb.shape[0]),
        patch_nums=tuple(patch_nums), num_phi=num_phi, phi_last=phi_last, using_sa=using_sa,
        using_mid_sa=using_mid_sa,
    )


def official_tokenizer_shapes(model) -> dict:
    """Our tokenizer's state-dict shapes under the official key names."""
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("quantize.codebook.")}
    V, z = model.config.codebook_size, model.config.z_channels
    return {**ours, CODEBOOK: (V, z)}


def tokenizer_from_state(state: dict, patch_nums, phi_last: bool, path):
    """Official tokenizer state dict (no prefix) -> :class:`HybridTokenizer` with its weights."""
    from tokenizer.model import HybridTokenizer

    config = tokenizer_config_from_state(state, patch_nums, phi_last, path)
    model = HybridTokenizer(config)
    _check_keys(official_tokenizer_shapes(model), state, {USAGE_BUFFER}, path, "VAR/HART tokenizer")
    weights = {k: v.float() for k, v in state.items() if k not in (CODEBOOK, USAGE_BUFFER)}
    emb = state[CODEBOOK].float()
    V = emb.shape[0]
    # vector-quantize-pytorch's EMA codebook: embed = embed_avg / cluster_size, already trained
    weights.update({
        "quantize.codebook.embed": emb[None].clone(),
        "quantize.codebook.embed_avg": emb[None].clone(),
        "quantize.codebook.cluster_size": torch.ones(1, V),
        "quantize.codebook.initted": torch.tensor(True),
    })
    model.load_state_dict(weights, strict=True)
    return model.eval()


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
    _check_keys({}, other, set(), path, "HART tokenizer")
    return vae, len(dropped)


# ----------------------------------------------------------------------------- generator

def generator_config_from_state(state: dict, path, patch_nums=None):
    """Read the VAR transformer's sizes off its state dict; the schedule comes from pos_1LC."""
    from hart.config import GeneratorConfig

    what = "a VAR transformer"
    if any(k.startswith("shared_ada_lin.") for k in state):
        raise UserError(f"{path}: shared AdaLN (shared_aln=True) VAR models are not supported; the released ones do not use it")
    cls_emb = _need(state, "class_emb.weight", what, path)
    pos = _need(state, "pos_1LC", what, path)
    word = _need(state, "word_embed.weight", what, path)
    head = _need(state, "head.weight", what, path)
    depth = len(_indices(state, r"blocks\.(\d+)\."))
    if depth == 0:
        raise UserError(f"{path} is not {what}: no blocks.* tensors")
    C = int(cls_emb.shape[1])
    scale_mul = state.get("blocks.0.attn.scale_mul_1H11")
    l2 = scale_mul is not None
    heads = int(scale_mul.shape[1]) if l2 else max(C // 64, 1)
    fc1 = _need(state, "blocks.0.ffn.fc1.weight", what, path)
    L = int(pos.shape[1])
    if patch_nums is None or sum(p * p for p in patch_nums) != L:
        known = [p for p in PATCH_NUMS.values() if sum(q * q for q in p) == L]
        if not known:
            raise UserError(
                f"{path}: pos_1LC has {L} positions, which matches no published schedule; pass --patch-nums"
            )
        patch_nums = known[0]
    return GeneratorConfig(
        depth=depth, width=C, heads=heads, mlp_ratio=fc1.shape[0] / C, num_classes=int(cls_emb.shape[0]) - 1,
        patch_nums=tuple(patch_nums), codebook_size=int(head.shape[0]), z_channels=int(word.shape[1]),
        attn_l2_norm=l2, drop_path=0.1 * depth / 24,
    )


def generator_from_state(state: dict, path, patch_nums=None):
    """VAR transformer state dict -> :class:`HARTGenerator` (VAR's key names are ours)."""
    from hart.model import HARTGenerator

    model = HARTGenerator(generator_config_from_state(state, path, patch_nums))
    ours = model.state_dict()
    recomputed = [k for k in ours if k in GENERATOR_BUFFERS or k.endswith(".attn.zero_k_bias")]
    expected = {k: tuple(v.shape) for k, v in ours.items() if k not in recomputed}
    _check_keys(expected, state, set(recomputed), path, "VAR transformer")
    for k in recomputed:  # derived buffers: accept them only when they say what ours say
        if k in state:
            found = state[k]
            if tuple(found.shape) != tuple(ours[k].shape) or not torch.equal(found.to(ours[k].dtype), ours[k]):
                raise UserError(f"{path}: buffer {k} differs from the one the inferred schedule gives; pass --patch-nums")
    model.load_state_dict({**{k: v.float() for k, v in state.items() if k in expected},
                           **{k: ours[k] for k in recomputed}}, strict=True)
    return model.eval()


# ----------------------------------------------------------------------------- HART text-to-image

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
    import json

    if not path.is_file():
        raise UserError(f"{path.parent} has no config.json: --ckpt must be HART's release folder (llm/ and tokenizer/)")
    try:
        cfg = json.loads(path.read_text())
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None
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
    return cfg


def hart_generator_config(state: dict, cfg: dict, path, text_encoder: str = ""):
    """HART's sizes, from its tensors and its config.json -> :class:`GeneratorConfig`."""
    from hart.config import GeneratorConfig

    what = "a HART text-to-image transformer"
    word = _need(state, "word_embed.weight", what, path)
    ctx = _need(state, "context_embed.weight", what, path)
    head = _need(state, "head.weight", what, path)
    gate = _need(state, "blocks.0.ffn.gate_proj.weight", what, path)
    depth = len(_indices(state, r"blocks\.(\d+)\."))
    C, z = int(word.shape[0]), int(word.shape[1])
    mlp_ratio = float(cfg.get("mlp_ratio", 4.0))
    if int(C * mlp_ratio * 2 / 3 + 255) // 256 * 256 != gate.shape[0]:
        raise UserError(f"{path}: the FFN width {gate.shape[0]} does not follow mlp_ratio {mlp_ratio} of config.json")
    if int(cfg.get("context_dim", ctx.shape[1])) != ctx.shape[1]:
        raise UserError(f"{path}: context_embed takes {ctx.shape[1]} channels but config.json says {cfg['context_dim']}")
    # the blocks' AdaLN condition follows sep_aln_pooling_mode ("avg": the mean over the mask);
    # HART's head norm (AdaLNBeforeHead) takes an unmasked max over the context in either mode
    pool = {"max": "max", "avg": "mean"}.get(cfg.get("sep_aln_pooling_mode", "max"))
    if pool is None:
        raise UserError(f"{path}: unknown sep_aln_pooling_mode {cfg['sep_aln_pooling_mode']!r}")
    diff_width = _need(state, "diffloss.net.input_proj.weight", what, path).shape[0]
    out = _need(state, "diffloss.net.final_layer.linear.weight", what, path).shape[0]
    if cfg.get("sampler", "iddpm") != "iddpm":
        raise UserError(f"{path}: diffusion sampler {cfg['sampler']!r}; HART's released models use iddpm")
    return GeneratorConfig(
        depth=depth, width=C, heads=int(cfg["num_heads"]), mlp_ratio=mlp_ratio, num_classes=1,
        patch_nums=tuple(cfg["patch_nums"]), codebook_size=int(head.shape[0]), z_channels=z,
        attn_l2_norm="blocks.0.attn.scale_mul_1H11" in state, norm_eps=float(cfg.get("norm_eps", 1e-6)),
        dropout=float(cfg.get("drop_rate", 0.0)), drop_path=float(cfg.get("drop_path_rate", 0.0)),
        head=dict(width=int(diff_width), depth=len(_indices(state, r"diffloss\.net\.res_blocks\.(\d+)\.")),
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
    _check_keys(expected, found, set(), path, "HART text-to-image transformer")
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
        raise UserError(f"--text-encoder {text_encoder} is not a folder (HART's Qwen2-1.5B-Instruct)")
    out = prepare_out_dir(out, overwrite)
    cfg = read_hart_config(ckpt / "llm" / "config.json")
    llm = _weights_in(ckpt / "llm", HART_LLM_WEIGHTS, "transformer")
    state = read_checkpoint(llm, skip=("attn_bias_for_masking",))
    generator, dropped = hart_generator_from_state(state, cfg, llm, str(Path(text_encoder).resolve()) if text_encoder else "")
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


# ----------------------------------------------------------------------------- writing

def convert_var(vae, out, var=None, resolution: int = 256, patch_nums=None, overwrite: bool = False) -> Path:
    """VAR's tokenizer (+ optional transformer) -> a tokenizer folder, or a full model folder."""
    out = prepare_out_dir(out, overwrite)
    var_state = read_checkpoint(var) if var is not None else None
    if patch_nums is None and var_state is not None and "pos_1LC" in var_state:
        patch_nums = generator_config_from_state(var_state, var).patch_nums
    pns = tuple(patch_nums) if patch_nums else _schedule(resolution)
    tokenizer = tokenizer_from_state(read_checkpoint(vae), pns, phi_last=True, path=vae)
    if var_state is None:
        write_models(out, {"": tokenizer})
        return out
    generator = generator_from_state(var_state, var, pns)
    tc, gc = tokenizer.config, generator.config
    for name in ("codebook_size", "z_channels", "patch_nums"):
        if getattr(tc, name) != getattr(gc, name):
            raise UserError(f"{vae} and {var} do not belong together: {name} {getattr(tc, name)} vs {getattr(gc, name)}")
    write_models(out, {"tokenizer": tokenizer, "generator": generator})
    return out


def convert_hart_tokenizer(ckpt, out, resolution: int = 1024, patch_nums=None, overwrite: bool = False) -> tuple[Path, int]:
    """HART's hybrid tokenizer (``vae.*`` + ``disc.*``) -> a tokenizer folder (no Phi at the last scale)."""
    out = prepare_out_dir(out, overwrite)
    vae, dropped = split_hart_tokenizer(read_checkpoint(ckpt), ckpt)
    pns = tuple(patch_nums) if patch_nums else _schedule(resolution)
    write_models(out, {"": tokenizer_from_state(vae, pns, phi_last=False, path=ckpt)})
    return out, dropped


def _schedule(resolution: int) -> tuple:
    if resolution not in PATCH_NUMS:
        raise UserError(
            f"no published scale schedule for --resolution {resolution}; use one of "
            f"{', '.join(map(str, PATCH_NUMS))} or pass --patch-nums"
        )
    return PATCH_NUMS[resolution]


# ----------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hart convert", description="Convert official VAR / HART checkpoints into model folders.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("Examples::", 1)[1],
    )
    sub = p.add_subparsers(dest="what", required=True, metavar="{var,hart-tokenizer,hart}")
    v = sub.add_parser("var", help="VAR tokenizer (vae_ch160v4096z32.pth) [+ transformer var_dN.pth]")
    v.add_argument("--vae", required=True, help="VAR tokenizer checkpoint")
    v.add_argument("--var", default=None, help="VAR transformer checkpoint (omit to write the tokenizer alone)")
    v.add_argument("--resolution", type=int, default=256,
                   help="image size whose published schedule to use when --var does not fix it (default 256)")
    h = sub.add_parser("hart-tokenizer", help="HART hybrid tokenizer checkpoint (vae.* + disc.* keys)")
    h.add_argument("--ckpt", required=True, help="HART tokenizer checkpoint")
    h.add_argument("--resolution", type=int, default=1024, help="image size of the scale schedule (default 1024)")
    for s in (v, h):
        s.add_argument("--patch-nums", default=None, help="explicit scale schedule, e.g. 1,2,3,4,5,6,8,10,13,16")
    t = sub.add_parser("hart", help="HART text-to-image release folder (llm/ + tokenizer/, e.g. hart-0.7b-1024px)")
    t.add_argument("--ckpt", required=True, help="the release folder: llm/ (config.json, ema_model.bin) and tokenizer/")
    t.add_argument("--text-encoder", default=None,
                   help="the Qwen2-1.5B-Instruct folder, recorded in the model's config (--text-encoder-path "
                        "overrides it when sampling)")
    for s in (v, h, t):
        s.add_argument("--out", required=True, help="output folder")
        s.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    return p


def _summarise(names: list[str]) -> str:
    """['attn_bias_for_masking', 'blocks.0.attn.zero_k_bias', ...] -> a short list with counts."""
    groups: dict[str, int] = {}
    for n in names:
        key = re.sub(r"\.\d+\.", ".*.", n)
        groups[key] = groups.get(key, 0) + 1
    return ", ".join(k if c == 1 else f"{k} (x{c})" for k, c in groups.items())


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.what == "hart":
        out, dropped = convert_hart(args.ckpt, args.out, text_encoder=args.text_encoder, overwrite=args.overwrite)
        print(f"wrote model folder {out} (tokenizer/ + generator/); left out, recomputed or training-only: "
              f"{_summarise(dropped)}")
        if not args.text_encoder:
            print("no --text-encoder given: pass --text-encoder-path PATH/Qwen2-1.5B-Instruct when sampling")
        return 0
    pns = parse_patch_nums(args.patch_nums) if args.patch_nums else None
    if args.what == "var":
        out = convert_var(args.vae, args.out, var=args.var, resolution=args.resolution, patch_nums=pns,
                          overwrite=args.overwrite)
        kind = "model folder (tokenizer/ + generator/)" if args.var else "tokenizer folder"
        print(f"wrote {kind} {out}")
    else:
        out, dropped = convert_hart_tokenizer(args.ckpt, args.out, resolution=args.resolution, patch_nums=pns,
                                              overwrite=args.overwrite)
        print(f"wrote tokenizer folder {out} (left out {dropped} training-only tensors: disc.*, decoder2)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
