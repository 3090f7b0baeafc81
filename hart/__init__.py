"""HART generator (model, config, residual diffusion head, training, converters) and the
``hart`` CLI; the plumbing leaves live in :mod:`hart.common`.

``from hart import HARTGenerator`` is resolved lazily, so ``import hart.common.io`` (which
runs this file first) stays cheap and never imports the generator or the tokenizer. ``import hart`` also lets diffusers'
``DiffusionPipeline.from_pretrained`` find ``HARTDiffusionPipeline`` (:mod:`hart.registry`).
"""
from hart.registry import install as _install_diffusers_registry

_install_diffusers_registry()


def __getattr__(name):
    if name == "HARTGenerator":
        from hart.model import HARTGenerator

        return HARTGenerator
    if name == "GeneratorConfig":
        from hart.config import GeneratorConfig

        return GeneratorConfig
    raise AttributeError(f"module 'hart' has no attribute {name!r}")
