"""HART as a diffusers pipeline: ``DiffusionPipeline.from_pretrained`` / ``pipe(...)`` / ``save_pretrained``.

    import hart                                         # lets diffusers find HARTDiffusionPipeline
    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained("runs/fm")  # a `hart train` folder, or a bundled model's folder
    g = [torch.Generator().manual_seed(s) for s in (0, 1)]                   # one per image
    images = pipe(class_labels=[3, 5], guidance_scale=1.5, generator=g).images
    t2i = HARTDiffusionPipeline.from_pretrained("default-t2i")              # bundled models by name
    images = t2i(prompt=["a large red circle"], generator=g[:1]).images

Components: ``tokenizer`` (:class:`tokenizer.model.HybridTokenizer`, the image tokenizer; also
``pipe.vae``) and ``generator`` (:class:`hart.model.HARTGenerator`, the transformer with its
residual head; also ``pipe.transformer``), and ``scheduler``, the head's sampler, made once
per pipeline (diffusers' ``DDIMScheduler``, or :class:`hart.diffusion.IDDPMHeadScheduler` for
HART's released heads; None without a head; optional: when a folder has none it is made from
the generator's config). The models are named after the subfolders every model
folder of the project already has, so a folder written by ``hart train`` / ``export`` /
``convert`` (which now also write ``model_index.json``) is a pipeline folder, and a folder
written by :meth:`HARTDiffusionPipeline.save_pretrained` is one ``HARTPipeline``,
``hart generate --model`` and the demo read. A folder without ``model_index.json`` (written
before) loads with :meth:`HARTDiffusionPipeline.from_pretrained`.

A text model's encoder: the optional components ``text_encoder`` / ``text_tokenizer`` (a
``transformers`` model and its tokenizer, e.g. MiniLM's ``BertModel`` / ``BertTokenizerFast``
or HART's ``Qwen2Model``) when given or saved with the pipeline; else the one the generator's
config names, loaded on first use and kept aside, so a saved folder stays small (the bundled
models hold no encoder weights).

Sampling is the same engine as :class:`sampling.HARTPipeline`: the same seeds give the same
images. ``generator`` is a list of ``torch.Generator``, one per image (an image depends on its
own generator only); a single generator draws one seed per image from it.
"""
from __future__ import annotations

import operator
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import diffusers
import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from hart.common.errors import UserError
from hart.common.images import to_pil
from hart.common.io import swap_in
from hart.diffusion import make_head_scheduler
from hart.model import HARTGenerator
from sampling.engine import DTYPES, SamplingEngine
from sampling.seeds import make_generators
from sampling.options import SamplingOptions, model_options, option_names
from sampling.pipeline import as_list, condition_inputs, model_folder
from tokenizer.model import HybridTokenizer

OUTPUT_TYPES = ("pil", "np", "pt")


@dataclass
class HARTPipelineOutput(BaseOutput):
    """``images``: PIL images, a (B, R, R, 3) float array in [0, 1] (``np``) or a (B, 3, R, R)
    tensor in [0, 1] (``pt``)."""

    images: list | np.ndarray | torch.Tensor


_GRAPH_AND_OFFLOAD = ("CUDA graphs replay the weights where they were captured, CPU offload moves them every "
                      "call: use enable_cuda_graph or enable_model_cpu_offload, not both")

