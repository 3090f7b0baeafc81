"""What the demo page calls, without gradio: request checks, merged sampling under a time
limit, the per-scale strip (:class:`DemoModel`), and loading the pipeline with one-line errors.

Each request names a class (or a prompt), sampling settings, a seed and a number of images;
requests with equal settings that wait for the sampler run as one batch
(:mod:`demo.batching`), each getting its own seeds' images, its own strip and its own time.
"""
from __future__ import annotations

import contextlib
import math
import threading
import time
from dataclasses import asdict, dataclass, field

import torch
from PIL import Image, ImageDraw, ImageFont

from demo.batching import BatchInfo, Batcher
from hart.common.errors import UserError
from hart.common.images import to_pil
from sampling import HARTPipeline
from sampling.options import DEFAULT_PRESET, SamplingOptions

MAX_SEED = 2**31 - 1
CFG_MAX = 20.0
TEMPERATURE_MAX = 5.0
STRIP_MAX_ROWS = 4  # the per-scale strip shows at most this many of the images
CELL_MIN = 96  # strip cells are upscaled (nearest) to at least this many pixels
CELL_MAX = 128  # and larger images shrunk to this many


class RequestTimeout(Exception):
    """Raised inside the sampler when a request passes its deadline."""


class Deadline:
    """A per-thread time limit checked at module boundaries of the pipeline.

    :meth:`check` (which :class:`DemoModel` calls after every scale) and forward pre-hooks on
    the tokenizer's decoder and on the diffusion head (every denoising step) raise
    :class:`RequestTimeout` once the calling thread's deadline has passed, so a long request
    stops between scales instead of running to the end. Threads without a deadline (other users of the same pipeline)
    are not affected. Nothing inside the (possibly compiled) transformer step is hooked.
    """

    def __init__(self, pipeline: HARTPipeline):
        self._local = threading.local()
        self.clock = time.monotonic
        modules = [pipeline.tokenizer.decoder]
        if getattr(pipeline.generator, "diffusion", None) is not None:
            modules.append(pipeline.generator.diffusion)
        self._handles = [m.register_forward_pre_hook(self._hook) for m in modules]

    def check(self) -> None:
        deadline = getattr(self._local, "deadline", None)
        if deadline is not None and self.clock() > deadline:
            raise RequestTimeout

    def _hook(self, module, args):
        self.check()

    @contextlib.contextmanager
    def limit(self, seconds: float | None):
        self._local.deadline = None if not seconds else self.clock() + seconds
        try:
            yield
        finally:
            self._local.deadline = None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


@dataclass
class Result:
    images: list  # PIL images, resolution x resolution
    captions: list  # one per image: class name and seed
    strip: Image.Image  # per-scale strip: small images upscaled, large ones shrunk to CELL_MAX
    timing: str
    batch: BatchInfo | None = None  # the sampler batch it ran in


@dataclass
class Job:
    """One parsed request: what :meth:`DemoModel.sample_batch` merges.

    ``options`` (the sampling settings) is the grouping key: requests with equal options share
    a sampler batch. Everything else is per image (class id or prompt, seed).
    """

    label: int | str  # class id, or the prompt of a text model (per image, never grouped on)
    options: dict
    seed: int
    n: int
    key: tuple = field(init=False)

    def __post_init__(self):
        self.key = tuple(sorted(self.options.items()))

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.n)]


