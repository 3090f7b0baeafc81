"""Files that are never half-written: configs, weights (fp32 / fp16 / int8 / int4), training state.

A model folder holds ``config.json`` + ``model.safetensors`` (the models' ``from_pretrained``
/ ``save_pretrained`` are in :mod:`hart.common.models`). Every file is written to a
temp name and renamed into place, so a kill mid-write leaves the previous file intact.
Whole folders (training state) go through :func:`atomic_dir`: written to a sibling temp
folder, then swapped in with two renames; a kill between them leaves ``<dir>.old``, which
:func:`resolve_dir` picks up. Never a half-written checkpoint.

A write that fails (a full disk, a read-only folder) leaves no temp file behind and is raised
as an :class:`OSError` naming the file it was for, also where the writer wraps the OS error in
its own type (safetensors' ``SafetensorError``, ``torch.save``'s ``RuntimeError: unexpected
pos``): the CLI turns it into one line (:func:`hart.common.errors.cli_entry`).

Training state that safetensors cannot hold (optimizer state, RNG states) is written with
``torch.save`` and always read back with ``weights_only=True``, so loading a checkpoint
can never run code.

Plumbing leaf: imports nothing else of the project except :mod:`hart.common.errors` and
:mod:`hart.common.fs`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import shutil
import typing
import uuid
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hart.common.errors import UserError, is_disk_full
from hart.common.fs import CONFIG_NAME

WEIGHTS_NAME = "model.safetensors"


# ----------------------------------------------------------------------------- configs

class ConfigBase:
    """Mixin for dataclass configs: presets, JSON round trip, validation hook.

    Subclasses define ``PRESETS: dict[str, dict]`` (class attribute) of field overrides.
    """

    PRESETS: typing.ClassVar[dict] = {}
    KIND: typing.ClassVar[str] = "model"

    @classmethod
    def from_name(cls, name: str, **overrides):
        if name not in cls.PRESETS:
            raise UserError(
                f"unknown {cls.KIND} preset {name!r}; choose one of: {', '.join(cls.PRESETS)}"
            )
        return cls(**{**cls.PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise UserError(f"{cls.KIND} config has unknown fields {unknown}: written by another version?")
        kw = {}
        hints = typing.get_type_hints(cls)
        for k, v in d.items():
            origin = typing.get_origin(hints.get(k))
            kw[k] = tuple(v) if origin is tuple and isinstance(v, list) else v
        try:
            return cls(**kw)
        except UserError:
            raise
        except (TypeError, ValueError, AttributeError, KeyError, IndexError, ZeroDivisionError) as e:
            # a hand-edited or damaged config.json: a field of the wrong type or shape
            raise UserError(f"{cls.KIND} config has a value of the wrong type or shape ({e}); the file was "
                            "edited or damaged: restore it from a copy, or write it again from its source "
                            "(hart train, hart export of the run it came from)") from None

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)


# ----------------------------------------------------------------------------- atomic folders

def resolve_dir(path) -> Path:
    """The folder to read: ``path``, or ``path.old`` left by a swap that was interrupted."""
    path = Path(path)
    if path.is_dir():
        return path
    old = path.with_name(path.name + ".old")
    if old.is_dir():
        return old
    if path.exists():
        raise UserError(f"{path} is a file; a folder was expected here (a model, run or token cache folder)")
    raise UserError(f"no such folder: {path}")


def component_dir(folder, name: str) -> Path:
    """The folder of one model: ``folder/name`` of a model folder (tokenizer/ + generator/), or
    ``folder`` itself; ``.old`` folders of an interrupted swap are followed."""
    folder = resolve_dir(folder)
    if (folder / CONFIG_NAME).is_file():  # the model itself, whatever its subfolders
        return folder
    return resolve_dir(folder / name) if (folder / name).exists() or (folder / f"{name}.old").exists() else folder


def _write_fault(e: BaseException, tmp: Path, path: Path) -> OSError | None:
    """A failed write under the temp name ``tmp`` as an OSError naming ``path``, the name the
    user knows; None when ``e`` is no fault of the file system."""
    def known(name):
        if name is not None and str(name) == str(tmp):
            return str(path)
        if name is not None and str(name).startswith(str(tmp) + os.sep):  # a file inside a temp folder
            return str(path / Path(name).relative_to(tmp))
        return name

    if isinstance(e, OSError) and e.errno is not None:
        name, name2 = known(e.filename), known(e.filename2)
        # the errno's subclass (PermissionError...); a write with no file named is one to path
        return OSError(e.errno, e.strerror, str(path) if name is None else name, None, name2)
    if is_disk_full(e):  # a writer's own wrapper around ENOSPC
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return None


def swap_in(src: Path, path: Path) -> None:
    """Put the file or folder ``src`` (on the same file system) at ``path``, replacing what is
    there: its files made durable first, a file by one rename, a folder by two (the old one
    kept as ``path.old`` until the new one is in place, which :func:`resolve_dir` follows)."""
    src, path = Path(src), Path(path)
    for f in ([src] if src.is_file() else src.iterdir()):  # the bytes durable before the rename publishes them
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    if src.is_file():
        if path.is_dir():
            shutil.rmtree(path)
        os.replace(src, path)
        return
    old = path.with_name(path.name + ".old")
    if path.exists():
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
        os.replace(path, old)
    os.replace(src, path)
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    elif old.exists():
        old.unlink()


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temp folder; on success it replaces ``path`` atomically (see module doc)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        swap_in(tmp, path)
    except Exception as e:
        fault = _write_fault(e, tmp, path)
        if fault is None:
            raise
        raise fault from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path):
    """Yield a temp path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except Exception as e:
        fault = _write_fault(e, tmp, path)
        if fault is None:
            raise
        raise fault from e
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path, obj) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def read_json(path, expect: type = dict):
    """The JSON value of ``path``, which must be an ``expect`` (a dict unless told); one line when
    the file is missing, not UTF-8 JSON, or holds another kind of value."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"missing {Path(path).name} in {Path(path).parent}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); the file is damaged: restore or rewrite it") from None
    if not isinstance(value, expect):
        raise UserError(f"{path} holds a JSON {type(value).__name__}, not the {expect.__name__} it should; "
                        "the file is damaged: restore or rewrite it")
    return value


# ----------------------------------------------------------------------------- weights

def _contiguous_state(state: dict) -> dict:
    # safetensors refuses shared or non-contiguous storage
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def _shape(v) -> tuple:
    return tuple(v.shape) if hasattr(v, "shape") else tuple(v)


def key_mismatch(expected: dict, found: dict, optional=(), shape_label: str = "shape differs",
                 limit: int = 6) -> list[str]:
    """Message parts naming the keys missing from ``found``, unexpected in it (``optional``
    ones aside) and of another shape; empty when all match. Values are tensors or shapes."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected) - set(optional))
    reshaped = sorted(
        f"{k} {_shape(found[k])} (expected {_shape(expected[k])})"
        for k in set(expected) & set(found) if _shape(found[k]) != _shape(expected[k])
    )

    def fmt(label, items):
        more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
        return f"{label}: {', '.join(items[:limit])}{more}"

    return [fmt(n, i) for n, i in (("missing", missing), ("unexpected", unexpected), (shape_label, reshaped)) if i]


