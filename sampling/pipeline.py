"""One pipeline for every caller (CLI, demo, FID): class ids or prompts + seed -> PIL images.

    from sampling import HARTPipeline
    pipe = HARTPipeline.from_pretrained("runs/fm")          # DIR/tokenizer + DIR/generator
    images = pipe(class_ids=[3, 3, 5], seed=0, cfg=1.5, top_k=900, top_p=0.96)
    t2i = HARTPipeline.from_pretrained("runs/shapes")       # a text-conditioned model
    images = t2i(prompts=["a large red circle", "two blue squares"], seed=0)

A text model's encoder (``config.text_encoder``) is loaded on first use; Qwen2 (HART's) needs
its folder: ``from_pretrained(..., text_encoder_path=PATH)``.

Image i of a call gets the seed ``seed + i`` (or ``seed[i]`` when a list is given) and its
own ``torch.Generator``, so it is the same image whether generated alone or in a batch.
"""
from __future__ import annotations

from collections.abc import Iterable

from pathlib import Path

import torch

from hart.common.errors import UserError
from hart.common.images import to_pil
from hart.common.io import resolve_dir
from hart.model import HARTGenerator
from sampling.engine import SampleOutput, SamplingEngine
from sampling.seeds import check_seeds, make_generators
from sampling.options import model_options, option_names
from tokenizer.model import HybridTokenizer

# the bundled models (package data): "default", the fm-32-h tokenizer + fm-s generator on
# Fashion-MNIST; "default-t2i", the shapes-t2i text-to-image model (MiniLM prompts)
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
DEFAULT_T2I_MODEL_DIR = Path(__file__).resolve().parent / "default_t2i_model"
BUNDLED_MODELS = ("default", "default-t2i")


def default_model_dir(name: str = "default") -> Path:
    """The folder of a bundled model (``default`` or ``default-t2i``), or a :class:`UserError`
    when it is missing."""
    d = DEFAULT_T2I_MODEL_DIR if name == "default-t2i" else DEFAULT_MODEL_DIR
    if (d / "tokenizer").is_dir() and (d / "generator").is_dir():
        return d
    raise UserError(f"the bundled {name} model is missing from {d} (a broken install?); "
                    "reinstall the package or pass --model DIR (a folder made by `hart train`)")


def model_folder(model_dir) -> Path:
    """A model folder from what a user typed: None or a bundled name (:data:`BUNDLED_MODELS`),
    else a path (one-line error when it does not exist)."""
    if model_dir is None or str(model_dir) in BUNDLED_MODELS:
        return default_model_dir(str(model_dir or "default"))
    return resolve_dir(model_dir)


def as_list(items) -> list:
    """Classes or prompts as a list: a tensor's values, one id / name / prompt, or the items."""
    if isinstance(items, torch.Tensor):
        return items.view(-1).tolist()
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        return [items]
    return list(items)


def condition_inputs(config, class_ids, prompts, text_encoder, names=("class ids", "prompts")):
    """(engine inputs, count) from exactly one of ``class_ids`` / ``prompts``, checked against
    the generator's ``config``; ``text_encoder()`` gives a text model's encoder (loaded on first
    use); ``names``: what the caller calls the two in its errors."""
    from hart.text import check_prompts

    ids_name, text_name = names
    if (class_ids is None) == (prompts is None):
        raise UserError(f"give either {ids_name} or {text_name}" if class_ids is None
                        else f"give {ids_name} or {text_name}, not both")
    if prompts is not None:
        if not config.is_text:
            raise UserError(f"this model is class-conditional: give it {ids_name}, not {text_name}")
        prompts = check_prompts(prompts)  # before the encoder loads: a bad prompt is one line at once
        enc = text_encoder().encode(prompts)
        return enc, enc[0].shape[0]
    if config.is_text:
        raise UserError(f"this model is text-conditioned: give it {text_name}, not {ids_name}")
    ids = config.check_class_ids(as_list(class_ids))
    return ids, len(ids)


def _seeds(seed, n: int) -> list[int]:
    """One seed per image: a list as given, or ``seed + i`` for image i; checked (:func:`check_seeds`)."""
    if isinstance(seed, (list, tuple)):
        if len(seed) != n:
            raise UserError(f"got {len(seed)} seeds for {n} images")
        return check_seeds(seed)
    first = check_seeds([seed])[0]
    return check_seeds(range(first, first + n))


