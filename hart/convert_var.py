"""Official VAR checkpoints -> this project's model folders, and the readers of official tensors
that :mod:`hart.convert_hart` shares (``hart convert var``; the CLI is :mod:`hart.convert`).

Only the codebook is stored differently: the official ``quantize.embedding.weight`` (V, z)
becomes vector-quantize-pytorch's ``quantize.codebook.embed`` (1, V, z) with its EMA
statistics set so that further training starts from the same codebook. VAR's usage counter
``quantize.ema_vocab_hit_SV`` (K, V) is checked against the scale count and dropped.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from hart.common.errors import UserError
from hart.common.fs import prepare_out_dir
from hart.common.io import key_mismatch
from hart.common.models import write_models
from tokenizer.config import PATCH_NUMS

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
CODEBOOK = "quantize.embedding.weight"
USAGE_BUFFER = "quantize.ema_vocab_hit_SV"
GENERATOR_BUFFERS = ("lvl_1L", "attn_bias_for_masking")  # recomputed from the config


# ----------------------------------------------------------------------------- reading

ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")  # torch colours some of its messages


def check_checkpoint_file(path) -> Path:
    """``path`` as a Path, or one line when it is a folder or does not exist (before anything is made)."""
    path = Path(path)
    if path.is_dir():
        near = [*path.glob("*"), *path.glob("*/*")]  # two levels: a release folder's tokenizer/ file
        inside = sorted(str(p.relative_to(path)) for p in near
                        if p.suffix in (*PICKLE_SUFFIXES, ".safetensors") and p.is_file())[:3]
        raise UserError(f"{path} is a folder, not a checkpoint file"
                        + (f" (it holds {', '.join(inside)}: give the file)" if inside else ""))
    if not path.is_file():
        raise UserError(f"no such checkpoint file: {path}")
    return path


def read_checkpoint(path, skip=()) -> dict:
    """A checkpoint file -> flat {name: tensor}, without ever running pickled code.

    A training checkpoint that nests the weights under one of ``state_dict`` / ``model`` /
    ``module``, or VAR's own (``ar-ckpt-*.pth``: ``trainer`` -> ``var_wo_ddp``), is unwrapped,
    and the ``module.`` (DDP) or ``_orig_mod.`` (torch.compile) prefix that every name of a
    saved wrapper carries is dropped. Names in ``skip`` come back as shape-only ``meta`` tensors and are
    never read into memory (pickles are memory-mapped; safetensors read only what is kept).
    """
    path = check_checkpoint_file(path)
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
            if "Unsupported global" not in str(e):  # truncated, garbled, empty, or not a checkpoint at all
                raise UserError(f"cannot read {path}: it is damaged or not a PyTorch checkpoint "
                                f"({_load_failure(e)}); download or save it again") from None
            raise UserError(
                f"refusing to load {path}: it is not a plain-tensor checkpoint and unpickling it could run "
                f"code ({_load_failure(e)}); re-save its state_dict or convert it to .safetensors"
            ) from None
    else:
        raise UserError(f"{path}: unknown checkpoint type {path.suffix!r}; expected .pth, .pt, .bin, .ckpt or .safetensors")
    while isinstance(state, dict) and not any(torch.is_tensor(v) for v in state.values()):
        inner = [k for k in ("state_dict", "model", "module", "trainer", "var_wo_ddp") if isinstance(state.get(k), dict)]
        if not inner:
            break
        state = state[inner[0]]
    if not isinstance(state, dict) or not state:
        raise UserError(f"{path} holds no state dict (found {type(state).__name__})")
    for prefix in ("module.", "_orig_mod."):  # a DDP- or compile-wrapped model saved whole
        if all(isinstance(k, str) and k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    bad = sorted(k for k, v in state.items() if not torch.is_tensor(v))
    if bad:
        raise UserError(f"{path}: entries that are not tensors: {', '.join(map(str, bad[:6]))}")
    return {k: torch.empty(v.shape, device="meta") if k in skip else v for k, v in state.items()}


def _first_line(e: Exception) -> str:
    text = ANSI_COLOUR.sub("", str(e)).strip()
    line = text.splitlines()[0] if text else ""
    if not line:
        return type(e).__name__
    return f"{type(e).__name__}: {line}" if len(line) < 12 else line


def _load_failure(e: Exception) -> str:
    """Why torch's weights-only load refused a file ("Unsupported global: GLOBAL argparse.Namespace",
    "Unsupported operand 148"), without torch's advice to load it unsafely; else its first line."""
    text = ANSI_COLOUR.sub("", str(e))
    found = re.search(r"Unsupported (global: \S+ \S+|operand \S+)", text)
    return found.group(0) if found else _first_line(e)


def looks_like(state: dict) -> str:
    """What a checkpoint's names say it is, as advice on the command that reads it ("" unknown)."""
    keys = set(state)
    if any(k.startswith(("vae.", "disc.")) for k in keys):
        return "it looks like HART's tokenizer checkpoint: convert it with hart convert hart-tokenizer --ckpt"
    if any(k.startswith(("context_embed", "context_norm")) for k in keys):
        return "it looks like HART's transformer: convert the release folder with hart convert hart --ckpt"
    if "class_emb.weight" in keys and any(k.startswith("blocks.") for k in keys):
        return "it looks like a VAR transformer: give it as --var (swapped with --vae?)"
    if "encoder.conv_in.weight" in keys and "quantize.embedding.weight" in keys:
        return "it looks like VAR's tokenizer: give it as --vae (swapped with --var?)"
    return ""


