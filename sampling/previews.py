"""Sample grids while a generator trains: what ``hart train`` draws its per-class grids with.

The trainer (``hart.train``) sits a layer below sampling, so it cannot import the engine; the
``hart`` router hands it :func:`sample_images` instead (``hart.cli.WIRING``).
"""
from __future__ import annotations

import torch

from sampling.engine import SamplingEngine
from sampling.seeds import make_generators
from sampling.options import SamplingOptions, model_options


@torch.no_grad()
def sample_images(generator, tokenizer, inputs, seeds, options: SamplingOptions | None = None) -> torch.Tensor:
    """(B, 3, R, R) images in [-1, 1], image i from ``seeds[i]``, with the model's own sampling
    preset (:func:`sampling.options.model_options`: ``hart`` for a fine-tuned HART release, else
    the default); ``inputs``: class ids, or a text model's encoded prompts (tokens, mask).
    ``generator`` and ``tokenizer`` are used as they are (the caller puts them in eval mode
    and frees the generator's cache afterwards)."""
    engine = SamplingEngine(generator, tokenizer)
    opts = options or model_options(generator.config)
    inputs = inputs if isinstance(inputs, tuple) else list(inputs)
    return engine.sample(inputs, make_generators(seeds), opts).images