def _number(name: str, value, *, integer: bool = False, lo=None, hi=None, lo_open: bool = False) -> float:
    """A finite number in range, or a :class:`UserError` naming the control."""
    if value is None or isinstance(value, str) and not value.strip():
        raise UserError(f"{name} is missing")
    if isinstance(value, bool):
        raise UserError(f"{name} must be a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise UserError(f"{name} must be a finite number, got {value!r}")
    if integer:
        if x != int(x):
            raise UserError(f"{name} must be a whole number, got {value!r}")
        x = int(x)
    if lo is not None and (x <= lo if lo_open else x < lo):
        raise UserError(f"{name} must be {'>' if lo_open else '>='} {_shown(lo)}, got {value!r}")
    if hi is not None and x > hi:
        raise UserError(f"{name} must be <= {_shown(hi)}, got {value!r}")
    return x


def _shown(bound) -> str:
    """A bound as people read it: 2147483647, not 2.14748e+09; 0.5 as 0.5."""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def per_scale_strip(rows: list[list[Image.Image]], labels: list[str], cell: int) -> Image.Image:
    """Tile ``rows`` (one list of same-size images per row) under a header of ``labels``."""
    pad, head = 4, 18
    ncol = len(labels)
    canvas = Image.new("RGB", (pad + ncol * (cell + pad), head + pad + len(rows) * (cell + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _font(12)
    for c, text in enumerate(labels):
        x = pad + c * (cell + pad)
        w = draw.textlength(text, font=font)
        draw.text((x + max(0, (cell - w) / 2), 2), text, fill=(0, 0, 0), font=font)
    for r, row in enumerate(rows):
        y = head + pad + r * (cell + pad)
        for c, im in enumerate(row):
            canvas.paste(im.resize((cell, cell), Image.NEAREST), (pad + c * (cell + pad), y))
    return canvas


class DemoModel:
    """What the page calls: validation, sampling under a time limit, the strip. No gradio here.

    Args:
        pipeline: the shared :class:`HARTPipeline`.
        max_images: most images one request may ask for.
        time_limit: seconds a sampler batch may run before it is stopped (None/0: no limit).
        max_batch_size: most requests merged into one sampler batch (1: one at a time).
        max_batch_images: most images in one sampler batch (default: 64, at least ``max_images``).
        batch_wait: seconds a batch waits for more requests before it starts (default 0).
        sampling: the sampling preset (:data:`sampling.options.SAMPLING_PRESETS`): the sliders
            start at its values, and its other settings (smoothing, top-k schedule, the residual
            head's guidance, HART's last-scale ratio) apply to every request.
    """

    SLIDERS = ("cfg", "top_k", "top_p", "temperature")

    def __init__(self, pipeline: HARTPipeline, max_images: int = 16, time_limit: float | None = 60.0,
                 max_batch_size: int = 8, max_batch_images: int | None = None, batch_wait: float = 0.0,
                 sampling: str = DEFAULT_PRESET):
        self.pipeline = pipeline
        self.defaults = SamplingOptions.preset(sampling)
        self.fixed = {k: v for k, v in asdict(self.defaults).items() if k not in self.SLIDERS}
        self.is_text = pipeline.is_text
        cfg = pipeline.generator.config
        self.names = [] if self.is_text else [cfg.class_label(k) for k in range(cfg.num_classes)]
        self.max_prompt_chars = 500
        self.max_images = int(max_images)
        self.time_limit = time_limit
        self.deadline = Deadline(pipeline)
        self.lock = threading.Lock()  # the engine's KV cache is shared: one batch at a time
        self.batcher = Batcher(self.sample_batch, max_requests=int(max_batch_size),
                               max_images=int(max_batch_images or max(64, self.max_images)), wait=float(batch_wait))
        # requests let in at once (gradio's concurrency limit of the event): while one batch
        # samples, the next one gathers, so the sampler does not idle between batches
        self.workers = 1 if max_batch_size == 1 else 2 * int(max_batch_size)
        tcfg, gcfg = pipeline.tokenizer.config, pipeline.generator.config
        self.resolution = tcfg.resolution
        self.patch_nums = tuple(gcfg.patch_nums)
        self.codebook_size = gcfg.codebook_size
        self.has_residual = getattr(pipeline.generator, "diffusion", None) is not None

    # ------------------------------------------------------------------ inputs

    def parse(self, subject, cfg, top_k, top_p, temperature, seed, num_images) -> tuple:
        """Raw control values -> (class id or prompt, options dict, seed, n); :class:`UserError`
        if bad. ``subject``, the first control, is what to draw: a class name, or a text model's
        prompt (the name of the API's first parameter)."""
        if self.is_text:
            prompt = " ".join(str(subject or "").split())
            if not prompt:
                raise UserError("write a prompt first, e.g. one of the examples")
            if len(prompt) > self.max_prompt_chars:
                raise UserError(f"the prompt is {len(prompt)} characters; keep it to {self.max_prompt_chars} at most")
        elif subject not in self.names:
            shown = ", ".join(self.names[:10]) + (" ..." if len(self.names) > 10 else "")
            raise UserError(f"unknown class {subject!r}; choose one of: {shown}")
        options = dict(
            **self.fixed,
            cfg=_number("CFG", cfg, lo=0, hi=CFG_MAX),
            top_k=int(_number("top-k", top_k, integer=True, lo=0, hi=self.codebook_size)),
            top_p=_number("top-p", top_p, lo=0, lo_open=True, hi=1),
            temperature=_number("temperature", temperature, lo=0, lo_open=True, hi=TEMPERATURE_MAX),
        )
        seed = int(_number("seed", seed, integer=True, lo=0, hi=MAX_SEED))
        n = int(_number("number of images", num_images, integer=True, lo=1, hi=self.max_images))
        return (prompt if self.is_text else self.names.index(subject)), options, seed, n

    # ------------------------------------------------------------------ sampling

    @property
    def cell(self) -> int:
        """Side of a strip cell: small images upscaled (nearest) to at least ``CELL_MIN``, large
        ones shrunk to ``CELL_MAX`` (a 1024 px model's strip would be 63 Mpx, 12 s of PNG)."""
        R = self.resolution
        return R * math.ceil(CELL_MIN / R) if R < CELL_MIN else min(R, CELL_MAX)

    def _cell(self, images: torch.Tensor) -> torch.Tensor:
        """(n, 3, R, R) -> (n, 3, c, c) with c = min(R, cell): area-averaged where it shrinks."""
        c = min(self.resolution, self.cell)
        return images if c == images.shape[-1] else torch.nn.functional.interpolate(images, size=(c, c), mode="area")

    def strip_labels(self) -> list[str]:
        labels = [f"{p}x{p}" for p in self.patch_nums]
        if self.has_residual:
            labels[-1] += " ids"
            labels.append(f"{self.patch_nums[-1]}x{self.patch_nums[-1]} +res")
        return labels

    def sample_batch(self, jobs: list[Job]) -> list[tuple]:
        """Sample the images of ``jobs`` (equal options) as one batch; per job (images, strip
        columns), tensors in [-1, 1]. The batcher calls this in one thread at a time."""
        pipe = self.pipeline
        options = jobs[0].options
        assert all(j.key == jobs[0].key for j in jobs), "a batch mixes sampling settings"
        labels = [j.label for j in jobs for _ in range(j.n)]
        seeds = [s for j in jobs for s in j.seeds]
        starts = [0]
        for j in jobs:
            starts.append(starts[-1] + j.n)
        # the rows shown in the strips: the first STRIP_MAX_ROWS images of each request
        strip_rows = [r for j, s in zip(jobs, starts) for r in range(s, s + min(j.n, STRIP_MAX_ROWS))]
        with self.lock:
            try:
                with self.deadline.limit(self.time_limit), torch.inference_mode():
                    self.deadline.check()
                    idx = torch.tensor(strip_rows, device=pipe.device)
                    latents = []  # the discrete f_hat of the strip's rows after each scale but the last

                    def on_scale(k, ids_k, f_hat):
                        self.deadline.check()  # a long request stops between scales
                        if k + 1 < len(self.patch_nums):
                            latents.append(f_hat[idx].float())

                    cond = {"prompts": labels} if self.is_text else {"class_ids": labels}
                    out = pipe.sample(seed=seeds, on_scale=on_scale, **cond, **options)
                    # the strip's columns, decoded for its rows only (not every image of the
                    # batch) and shrunk on the device to the cell size
                    if self.has_residual:  # the last scale also without the residual
                        latents.append(out.f_hat[idx])
                    columns = [self._cell(pipe.tokenizer.decode_latent(f).float()) for f in latents]
                    columns.append(self._cell(out.images[idx]))
            except RequestTimeout:
                others = len(jobs) - 1
                shared = f" (sampled together with {others} other{'s' if others > 1 else ''})" if others else ""
                raise UserError(
                    f"stopped: this request{shared} ran longer than the {self.time_limit:g} s limit; "
                    "ask for fewer images"
                ) from None
        parts, row = [], 0
        for j, s in zip(jobs, starts):
            m = min(j.n, STRIP_MAX_ROWS)
            parts.append((out.images[s:s + j.n].cpu(), [c[row:row + m].cpu() for c in columns]))
            row += m
        return parts

    def generate(self, subject, cfg, top_k, top_p, temperature, seed, num_images) -> Result:
        """One visitor's request: checked here, sampled in a batch with the requests waiting
        beside it (same settings), returned alone."""
        label, options, seed, n = self.parse(subject, cfg, top_k, top_p, temperature, seed, num_images)
        job = Job(label, options, seed, n)
        t0 = time.perf_counter()
        (images, columns), info = self.batcher.submit(job.key, job, n)
        seconds = time.perf_counter() - t0
        images = to_pil(images)
        per_col = [to_pil(c) for c in columns]  # columns x rows
        rows = [list(r) for r in zip(*per_col)]
        strip = per_scale_strip(rows, self.strip_labels(), self.cell)
        name = label if self.is_text else self.names[label]
        captions = [f"{name}, seed {s}" for s in job.seeds]
        shared = (f"; sampled with {info.requests - 1} other request{'s' if info.requests > 2 else ''} "
                  f"in one batch of {info.images} images, {info.ran:.2f} s") if info.requests > 1 else ""
        waited = f", {info.waited:.2f} s of it waiting" if info.waited >= 0.01 else ""
        timing = (f"{n} image{'s' if n > 1 else ''} of {self.resolution}x{self.resolution} in {seconds:.2f} s"
                  f"{waited} ({len(self.patch_nums)} scales, per-scale previews included{shared})")
        kept = self.pipeline.text_encoder.kept(label) if self.is_text else None
        if kept is not None:  # the visitor sees what the model read, not only the server's log
            timing += (f"\nnote: the prompt is longer than the model's {self.pipeline.text_encoder.max_length} "
                       f"tokens; it read only: \"{kept}\"")
        return Result(images, captions, strip, timing, info)


SHAPES_EXAMPLES = (
    "a large red circle", "a small blue square left of a large green triangle",
    "three small white crosses", "a large orange diamond above a small cyan circle", "two large purple triangles",
)


def prompt_examples(pipeline: HARTPipeline) -> list[str]:
    """Example prompts for a text model: captions of its training data (saved in its config by
    ``hart train``), else prompts of the ``shapes`` grammar."""
    return list(pipeline.generator.config.display.example_prompts) or list(SHAPES_EXAMPLES)


def load_pipeline(model_dir, device: str = "cpu", text_encoder_path=None) -> HARTPipeline:
    """``HARTPipeline.from_pretrained`` with every failure turned into one :class:`UserError` line."""
    try:
        pipe = HARTPipeline.from_pretrained(model_dir, device=device, text_encoder_path=text_encoder_path)
        if pipe.is_text:
            pipe.text_encoder  # a missing encoder is one line at start-up, not an error per request
        return pipe
    except UserError:
        raise
    except Exception as e:  # a broken config.json or weights file: one line, not a traceback
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"could not load the model from {model_dir}: {type(e).__name__}"
                        + (f": {msg}" if msg else "")) from None