class HARTDiffusionPipeline(DiffusionPipeline):
    """HART / VAR next-scale generation as a diffusers pipeline (see the module doc)."""

    model_cpu_offload_seq = "text_encoder->generator->tokenizer"
    _optional_components = ["scheduler", "text_encoder", "text_tokenizer"]

    def __init__(self, tokenizer: HybridTokenizer, generator: HARTGenerator, scheduler=None,
                 text_encoder=None, text_tokenizer=None):
        super().__init__()
        if generator.diffusion is None:
            scheduler = None
        else:
            scheduler = _check_scheduler(scheduler, generator.config.head)
        _check_text_components(generator.config, text_encoder, text_tokenizer)
        self.register_modules(tokenizer=tokenizer, generator=generator, scheduler=scheduler,
                              text_encoder=text_encoder, text_tokenizer=text_tokenizer)
        self._engine = None
        self._text_encoder = None
        self._offload_device = None
        self._cuda_graph = False

    @property
    def vae(self) -> HybridTokenizer:
        return self.tokenizer

    @property
    def transformer(self) -> HARTGenerator:
        return self.generator

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path=None, **kwargs):
        """A pipeline folder (``model_index.json``), a model folder of ``hart train`` /
        ``export`` / ``convert`` without one, or a bundled model's name (``default``,
        ``default-t2i``)."""
        folder = model_folder(pretrained_model_name_or_path)
        if (folder / "model_index.json").is_file():
            return super().from_pretrained(str(folder), **kwargs)
        for sub in ("tokenizer", "generator"):
            if not (folder / sub).is_dir():
                raise UserError(f"{folder} is not a model folder: it has neither model_index.json nor {sub}/")
        hub = {k: kwargs.pop(k) for k in ("torch_dtype", "dtype") if k in kwargs}
        if kwargs:
            raise UserError(f"unknown option {sorted(kwargs)[0]!r} for a model folder without model_index.json")
        return cls(HybridTokenizer.from_pretrained(folder / "tokenizer", **hub),
                   HARTGenerator.from_pretrained(folder / "generator", **hub))

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """diffusers' ``save_pretrained``: the components and ``model_index.json`` written into
        ``save_directory``, whatever else it holds left alone (a ``hart train`` run keeps its
        ``train_state/`` and logs). Each is written aside and swapped in whole
        (:func:`hart.common.io.swap_in`), ``model_index.json`` last: a kill mid-save leaves
        the previous pipeline, or the new one."""
        if kwargs.get("variant") is not None:
            raise UserError("save_pretrained: HART folders hold one weights file per model (model.safetensors); "
                            "save without variant=")
        target = Path(save_directory).resolve()
        if target.exists() and not target.is_dir():
            raise UserError(f"{save_directory} is a file; save_pretrained writes a folder")
        target.mkdir(parents=True, exist_ok=True)
        for stale in target.glob(".save-*"):  # left by a save that was killed
            shutil.rmtree(stale, ignore_errors=True)
        with tempfile.TemporaryDirectory(dir=target, prefix=".save-") as tmp:
            super().save_pretrained(tmp, **kwargs)
            entries = sorted(Path(tmp).iterdir(), key=lambda p: p.name == "model_index.json")
            for entry in entries:
                swap_in(entry, target / entry.name)

    # ------------------------------------------------------------------ offload

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device: str | torch.device = "cuda") -> None:
        """Keep both models on the CPU between calls; a call moves them to ``device`` and back.

        The sampler calls the models' per-scale methods (not ``forward``), which accelerate's
        hooks would not see, so this is the project's own: whole-model, per call.
        """
        if self._cuda_graph:
            raise UserError(_GRAPH_AND_OFFLOAD)
        device = torch.device(device)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise UserError("enable_model_cpu_offload needs a CUDA device; none is available here")
            device = torch.device("cuda", gpu_id if gpu_id is not None else (device.index or 0))
        self._offload_device = device
        for model in self._offloaded():
            model.to("cpu")

    def enable_cuda_graph(self) -> None:
        """On a GPU, replay each call's whole sampling run as one CUDA graph, captured once per
        batch size and options (:mod:`sampling.graphs`): the same images. Without a step-end
        callback (a per-scale callback runs eagerly; the progress bar then moves once at the
        end). Elsewhere it samples eagerly and says why in one line."""
        if self._offload_device is not None:
            raise UserError(_GRAPH_AND_OFFLOAD)
        self._cuda_graph, self._engine = True, None

    def _offloaded(self) -> list:
        return [m for m in (self.text_encoder, self.generator, self.tokenizer) if m is not None]

    @property
    def _execution_device(self) -> torch.device:
        return self._offload_device or self.generator.word_embed.weight.device

    # ------------------------------------------------------------------ sampling

    def _sampling_engine(self, dtype: str = "fp32") -> SamplingEngine:
        if dtype not in DTYPES:
            raise UserError(f"sampling_dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        weights = {m.dtype for m in (self.generator, self.tokenizer)}
        if weights != {torch.float32}:
            raise UserError(f"the models' weights are {', '.join(sorted(map(str, weights)))}: HART samples with fp32 "
                            "weights (the quantizer's nearest-code search needs them); load without torch_dtype "
                            "(or pipe.to(torch.float32)) and give sampling_dtype='bf16' / 'fp16' for a 16-bit step")
        if self._engine is None or self._engine.generator is not self.generator:
            self._engine = SamplingEngine(self.generator.eval(), self.tokenizer.eval(), cuda_graph=self._cuda_graph)
        self._engine.dtype = dtype
        self._engine.head_scheduler = self.scheduler  # the one the pipeline holds (None: no head)
        return self._engine

    def _text(self, device):
        """The text encoder: the ``text_encoder`` / ``text_tokenizer`` components when the
        pipeline has them, else the one the generator's config names, loaded once and kept
        aside (not a component: ``save_pretrained`` does not copy its weights)."""
        if self._text_encoder is None:
            from hart.text import TextEncoder, text_encoder_for

            config = self.generator.config
            if self.text_encoder is not None:
                self._text_encoder = TextEncoder(config.text_encoder, max_length=config.context_tokens, device=None,
                                                 model=self.text_encoder, tokenizer=self.text_tokenizer)
            else:
                self._text_encoder = text_encoder_for(config, None, device)
        if self.text_encoder is None and self._text_encoder.device != device:
            self._text_encoder.model.to(device)
        return self._text_encoder

    @staticmethod
    def _generators(generator, n: int) -> list:
        if isinstance(generator, (list, tuple)):
            if len(generator) != n:
                raise UserError(f"got {len(generator)} generators for {n} images (give one per image)")
            if not all(isinstance(g, torch.Generator) for g in generator):
                raise UserError("generator must be a torch.Generator or a list of them, one per image")
            return list(generator)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise UserError(f"generator must be a torch.Generator or a list of them, not a {type(generator).__name__}")
        # one generator (or None: torch's global RNG): one seed per image drawn from it, on its device
        dev = generator.device if generator is not None else "cpu"
        seeds = torch.randint(0, 2**62, (n,), generator=generator, device=dev).tolist()
        return make_generators(seeds)

    @torch.no_grad()
    def __call__(self, prompt=None, class_labels=None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, num_images_per_prompt: int = 1, generator=None,
                 output_type: str = "pil", return_dict: bool = True, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs=("ids", "f_hat"), sampling_dtype: str = "fp32",
                 sampling: str | None = None, **options):
        """Images for ``prompt`` (text models) or ``class_labels`` (class models).

        Args:
            prompt: a string or a list of strings (text models).
            class_labels: an int, a class name (any case), or a list / tensor of them (class models).
            num_inference_steps: the residual head's denoising steps (None: the model's; ignored
                by a model without a head); the transformer always runs one step per scale.
            guidance_scale: classifier-free guidance, VAR's and HART's form: the logits are
                ``(1 + t) cond - t uncond`` with t rising linearly from 0 at the 1x1 scale to
                ``guidance_scale`` at the last (0: off; None: the preset's, 1.5 for VAR's FID
                setting, 4.5 for HART's). diffusers' ``s`` is this ``t + 1``.
            num_images_per_prompt: images per prompt or class (consecutive in the output).
            generator: a list of ``torch.Generator``, one per image; one generator (or None)
                draws one seed per image from it (so ``g`` and ``[g]`` give different images).
            output_type: ``"pil"``, ``"np"`` or ``"pt"``.
            callback_on_step_end: called after each scale k as ``fn(pipe, k, k, kwargs)``,
                ``kwargs`` holding ``ids`` (B, pn_k^2) and ``f_hat`` (the discrete latent so far)
                as named by ``callback_on_step_end_tensor_inputs``; what it returns is not fed back.
            sampling_dtype: ``"fp32"``, or ``"bf16"`` / ``"fp16"`` autocast of the transformer
                step (``hart generate --dtype``); the weights stay fp32.
            sampling: the preset the options start from (``var-fid``, ``var-demo``, ``hart``;
                default: the model's own, ``hart`` for a converted HART release, as ``hart
                generate`` does).
            options: the other :class:`SamplingOptions` fields, overriding the preset's (top_k,
                top_p, temperature, smooth, diff_temperature, head_cfg, ...).
        Returns:
            :class:`HARTPipelineOutput`, or ``(images,)`` when ``return_dict`` is False.
        """
        if output_type not in OUTPUT_TYPES:
            raise UserError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise UserError("callback_on_step_end must be a function fn(pipe, step, timestep, tensors)")
        if isinstance(callback_on_step_end_tensor_inputs, str):
            callback_on_step_end_tensor_inputs = (callback_on_step_end_tensor_inputs,)
        unknown = sorted(set(callback_on_step_end_tensor_inputs) - {"ids", "f_hat"})
        if unknown:
            raise UserError(f"callback_on_step_end_tensor_inputs: unknown tensor {unknown[0]!r} (ids, f_hat)")
        n_per = _count(num_images_per_prompt, "num_images_per_prompt", 1)
        head = self.generator.config.head if self.generator.diffusion is not None else None
        if head is not None:
            _check_scheduler(self.scheduler, head)  # also when pipe.scheduler was assigned after loading
            if num_inference_steps is not None:
                _count(num_inference_steps, "num_inference_steps", 1, head.train_steps - 1)
        else:
            num_inference_steps = None  # a model without a head has no denoising steps to set
        for ours, theirs in DIFFUSERS_NAMES.items():  # one name per setting: diffusers'
            if ours in options:
                raise UserError(f"pass {theirs}=, not {ours}= (the option's name in this pipeline)")
        given = {k: v for k, v in (("cfg", guidance_scale), ("diff_steps", num_inference_steps)) if v is not None}
        opts = _call_options(self.generator.config, sampling, **given, **options)
        if n_per > 1:
            prompt, class_labels = _repeat(prompt, n_per), _repeat(class_labels, n_per)
        if self._offload_device is not None:
            for model in self._offloaded():
                model.to(self._offload_device)
        try:
            device = self._execution_device
            inputs, n = condition_inputs(self.generator.config, class_labels, prompt, lambda: self._text(device),
                                         ("class_labels", "prompt"))
            if n == 0:
                images = torch.zeros(0, 3, self.tokenizer.config.resolution, self.tokenizer.config.resolution)
            else:
                gens = self._generators(generator, n)
                K = self.generator.config.num_scales
                with self.progress_bar(total=K) as bar:
                    def on_scale(k, ids_k, f_hat):
                        if callback_on_step_end is not None:
                            tensors = {"ids": ids_k, "f_hat": f_hat}
                            callback_on_step_end(self, k, k, {t: tensors[t] for t in callback_on_step_end_tensor_inputs})
                        bar.update()

                    engine = self._sampling_engine(sampling_dtype)
                    graph = self._cuda_graph and callback_on_step_end is None  # one graph: no per-scale call
                    images = engine.sample(inputs, gens, opts, on_scale=None if graph else on_scale).images
                    if graph:
                        bar.update(K)
        finally:
            if self._offload_device is not None:
                for model in self._offloaded():
                    model.to("cpu")
        if output_type == "pil":
            out = to_pil(images)
        else:
            out = images.float().clamp(-1, 1).add(1).div(2).cpu()
            if output_type == "np":
                out = out.permute(0, 2, 3, 1).numpy()
        return HARTPipelineOutput(images=out) if return_dict else (out,)


def _count(value, name: str, low: int, high: int | None = None) -> int:
    """``value`` as an int in [low, high], or one line."""
    try:
        if isinstance(value, bool):
            raise TypeError
        n = operator.index(value)
    except TypeError:
        raise UserError(f"{name} must be an integer, got {value!r}") from None
    if n < low or (high is not None and n > high):
        raise UserError(f"{name} must be in {low}..{high}, got {n}" if high is not None else
                        f"{name} must be at least {low}, got {n}")
    return n


def _repeat(items, n: int):
    """Each prompt or class ``n`` times in a row (None stays None)."""
    if items is None:
        return None
    return [x for x in as_list(items) for _ in range(n)]


def _call_options(config, sampling, **fields) -> SamplingOptions:
    """:class:`SamplingOptions` of the preset ``sampling`` (None: the model's own) with keyword
    arguments over it, checked (:func:`sampling.options.model_options`); one line naming an
    unknown option or a bad value (by the name the caller gave it)."""
    known = set(option_names())
    unknown = sorted(set(fields) - known)
    if unknown:
        raise UserError(f"unknown sampling option {unknown[0]!r} (this pipeline takes: prompt, class_labels, "
                        "num_inference_steps, guidance_scale, num_images_per_prompt, generator, output_type, "
                        f"return_dict, callback_on_step_end, sampling_dtype, sampling, "
                        f"{', '.join(sorted(known - {'cfg', 'diff_steps'}))})")
    try:
        return model_options(config, sampling, **fields)
    except UserError as e:  # named as this pipeline's caller named them
        message = str(e)
        for ours, theirs in DIFFUSERS_NAMES.items():
            if message.startswith(ours + " "):
                message = theirs + message[len(ours):]
        raise UserError(message) from None


# SamplingOptions' names in its messages -> the arguments of HARTDiffusionPipeline.__call__
DIFFUSERS_NAMES = {"cfg": "guidance_scale", "diff_steps": "num_inference_steps"}


def _check_text_components(config, text_encoder, text_tokenizer) -> None:
    """One line when the text components do not fit the generator: both or neither, a text
    model only, the width the generator was trained on."""
    if text_encoder is None and text_tokenizer is None:
        return
    if (text_encoder is None) != (text_tokenizer is None):
        raise UserError("give text_encoder and text_tokenizer together (the encoder and its tokenizer)")
    if not config.is_text:
        raise UserError("this model is class-conditional: it takes no text_encoder / text_tokenizer")
    width = getattr(getattr(text_encoder, "config", None), "hidden_size", None)
    if width != config.context_dim:
        raise UserError(f"the text_encoder's width is {width}; this generator reads {config.context_dim}-wide "
                        f"features ({config.text_encoder})")


def _check_scheduler(scheduler, head):
    """The residual head's scheduler: ``scheduler``, or the one its config names when None;
    one line when it is not the kind the head samples with."""
    own = make_head_scheduler(head)
    if scheduler is None:
        return own
    if type(scheduler) is not type(own):
        raise UserError(f"this model's residual head samples with a {type(own).__name__} "
                        f"(sampler {head.sampler!r}), not a {type(scheduler).__name__}")
    pred = getattr(scheduler.config, "prediction_type", None)
    if pred is not None and pred != head.prediction:
        raise UserError(f"the scheduler predicts {pred}, the residual head {head.prediction}; keep the "
                        "pipeline's own scheduler (or one made from its config)")
    return scheduler


# DiffusionPipeline.from_pretrained finds a pipeline class among diffusers' attributes by the
# name in model_index.json: set here, and found lazily after a bare `import hart` (hart.registry)
setattr(diffusers, HARTDiffusionPipeline.__name__, HARTDiffusionPipeline)
