"""Model folders, and the base of the project's models: a diffusers ``ModelMixin`` + ``ConfigMixin``.

``HybridTokenizer`` and ``HARTGenerator`` subclass :class:`HARTModelMixin`, so diffusers
takes them as pipeline components (``DiffusionPipeline.from_pretrained`` loads a component
whose class subclasses ``ModelMixin`` from a module the caller has imported), and ``.dtype``,
``.device``, ``.to()``, ``num_parameters()``, CPU-offload hooks come from diffusers.

What stays the project's own (this module):
``from_pretrained`` / ``save_pretrained`` keep the folder layout every saved model has
(``config.json`` with a ``_class`` key + ``model.safetensors``), write each file atomically,
load int8 / int4 / fp16 storage (``hart export``) back to fp32, never unpickle, and refuse a
config or state dict that does not match in one line naming the key. They take the keyword
arguments diffusers' pipeline loader and saver pass a component (:func:`check_hub_kwargs`).
A folder with ``tokenizer/`` and ``generator/`` is also a pipeline folder: :func:`write_models`
adds its ``model_index.json``.

The config stays a dataclass (``model.config.width``); diffusers' copy of it (the
``ConfigMixin`` state, a frozen dict of the same fields) is kept in step by the setter, so
``register_to_config`` is called with the dataclass's fields, nested sections as dicts.
``__init__`` takes the dataclass, or its fields as a dict or keyword arguments (what
``from_config`` passes).
"""
from __future__ import annotations

import typing
from pathlib import Path

import torch
from diffusers import ConfigMixin, ModelMixin

from hart.common.errors import UserError
from hart.common.io import (CONFIG_NAME, WEIGHTS_NAME, atomic_dir, load_weights, read_json, resolve_dir, save_weights,
                            write_json)


class HARTModelMixin(ModelMixin, ConfigMixin):
    """See the module doc. Subclasses set ``config_class`` (a :class:`hart.common.io.ConfigBase`)."""

    config_name = CONFIG_NAME
    config_class: typing.ClassVar[type]

    def __init__(self, config=None, **fields):
        super().__init__()
        if config is None or isinstance(config, dict):
            config = self.config_class.from_dict({**(config or {}), **fields})
        elif fields:
            config = config.replace(**fields)
        self.config = config

    def __getattr__(self, name: str):
        # nn.Module's lookup only: diffusers' would answer a config field (``head``) before a
        # submodule of the same name
        return torch.nn.Module.__getattr__(self, name)

    @property
    def config(self):
        """The model's config dataclass."""
        return self.__dict__["_hart_config"]

    @config.setter
    def config(self, config) -> None:
        self.__dict__["_hart_config"] = config
        self.__dict__.pop("_internal_dict", None)
        self.register_to_config(**config.to_dict())

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """A fresh (randomly initialised) model of ``config``: the dataclass, its dict, or a
        diffusers config (its ``_``-keys ignored)."""
        if isinstance(config, dict):
            config = cls.config_class.from_dict({k: v for k, v in config.items() if not k.startswith("_")})
        model = cls(config, **kwargs)
        return (model, {}) if return_unused_kwargs else model

    def save_pretrained(self, path, storage: str = "fp32", **hub_kwargs) -> None:
        """Write ``config.json`` + ``model.safetensors`` into ``path``, each file atomically.

        Weights go first: re-saving a model of the same config (every training checkpoint)
        leaves a loadable pair at every instant. ``storage``: see :func:`hart.common.io.pack_state`.
        ``hub_kwargs``: what ``DiffusionPipeline.save_pretrained`` passes a component
        (:func:`check_hub_kwargs`).
        """
        check_hub_kwargs(hub_kwargs, "save")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_weights(self, path / WEIGHTS_NAME, storage)
        write_json(path / CONFIG_NAME, {"_class": type(self).__name__, **self.config.to_dict()})

    @classmethod
    def load_config(cls, path, **_):
        d = read_json(resolve_dir(path) / CONFIG_NAME)
        for k in _HUB_KEYS:  # written by diffusers' ConfigMixin.save_config
            d.pop(k, None)
        saved_class = d.pop("_class", d.pop("_class_name", cls.__name__))
        if saved_class != cls.__name__:
            raise UserError(f"{path} holds a {saved_class}, not a {cls.__name__}")
        return cls.config_class.from_dict(d)

    @classmethod
    def from_pretrained(cls, path, device="cpu", **hub_kwargs):
        """The model of ``path`` in eval mode on ``device``. ``hub_kwargs``: what
        ``DiffusionPipeline.from_pretrained`` passes a component (``torch_dtype`` is applied,
        see :func:`check_hub_kwargs`)."""
        dtype = check_hub_kwargs(hub_kwargs, "load")
        folder = resolve_dir(path)
        model = cls(cls.load_config(folder))
        weights = folder / WEIGHTS_NAME
        if not weights.is_file() and (folder / DIFFUSERS_WEIGHTS_NAME).is_file():
            weights = folder / DIFFUSERS_WEIGHTS_NAME  # written by diffusers' ModelMixin
        load_weights(model, weights)
        model = model.to(device)
        if dtype is not None:
            model = model.to(dtype)
        return model.eval()