def check_state_matches(expected: dict, found: dict, where: str) -> None:
    """Raise one :class:`UserError` naming the keys that are missing, unexpected or reshaped."""
    parts = key_mismatch(expected, found)
    if parts:
        raise UserError(f"weights in {where} do not match its config; " + "; ".join(parts))


# ----------------------------------------------------------------------------- storage precision
#
# Weights are stored in fp32 unless a smaller file is wanted (a model shipped inside the
# package): "fp16" halves every floating tensor; "int8" stores each large weight matrix or
# conv kernel as int8 with one fp32 scale per output row (symmetric, absmax / 127) and the
# rest in fp16; "int4" stores each large 2-D weight matrix (the Linear layers) in groups of
# 32 along its input dimension, 4 bits each with an fp16 scale and minimum per group
# (asymmetric: (max - min) / 15), two values per byte, and everything else as int8 does
# (conv kernels int8, small tensors fp16). Loading restores fp32 tensors; the storage is
# named in the file's metadata.

STORAGES = ("fp32", "fp16", "int8", "int4")
_SCALE = ".int8_scale"
_INT8_MIN_NUMEL = 4096  # smaller tensors (norms, biases, embeddings of a few rows) stay fp16
_INT4_GROUP = 32
_INT4 = (".int4_scale", ".int4_min")


def _large_weight(k: str, v: torch.Tensor) -> bool:
    return k.endswith(".weight") and v.ndim >= 2 and v.numel() >= _INT8_MIN_NUMEL and bool(torch.isfinite(v).all())