class HARTPipeline:
    """Tokenizer + generator + sampling engine.

    Args:
        tokenizer, generator: the two models (moved to ``device`` and put in eval mode).
        device: where to run (default: the generator's device).
        dtype: ``"fp32"``, ``"bf16"`` or ``"fp16"`` autocast for the transformer step.
        kernels: fused-kernel backend, ``"auto"`` / ``"torch"`` / ``"triton"``.
        compile: ``torch.compile`` the per-scale step (a string names the backend).
        cuda_graph: on a GPU, replay each sampling run as one CUDA graph (captured once per
            batch size and options; :mod:`sampling.graphs`): for repeated batches of one size.
    """

    def __init__(self, tokenizer: HybridTokenizer, generator: HARTGenerator, device=None,
                 dtype: str = "fp32", kernels: str = "auto", compile: bool | str = False,
                 cuda_graph: bool = False, text_encoder=None, text_encoder_path=None):
        device = torch.device(device) if device is not None else generator.word_embed.weight.device
        self._text_encoder, self.text_encoder_path = text_encoder, text_encoder_path
        self.tokenizer = tokenizer.to(device).eval()
        self.generator = generator.to(device).eval()
        self.device = device
        self.engine = SamplingEngine(self.generator, self.tokenizer, dtype=dtype, kernels=kernels, compile=compile,
                                     cuda_graph=cuda_graph)

    @classmethod
    def from_pretrained(cls, model_dir=None, device="cpu", **kw) -> "HARTPipeline":
        """Load ``model_dir/tokenizer`` and ``model_dir/generator`` (None or ``"default"``: the
        bundled default model; ``"default-t2i"``: the bundled text-to-image model)."""
        from hart.common.dist import resolve_device

        device = resolve_device(device, "device")
        folder = model_folder(model_dir)
        for sub in ("tokenizer", "generator"):
            if not (folder / sub).is_dir():
                raise UserError(
                    f"{folder} is not a model folder: it has no {sub}/ (expected tokenizer/ and generator/, "
                    "as written by `hart train`)"
                )
        tokenizer = HybridTokenizer.from_pretrained(folder / "tokenizer", device=device)
        generator = HARTGenerator.from_pretrained(folder / "generator", device=device)
        return cls(tokenizer, generator, device=device, **kw)

    @property
    def num_classes(self) -> int:
        return self.generator.config.num_classes

    @property
    def is_text(self) -> bool:
        return self.generator.config.is_text

    def check_class_ids(self, class_ids) -> list[int]:
        return self.generator.config.check_class_ids(class_ids)

    @property
    def text_encoder(self):
        """The frozen encoder of a text model (loaded once, on first use)."""
        if self._text_encoder is None:
            from hart.text import text_encoder_for

            self._text_encoder = text_encoder_for(self.generator.config, self.text_encoder_path, self.device)
        return self._text_encoder

    def encode_prompts(self, prompts):
        """Prompts -> the engine's text inputs (tokens (B, T, D), mask (B, T))."""
        return condition_inputs(self.generator.config, None, prompts, lambda: self.text_encoder,
                                ("class_ids", "prompts"))[0]

    def _inputs(self, class_ids, prompts):
        return condition_inputs(self.generator.config, class_ids, prompts, lambda: self.text_encoder,
                                ("class_ids", "prompts"))

    def sample(self, class_ids=None, seed=0, *, prompts=None, sampling: str | None = None, previews: bool = False,
               decode: bool = True, return_logits: bool = False, on_scale=None, **options) -> SampleOutput:
        """Tensors out: ids, residual, images (B, 3, R, R) in [-1, 1], optional previews.

        ``class_ids`` (class models) or ``prompts`` (text models). ``sampling`` names a preset
        (``var-fid``, ``var-demo``, ``hart``; default: the model's own, as ``hart generate``);
        ``options`` are :class:`SamplingOptions` fields that override it (cfg, top_k, top_p,
        temperature, smooth, diff_steps, diff_temperature, ...). ``on_scale(k, ids_k, f_hat)``
        observes each scale (:meth:`SamplingEngine.sample`).
        """
        inputs, n = self._inputs(class_ids, prompts)
        unknown = sorted(set(options) - set(option_names()))
        if unknown:
            raise UserError(f"unknown sampling option {unknown[0]!r}; the options are: {', '.join(option_names())}")
        opts = model_options(self.generator.config, sampling, **options)
        gens = make_generators(_seeds(seed, n))
        return self.engine.sample(inputs, gens, opts, decode=decode, previews=previews, return_logits=return_logits,
                                  on_scale=on_scale)

    def __call__(self, class_ids=None, seed=0, *, prompts=None, **options) -> list:
        """Class ids or prompts -> list of PIL images (one each). See :meth:`sample` for options."""
        if class_ids is not None and prompts is None and len(as_list(class_ids)) == 0:
            return []  # (an empty prompt list is an error: hart.text.check_prompts)
        return to_pil(self.sample(class_ids, seed, prompts=prompts, **options).images)

    def previews(self, class_ids=None, seed=0, *, prompts=None, **options) -> list[list]:
        """Per image, the K PIL images after each scale (the last is the final image)."""
        out = self.sample(class_ids, seed, prompts=prompts, previews=True, **options)
        per_scale = [to_pil(p) for p in out.previews]  # K lists of B
        return [list(col) for col in zip(*per_scale)]
