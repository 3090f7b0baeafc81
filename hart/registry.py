"""``import hart`` lets diffusers' ``DiffusionPipeline.from_pretrained(folder)`` find HART's pipeline.

    import hart
    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained("runs/fm")     # model_index.json: HARTDiffusionPipeline

diffusers resolves the pipeline class that ``model_index.json`` names with
``getattr(diffusers, name)``. The class lives in :mod:`sampling.diffusers_pipeline`, a layer
above this package, and importing it (or diffusers) takes seconds, which ``hart --help`` and
``import hart.common.io`` must not pay. So ``import hart`` only arranges for the name to be
found: once diffusers is imported (now, or later through a one-shot import hook), its lazy
module's table of names gets ``HARTDiffusionPipeline`` -> a stand-in submodule
``diffusers.hart_pipelines`` whose attribute access imports the real class. Nothing of the
project is imported until diffusers asks for the name; the components' modules
(``hart.model``, ``tokenizer.model``) are imported with it, before diffusers loads them.

Imports only the standard library, by design.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types

PIPELINE_MODULE, PIPELINE_CLASS = "sampling.diffusers_pipeline", "HARTDiffusionPipeline"
STANDIN = "hart_pipelines"  # diffusers.hart_pipelines, a module that exists only in sys.modules


def _standin_getattr(name: str):
    if name == PIPELINE_CLASS:
        return getattr(importlib.import_module(PIPELINE_MODULE), name)
    raise AttributeError(f"module 'diffusers.{STANDIN}' has no attribute {name!r}")


def register(diffusers_module) -> bool:
    """Make ``getattr(diffusers_module, "HARTDiffusionPipeline")`` import and return the class.
    False when diffusers is not the lazy module this relies on (then ``import sampling``
    registers the class itself)."""
    table = getattr(diffusers_module, "_class_to_module", None)
    if not isinstance(table, dict):
        return False
    name = f"{diffusers_module.__name__}.{STANDIN}"
    if name not in sys.modules:
        standin = types.ModuleType(name, "stand-in: imports sampling.diffusers_pipeline on first use")
        standin.__getattr__ = _standin_getattr
        sys.modules[name] = standin
    table.setdefault(PIPELINE_CLASS, STANDIN)
    return True


class _AfterDiffusersImport(importlib.abc.MetaPathFinder):
    """One-shot: finds diffusers with the other finders and registers once its ``__init__`` ran."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "diffusers":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            register(sys.modules.get(fullname, module))  # diffusers swaps in its lazy module

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Register now if diffusers is imported, else when it is (called by ``hart/__init__``)."""
    if "diffusers" in sys.modules:
        register(sys.modules["diffusers"])
    elif not any(isinstance(f, _AfterDiffusersImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterDiffusersImport())
