"""HART generator, plus the project's plumbing leaves (io, data, dist, ema, errors, images,
training) and the ``hart`` CLI.

``from hart import HARTGenerator`` is resolved lazily so that the plumbing leaves can be
imported by the tokenizer without pulling in the generator.
"""


def __getattr__(name):
    if name == "HARTGenerator":
        from hart.model import HARTGenerator

        return HARTGenerator
    if name == "GeneratorConfig":
        from hart.config import GeneratorConfig

        return GeneratorConfig
    raise AttributeError(f"module 'hart' has no attribute {name!r}")
