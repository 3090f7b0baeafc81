"""Inference: static KV cache sampler, fused kernels, one pipeline (condition -> image).

``from sampling import HARTPipeline`` is the entry point for the CLI, the demo and FID.
"""
from sampling.engine import SampleOutput, SamplingEngine
from sampling.options import SamplingOptions
from sampling.pipeline import HARTPipeline

__all__ = ["HARTPipeline", "SamplingEngine", "SamplingOptions", "SampleOutput"]