def need_tensor(state: dict, key: str, what: str, path) -> torch.Tensor:
    if key not in state:
        hint = looks_like(state)
        head = ", ".join(sorted(state)[:4])
        raise UserError(f"{path} is not {what}: it has no {key} "
                        + (f"({hint})" if hint else f"(its keys start with: {head})"))
    return state[key]


def block_indices(state: dict, pattern: str) -> list[int]:
    """Sorted distinct integers captured by ``pattern`` (a regex with one group) over the keys."""
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in state if (m := rx.match(k))})


def check_keys(expected: dict, found: dict, optional: set, path, what: str) -> None:
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
    conv_in = need_tensor(state, "encoder.conv_in.weight", what, path)
    emb = need_tensor(state, CODEBOOK, what, path)
    quant = need_tensor(state, "quant_conv.weight", what, path)
    ch, in_ch = conv_in.shape[:2]
    levels = block_indices(state, r"encoder\.down\.(\d+)\.")
    blocks = block_indices(state, r"encoder\.down\.0\.block\.(\d+)\.")
    if not levels or not blocks:
        raise UserError(f"{path} is not {what}: no encoder.down.*.block.* tensors")
    mult = []
    for i in levels:
        w = need_tensor(state, f"encoder.down.{i}.block.0.conv2.weight", what, path)
        if w.shape[0] % ch:
            raise UserError(f"{path}: encoder level {i} has {w.shape[0]} channels, not a multiple of ch {ch}")
        mult.append(w.shape[0] // ch)
    num_phi = len(block_indices(state, r"quantize\.quant_resi\.qresi_ls\.(\d+)\.weight"))
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
    check_keys(official_tokenizer_shapes(model), state, {USAGE_BUFFER}, path, "VAR/HART tokenizer")
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


# ----------------------------------------------------------------------------- generator

def generator_config_from_state(state: dict, path, patch_nums=None):
    """Read the VAR transformer's sizes off its state dict; the schedule comes from pos_1LC."""
    from hart.config import GeneratorConfig

    what = "a VAR transformer"
    if any(k.startswith("shared_ada_lin.") for k in state):
        raise UserError(f"{path}: shared AdaLN (shared_aln=True) VAR models are not supported; the released ones do not use it")
    cls_emb = need_tensor(state, "class_emb.weight", what, path)
    pos = need_tensor(state, "pos_1LC", what, path)
    word = need_tensor(state, "word_embed.weight", what, path)
    head = need_tensor(state, "head.weight", what, path)
    depth = len(block_indices(state, r"blocks\.(\d+)\."))
    if depth == 0:
        raise UserError(f"{path} is not {what}: no blocks.* tensors")
    C = int(cls_emb.shape[1])
    scale_mul = state.get("blocks.0.attn.scale_mul_1H11")
    l2 = scale_mul is not None
    heads = int(scale_mul.shape[1]) if l2 else max(C // 64, 1)
    fc1 = need_tensor(state, "blocks.0.ffn.fc1.weight", what, path)
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
    check_keys(expected, state, set(recomputed), path, "VAR transformer")
    for k in recomputed:  # derived buffers: accept them only when they say what ours say
        if k in state:
            found = state[k]
            if tuple(found.shape) != tuple(ours[k].shape) or not torch.equal(found.to(ours[k].dtype), ours[k]):
                raise UserError(f"{path}: buffer {k} differs from the one the inferred schedule gives; pass --patch-nums")
    model.load_state_dict({**{k: v.float() for k, v in state.items() if k in expected},
                           **{k: ours[k] for k in recomputed}}, strict=True)
    return model.eval()


# ----------------------------------------------------------------------------- writing

def convert_var(vae, out, var=None, resolution: int | None = None, patch_nums=None, overwrite: bool = False) -> Path:
    """VAR's tokenizer (+ optional transformer) -> a tokenizer folder, or a full model folder.

    The scale schedule: ``patch_nums``, else the one ``var``'s position table fixes, else the
    published one of ``resolution`` (256 when None); a ``resolution`` or ``patch_nums`` that
    ``var``'s table contradicts is one line naming the flag."""
    for f in (vae, var):
        if f is not None:
            check_checkpoint_file(f)
    out = prepare_out_dir(out, overwrite, sources=(vae, var))
    var_state = read_checkpoint(var) if var is not None else None
    if var_state is not None and "pos_1LC" in var_state:
        L = int(var_state["pos_1LC"].shape[1])
        fixed = generator_config_from_state(var_state, var).patch_nums
        if patch_nums is not None and sum(p * p for p in patch_nums) != L:
            raise UserError(f"--patch-nums {','.join(map(str, patch_nums))} has {sum(p * p for p in patch_nums)} "
                            f"positions; {var}'s position table has {L} (the schedule {','.join(map(str, fixed))})")
        if resolution is not None and patch_nums is None and published_schedule(resolution) != tuple(fixed):
            raise UserError(f"--resolution {resolution} asks for the schedule {','.join(map(str, published_schedule(resolution)))}; "
                            f"{var}'s position table fixes {','.join(map(str, fixed))}: drop --resolution")
        patch_nums = patch_nums or fixed
    pns = tuple(patch_nums) if patch_nums else published_schedule(256 if resolution is None else resolution)
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


def published_schedule(resolution: int) -> tuple:
    if resolution not in PATCH_NUMS:
        raise UserError(
            f"no published scale schedule for --resolution {resolution}; use one of "
            f"{', '.join(map(str, PATCH_NUMS))} or pass --patch-nums"
        )
    return PATCH_NUMS[resolution]