def pack_int4(v: torch.Tensor) -> dict:
    """(rows, cols) float, cols % 32 == 0 -> {"": packed uint8 (rows, cols / 2), ".int4_scale",
    ".int4_min": fp16 (rows, cols / 32)}."""
    rows = v.float().reshape(v.shape[0], -1, _INT4_GROUP)  # (R, G, 32)
    lo, hi = rows.amin(-1), rows.amax(-1)
    lo16 = lo.half()
    scale16 = ((hi - lo16.float()) / 15.0).half().clamp_min(6e-8)  # > 0 in fp16 (a constant group: any code is lo)
    q = ((rows - lo16.float()[..., None]) / scale16.float()[..., None]).round().clamp(0, 15).to(torch.uint8)
    q = q.reshape(v.shape[0], -1)
    packed = (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()
    return {"": packed, ".int4_scale": scale16.contiguous(), ".int4_min": lo16.contiguous()}


def unpack_int4(packed: torch.Tensor, scale: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: the fp32 (rows, 2 * packed columns) matrix."""
    q = torch.stack([packed & 15, packed >> 4], dim=-1).reshape(packed.shape[0], -1, _INT4_GROUP).float()
    return (q * scale.float()[..., None] + lo.float()[..., None]).reshape(packed.shape[0], -1)


def pack_state(state: dict, storage: str = "fp32") -> dict:
    """{name: tensor} -> the tensors to write for ``storage`` (see above)."""
    if storage not in STORAGES:
        raise UserError(f"unknown weight storage {storage!r}; choose one of: {', '.join(STORAGES)}")
    out = {}
    for k, v in _contiguous_state(state).items():
        if storage == "fp32" or not v.is_floating_point():
            out[k] = v
        elif storage == "int4" and v.ndim == 2 and v.shape[1] % _INT4_GROUP == 0 and _large_weight(k, v):
            out.update({k + suffix: t for suffix, t in pack_int4(v).items()})
        elif storage in ("int8", "int4") and _large_weight(k, v):
            rows = v.float().reshape(v.shape[0], -1)
            scale = rows.abs().amax(1).clamp_min(1e-12) / 127.0  # (rows,)
            out[k] = (rows / scale[:, None]).round().clamp(-127, 127).to(torch.int8).view(v.shape).contiguous()
            out[k + _SCALE] = scale.contiguous()
        else:
            out[k] = v.half()
    return out


def unpack_state(tensors: dict) -> dict:
    """Inverse of :func:`pack_state`: fp32 tensors under the module's names."""
    out = {}
    for k, v in tensors.items():
        if k.endswith(_SCALE) or k.endswith(_INT4):
            continue
        if k + _INT4[0] in tensors:
            v = unpack_int4(v, *(tensors[k + suffix] for suffix in _INT4))
        elif k + _SCALE in tensors:
            scale = tensors[k + _SCALE].float()
            v = v.float() * scale.view(-1, *([1] * (v.ndim - 1)))
        elif v.dtype in (torch.float16, torch.bfloat16):
            v = v.float()
        out[k] = v
    return out


def save_weights(module: torch.nn.Module, path, storage: str = "fp32") -> None:
    tensors = pack_state(module.state_dict(), storage)
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata={"storage": storage})


def read_weights(path) -> dict:
    """The fp32 tensors of a weights file (any storage), with one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing weights file {path}")
    try:
        return unpack_state(load_file(str(path)))
    except Exception as e:  # safetensors raises its own error types
        raise UserError(f"cannot read {path}: {e}") from None


def load_weights(module: torch.nn.Module, path) -> None:
    """Load safetensors into ``module`` strictly, with one-line errors on any mismatch."""
    path = Path(path)
    state = read_weights(path)
    check_state_matches(module.state_dict(), state, str(path.parent))
    module.load_state_dict(state, strict=True)


# ----------------------------------------------------------------------------- training state

def save_state(obj: dict, path) -> None:
    """torch.save a dict of tensors / numbers / strings (optimizer state, RNG states)."""
    with atomic_file(path) as tmp:
        torch.save(obj, str(tmp))


def load_state(path) -> dict:
    """Read what :func:`save_state` wrote. ``weights_only=True``: a file that needs more is refused."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"missing training state {path}") from None
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"refusing to load {path}: it is not a plain-tensor checkpoint ({first})") from None


# ----------------------------------------------------------------------------- model folders
