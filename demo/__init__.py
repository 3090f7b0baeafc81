"""Gradio demo on sampling's pipeline: the per-scale view of next-scale prediction.

    hart demo --model runs/fm          # or: python -m demo --model runs/fm

``build_demo(pipeline)`` returns the ``gr.Blocks`` without launching it. Gradio is imported
only when it is called, so ``import demo`` stays cheap.
"""
from __future__ import annotations

__all__ = ["build_demo"]


def build_demo(pipeline, **kwargs):
    """The Gradio app on a :class:`sampling.HARTPipeline`, not launched (see :func:`demo.app.build_demo`)."""
    from demo.app import build_demo as _build

    return _build(pipeline, **kwargs)
