"""The base of the project's models: a diffusers ``ModelMixin`` + ``ConfigMixin``.

``HybridTokenizer`` and ``HARTGenerator`` subclass :class:`HARTModelMixin`, so diffusers
takes them as pipeline components (``DiffusionPipeline.from_pretrained`` loads a component
whose class subclasses ``ModelMixin`` from a module the caller has imported), and ``.dtype``,
``.device``, ``.to()``, ``num_parameters()``, CPU-offload hooks come from diffusers.

What stays the project's own (:class:`hart.common.io.PretrainedMixin`, first in the MRO):
``from_pretrained`` / ``save_pretrained`` keep the folder layout every saved model has
(``config.json`` with a ``_class`` key + ``model.safetensors``), write each file atomically,
load int8 / int4 / fp16 storage (``hart export``) back to fp32, never unpickle, and refuse a
config or state dict that does not match in one line naming the key. They take the keyword
arguments diffusers' pipeline loader and saver pass a component
(:func:`hart.common.io.check_hub_kwargs`).

The config stays a dataclass (``model.config.width``); diffusers' copy of it (the
``ConfigMixin`` state, a frozen dict of the same fields) is kept in step by the setter, so
``register_to_config`` is called with the dataclass's fields, nested sections as dicts.
``__init__`` takes the dataclass, or its fields as a dict or keyword arguments (what
``from_config`` passes).
"""
from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin

from hart.common.io import CONFIG_NAME, PretrainedMixin


class HARTModelMixin(PretrainedMixin, ModelMixin, ConfigMixin):
    """See the module doc. Subclasses set ``config_class`` (a :class:`hart.common.io.ConfigBase`)."""

    config_name = CONFIG_NAME

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
