"""Inference: static KV cache sampler, fused kernels, one pipeline (condition -> image).

``from sampling import HARTPipeline`` is the entry point for the CLI, the demo and FID;
:class:`HARTDiffusionPipeline` is the same engine as a diffusers ``DiffusionPipeline``.
"""
from sampling.engine import SampleOutput, SamplingEngine
from sampling.options import SamplingOptions
from sampling.pipeline import HARTPipeline, default_model_dir
from sampling.diffusers_pipeline import HARTDiffusionPipeline  # also registers it with diffusers

__all__ = ["HARTPipeline", "HARTDiffusionPipeline", "SamplingEngine", "SamplingOptions", "SampleOutput",
           "default_model_dir"]
