"""Inference: static KV cache, sampler, fused kernels, pipeline, FID (not built yet)."""