# the keys diffusers' ConfigMixin adds to a config.json
_HUB_KEYS = ("_diffusers_version", "_name_or_path", "_use_default_values")
DIFFUSERS_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
# what DiffusionPipeline passes every component; at None / False / their default they ask
# nothing of a HART folder; the ones in _HUB_HARMLESS never do (loading is whole and eager anyway)
_HUB_DEFAULTS = {
    "load": {"device_map": None, "max_memory": None, "offload_folder": None, "offload_state_dict": None,
             "variant": None, "use_flashpack": None, "cache_dir": None, "local_files_only": None,
             "revision": None, "force_download": None, "proxies": None, "token": None, "subfolder": None,
             "quantization_config": None},
    "save": {"safe_serialization": True, "variant": None, "is_main_process": True, "push_to_hub": False,
             "max_shard_size": None},
}
_HUB_HARMLESS = {"load": ("low_cpu_mem_usage", "use_safetensors", "disable_mmap", "local_files_only"),
                 "save": ("max_shard_size",)}


def check_hub_kwargs(kw: dict, what: str):
    """The torch dtype asked for (``torch_dtype`` / ``dtype``, loading only) or None; a
    :class:`UserError` naming an option of diffusers' loaders / savers that a HART model folder
    cannot honour (a variant, a device map, pickle weights, a push to the Hub)."""
    kw = dict(kw)
    dtype = None
    if what == "load":
        dtype = kw.pop("torch_dtype", None)
        dtype = kw.pop("dtype", None) if dtype is None else dtype
    defaults = _HUB_DEFAULTS[what]
    unknown = sorted(k for k in kw if k not in defaults and k not in _HUB_HARMLESS[what])
    if unknown:
        raise UserError(f"unknown option {unknown[0]!r} for a HART model's {what}_pretrained")
    odd = sorted(k for k, v in kw.items() if k not in _HUB_HARMLESS[what]
                 and v is not None and v is not False and v != defaults[k])
    if odd:
        raise UserError(f"a HART model folder does not support {odd[0]}={kw[odd[0]]!r} "
                        "(one safetensors file, loaded whole, written in place)")
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), None) or dtype
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise UserError(f"unknown torch_dtype {dtype!r}")
    return dtype


def write_models(out, models: dict, storage: str = "fp32") -> None:
    """``models``: {subfolder ('' = out itself): HARTModelMixin module}; the whole folder is
    written aside, then swapped in (:func:`atomic_dir`)."""
    with atomic_dir(out) as tmp:
        for sub, model in models.items():
            model.save_pretrained(tmp / sub if sub else tmp, storage=storage)
        if set(models) == set(PIPELINE_COMPONENTS):
            write_pipeline_index(tmp, models)


# a folder with tokenizer/ and generator/ is also a diffusers pipeline folder (sampling.HARTDiffusionPipeline)
PIPELINE_INDEX = "model_index.json"
PIPELINE_COMPONENTS = ("tokenizer", "generator")


def write_pipeline_index(folder, models: dict) -> None:
    """Write the ``model_index.json`` that lets ``DiffusionPipeline.from_pretrained(folder)``
    load ``models`` ({component: module or its class}) as a ``HARTDiffusionPipeline``."""
    from importlib.metadata import version

    index = {"_class_name": "HARTDiffusionPipeline", "_diffusers_version": version("diffusers")}
    for name, model in sorted(models.items()):
        cls = model if isinstance(model, type) else type(model)
        index[name] = [cls.__module__, cls.__name__]
    write_json(Path(folder) / PIPELINE_INDEX, index)
