"""HART generator, plus the project's plumbing leaves (io, data, errors, ema) and the CLI.

``from hart import HARTGenerator`` is resolved lazily so that the plumbing leaves can be
imported by the tokenizer without pulling in the generator.
"""


def __getattr__(name):
    if name in ("HARTGenerator", "GeneratorConfig"):
        from hart import config, model

        return {"HARTGenerator": getattr(model, "HARTGenerator", None),
                "GeneratorConfig": config.GeneratorConfig}[name]
    raise AttributeError(f"module 'hart' has no attribute {name!r}")
