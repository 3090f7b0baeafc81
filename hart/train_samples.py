"""The fixed-seed sample grid a generator run shows while it trains (``DIR/samples.png`` and
TensorBoard): one labelled row per class, or per example prompt of a text model. Used by
:mod:`hart.train`; the sampler that draws it lives a layer above and is handed in.
"""
from __future__ import annotations

from pathlib import Path

import torch

from hart.common.images import grid
from hart.common.io import atomic_file
from hart.common.metrics import RunLog
from hart.model import HARTGenerator
from tokenizer import HybridTokenizer

SAMPLE_ROWS = 10  # classes in the sample grid (evenly spread when there are more)
SAMPLE_COLS = 4  # images per class: seeds 0..3, the same at every grid


def sample_grid(sampler, generator: HARTGenerator, tokenizer: HybridTokenizer, encoder=None):
    """A PIL grid: one labelled row per class (at most :data:`SAMPLE_ROWS`), seeds 0..3; for a
    text model one row per example prompt (``config.display.example_prompts``, encoded by ``encoder``).

    ``sampler(generator, tokenizer, inputs, seeds)`` returns (B, 3, R, R) images in [-1, 1]
    (:func:`sampling.previews.sample_images`, handed in by the ``hart`` router); ``inputs``
    are class ids, or the encoded prompts (tokens, mask)."""
    c = generator.config
    if c.is_text:
        prompts = list(c.display.example_prompts)[:SAMPLE_ROWS]
        inputs = encoder.encode([p for p in prompts for _ in range(SAMPLE_COLS)], warn=False)
        seeds = [j for _ in prompts for j in range(SAMPLE_COLS)]
        images = sampler(generator, tokenizer, inputs, seeds).float().cpu()
        return grid([images[i * SAMPLE_COLS:(i + 1) * SAMPLE_COLS] for i in range(len(prompts))],
                    prompts, scale=max(1, 64 // tokenizer.config.resolution))
    n = c.num_classes
    if n <= SAMPLE_ROWS:
        rows = list(range(n))
    else:
        rows = [round(i * (n - 1) / (SAMPLE_ROWS - 1)) for i in range(SAMPLE_ROWS)]
    ids = [k for k in rows for _ in range(SAMPLE_COLS)]
    seeds = [j for _ in rows for j in range(SAMPLE_COLS)]
    images = sampler(generator, tokenizer, ids, seeds).float().cpu()
    return grid([images[i * SAMPLE_COLS:(i + 1) * SAMPLE_COLS] for i in range(len(rows))],
                [c.class_label(k) for k in rows], scale=max(1, 64 // tokenizer.config.resolution))


@torch.no_grad()
def write_samples(sampler, generator: HARTGenerator, tokenizer: HybridTokenizer, out: Path, log: RunLog,
                  step: int, encoder=None) -> None:
    """The fixed-seed grid of the EMA generator to TensorBoard and ``out/samples.png``."""
    was_training = generator.training
    try:
        image = sample_grid(sampler, generator.eval(), tokenizer, encoder)
    finally:
        generator.clear_caches()  # the sampler's KV cache: no memory held between grids
        generator.train(was_training)
    log.image("samples", image, step)
    with atomic_file(out / "samples.png") as tmp:
        image.save(tmp, format="PNG")
