"""Gradio demo: class-conditional generation with the per-scale view of next-scale prediction.

    hart demo --model runs/fm                       # http://127.0.0.1:7860
    python -m demo --model runs/fm --port 8080
    hart demo --model runs/fm --host 0.0.0.0        # reachable from other machines
    hart demo --model runs/fm --share               # public gradio.live link (asked for only)

The page has the class (by name), CFG, top-k, top-p, temperature, seed (with a randomise
button) and the number of images; it shows the images, a strip of the image after every
scale (1x1 .. full, the last scale with and without the continuous residual) and the time.

Many visitors at once: requests that wait for the sampler are merged into one sampler batch
(:mod:`demo.batching`): up to ``--max-batch-size`` requests and ``--max-batch-images``
images, grouped by their sampling settings (CFG, top-k, top-p, temperature); the class and
the seed are per image, so requests for different classes share a batch. Each request gets
the images of its own seeds (an image depends only on its seed, whatever its batch), its own
per-scale strip and its own time. ``--max-batch-size 1`` runs one request at a time.

Safety: analytics off, 127.0.0.1 unless ``--host``, no share link unless ``--share``, no
file inputs (nothing reads or writes a path the visitor chooses), a bounded queue
(``--queue-size``: a request beyond it is refused at once with "Queue is full"), and a time
limit per sampler batch (``--time-limit``: past it, each request of the batch gets a message).

``demo.build_demo(pipeline)`` returns the ``gr.Blocks`` without launching it.
"""
from __future__ import annotations

import os

# must precede the gradio import: gradio reads it at import time
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402

import gradio as gr  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from hart.common.dist import resolve_device  # noqa: E402
from hart.common.errors import UserError, cli_entry  # noqa: E402
from demo.batching import BatchInfo, Batcher  # noqa: E402
from hart.common.images import to_pil  # noqa: E402
from sampling import HARTPipeline  # noqa: E402
from sampling.options import DEFAULT_PRESET, SAMPLING_PRESETS, SamplingOptions  # noqa: E402

MAX_SEED = 2**31 - 1
CFG_MAX = 20.0
TEMPERATURE_MAX = 5.0
STRIP_MAX_ROWS = 4  # the per-scale strip shows at most this many of the images
# gradio runs each admitted request in a worker thread of its own (anyio's pool: 40 threads),
# and admits twice --max-batch-size at once
MAX_BATCH_REQUESTS = 16
CELL_MIN = 96  # strip cells are upscaled (nearest) to at least this many pixels
CELL_MAX = 128  # and larger images shrunk to this many

# passed to launch() (gradio 6 takes theme and css there, not in Blocks()); system fonts so
# the page asks no font server
THEME_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
CSS = ".pixelated img { image-rendering: pixelated; }"


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
    strip: Image.Image  # per-scale strip (upscaled)
    timing: str
    batch: BatchInfo | None = None  # the sampler batch it ran in


@dataclass
class Job:
    """One parsed request: what :meth:`DemoModel.sample_batch` merges.

    ``options`` (the sampling settings) is the grouping key: requests with equal options share
    a sampler batch. Everything else is per image (class id, seeds) and so would a prompt be.
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


def class_names(pipeline: HARTPipeline) -> list[str]:
    """Names from the generator config, or ``class 0`` .. when the config has none."""
    cfg = pipeline.generator.config
    names = list(cfg.display.class_names)
    if len(names) != cfg.num_classes:
        names = [f"class {i}" for i in range(cfg.num_classes)]
    return names


def _number(name: str, value, *, integer: bool = False, lo=None, hi=None, lo_open: bool = False) -> float:
    """A finite number in range, or a :class:`UserError` naming the control."""
    if value is None or isinstance(value, bool) or isinstance(value, str) and not value.strip():
        raise UserError(f"{name} is missing")
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
        raise UserError(f"{name} must be {'>' if lo_open else '>='} {lo:g}, got {value!r}")
    if hi is not None and x > hi:
        raise UserError(f"{name} must be <= {hi:g}, got {value!r}")
    return x


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
        self.names = [] if self.is_text else class_names(pipeline)
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

    def parse(self, class_name, cfg, top_k, top_p, temperature, seed, num_images) -> tuple:
        """Raw control values -> (class id or prompt, options dict, seed, n); :class:`UserError`
        if bad. A text model's first control is the prompt."""
        if self.is_text:
            prompt = " ".join(str(class_name or "").split())
            if not prompt:
                raise UserError("write a prompt first, e.g. one of the examples")
            if len(prompt) > self.max_prompt_chars:
                raise UserError(f"the prompt is {len(prompt)} characters; keep it under {self.max_prompt_chars}")
        elif class_name not in self.names:
            shown = ", ".join(self.names[:10]) + (" ..." if len(self.names) > 10 else "")
            raise UserError(f"unknown class {class_name!r}; choose one of: {shown}")
        options = dict(
            **self.fixed,
            cfg=_number("CFG", cfg, lo=0, hi=CFG_MAX),
            top_k=int(_number("top-k", top_k, integer=True, lo=0, hi=self.codebook_size)),
            top_p=_number("top-p", top_p, lo=0, lo_open=True, hi=1),
            temperature=_number("temperature", temperature, lo=0, lo_open=True, hi=TEMPERATURE_MAX),
        )
        seed = int(_number("seed", seed, integer=True, lo=0, hi=MAX_SEED))
        n = int(_number("number of images", num_images, integer=True, lo=1, hi=self.max_images))
        return (prompt if self.is_text else self.names.index(class_name)), options, seed, n

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

    def generate(self, class_name, cfg, top_k, top_p, temperature, seed, num_images) -> Result:
        """One visitor's request: checked here, sampled in a batch with the requests waiting
        beside it (same settings), returned alone."""
        label, options, seed, n = self.parse(class_name, cfg, top_k, top_p, temperature, seed, num_images)
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
        return Result(images, captions, strip, timing, info)


SHAPES_EXAMPLES = (
    "a large red circle", "a small blue square left of a large green triangle",
    "three small white crosses", "a large orange diamond above a small cyan circle", "two large purple triangles",
)


def prompt_examples(pipeline: HARTPipeline) -> list[str]:
    """Example prompts for a text model: captions of its training data (saved in its config by
    ``hart train``), else prompts of the ``shapes`` grammar."""
    return list(pipeline.generator.config.display.example_prompts) or list(SHAPES_EXAMPLES)


def build_demo(pipeline: HARTPipeline, *, max_images: int = 16, time_limit: float | None = 60.0,
               queue_size: int = 16, max_batch_size: int = 8, max_batch_images: int | None = None,
               batch_wait: float = 0.0, title: str = "HART: next-scale prediction",
               sampling: str = DEFAULT_PRESET) -> gr.Blocks:
    """The Gradio app on ``pipeline``, not launched.

    Up to twice ``max_batch_size`` requests are taken from the queue at once (gradio's
    concurrency limit of the event; 1 when ``max_batch_size`` is 1): while one batch samples,
    the next gathers. Waiting requests with equal sampling settings run as one sampler batch of
    up to ``max_batch_size`` requests (:class:`DemoModel`, :mod:`demo.batching`); at most
    ``queue_size`` more wait in gradio's queue; a batch may run ``time_limit`` seconds."""
    model = DemoModel(pipeline, max_images=max_images, time_limit=time_limit, max_batch_size=max_batch_size,
                      max_batch_images=max_batch_images, batch_wait=batch_wait, sampling=sampling)
    names = model.names
    pn = model.patch_nums
    R = model.resolution

    def generate(class_name, cfg, top_k, top_p, temperature, seed, num_images):
        try:
            r = model.generate(class_name, cfg, top_k, top_p, temperature, seed, num_images)
        except UserError as e:
            raise gr.Error(str(e), print_exception=False) from None
        return list(zip(r.images, r.captions)), r.strip, r.timing

    defaults = model.defaults  # the sliders start at the preset's values (the CLI's default preset)
    with gr.Blocks(title=title, analytics_enabled=False) as blocks:
        kind = ("A text-to-image HART model" if model.is_text
                else f"A class-conditional HART model: {len(names)} classes")
        gr.Markdown(
            f"# {title}\n"
            f"{kind}, {R}x{R} images, {len(pn)} scales "
            f"({pn[0]}x{pn[0]} .. {pn[-1]}x{pn[-1]} tokens). Each scale predicts a finer token map "
            "from all the coarser ones"
            + ("; a small diffusion head then adds the continuous residual." if model.has_residual else ".")
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                if model.is_text:
                    examples = prompt_examples(pipeline)
                    class_in = gr.Textbox(value=examples[0], label="Prompt", lines=2, max_lines=4,
                                          elem_id="prompt")
                    gr.Examples([[e] for e in examples], inputs=[class_in], label="Examples")
                else:
                    class_in = gr.Dropdown(names, value=names[0], label="Class", elem_id="class")
                cfg_in = gr.Slider(0, 10, value=defaults.cfg, step=0.1, label="CFG (guidance at the last scale)",
                                   elem_id="cfg")
                topk_in = gr.Slider(0, model.codebook_size, value=min(defaults.top_k, model.codebook_size), step=1,
                                    label="Top-k (0: off)", elem_id="top_k")
                topp_in = gr.Slider(0.01, 1.0, value=defaults.top_p, step=0.01, label="Top-p", elem_id="top_p")
                temp_in = gr.Slider(0.05, 2.0, value=defaults.temperature, step=0.05, label="Temperature", elem_id="temperature")
                with gr.Row():
                    seed_in = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed",
                                        elem_id="seed", scale=3)
                    dice = gr.Button("Randomise", elem_id="randomise", scale=1, min_width=60)
                num_in = gr.Slider(1, model.max_images, value=min(8, model.max_images), step=1,
                                   label="Number of images", elem_id="num_images")
                run = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="Images", columns=4, height="auto", format="png",
                                     elem_id="gallery", elem_classes=["pixelated"], buttons=["download", "fullscreen"])
                gr.Markdown("**After every scale**: the decoded token maps from 1x1 up to full size"
                            + (", the last one without and then with the residual" if model.has_residual else "")
                            + f" (first {STRIP_MAX_ROWS} images).")
                strip = gr.Image(label="After every scale", show_label=False, type="pil", format="png",
                                 elem_id="strip", interactive=False, buttons=[])
                timing = gr.Textbox(label="Generation time", elem_id="timing", interactive=False)
        dice.click(lambda: random.randint(0, MAX_SEED), None, seed_in, queue=False, api_visibility="private")
        inputs = [class_in, cfg_in, topk_in, topp_in, temp_in, seed_in, num_in]
        # preprocess=False: the raw values reach DemoModel.parse, which checks every one with
        # its own readable message (gradio's checks would also log a traceback per bad value).
        # Not gradio's batch=True: there one bad request fails the whole batch (and its
        # validator= does not work with batch=True in gradio 6); here each request runs in its
        # own worker (concurrency_limit of them at once), is checked alone, and the workers'
        # requests meet in DemoModel's batcher.
        run.click(generate, inputs, [gallery, strip, timing], api_name="generate",
                  concurrency_limit=model.workers, preprocess=False)
    blocks.queue(max_size=queue_size, default_concurrency_limit=1)
    blocks.demo_model = model  # for tests and callers that want the plain-Python path
    return blocks


def launch_options() -> dict:
    """Keyword arguments for ``Blocks.launch`` shared by ``main`` and the screenshot tool."""
    return dict(theme=gr.themes.Default(font=THEME_FONTS, font_mono=["ui-monospace", "monospace"]), css=CSS,
                ssr_mode=False, mcp_server=False, pwa=False, enable_monitoring=False,
                footer_links=[], show_error=False)


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


@cli_entry
def main(argv=None):
    intro, examples = __doc__.split("\n\n")[:2]
    p = argparse.ArgumentParser(prog="hart demo", description=intro, epilog="examples:\n" + examples,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, metavar="DIR",
                   help="model folder with tokenizer/ and generator/ (default: the bundled model; "
                        "default-t2i: the bundled text-to-image model)")
    p.add_argument("--text-encoder-path", default=None, metavar="DIR",
                   help="text models: the encoder's folder (default: the one recorded in the model's config)")
    p.add_argument("--sampling", default=None, metavar="PRESET",
                   help=f"sampling preset the sliders start from ({', '.join(SAMPLING_PRESETS)}; default: the "
                        f"model's own, e.g. hart for a converted HART release, else {DEFAULT_PRESET})")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--share", action="store_true", help="also make a public gradio.live link")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--time-limit", type=float, default=60.0, metavar="S",
                   help="seconds one request may run before it is stopped (default 60; 0: no limit)")
    p.add_argument("--max-images", type=int, default=16, metavar="N", help="most images per request (default 16)")
    p.add_argument("--queue-size", type=int, default=16, metavar="N",
                   help="requests that may wait in the queue besides those being sampled (default 16)")
    p.add_argument("--max-batch-size", type=int, default=8, metavar="N",
                   help=f"most requests merged into one sampler batch (default 8, at most {MAX_BATCH_REQUESTS}; "
                   "1: one at a time)")
    p.add_argument("--max-batch-images", type=int, default=64, metavar="N",
                   help="most images in one sampler batch (default 64; a request larger than this runs alone)")
    p.add_argument("--batch-wait", type=float, default=0.0, metavar="S",
                   help="seconds a batch waits for more requests before it starts (default 0)")
    args = p.parse_args(argv)
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be in 1..65535, got {args.port}")
    if args.time_limit < 0 or not math.isfinite(args.time_limit):
        raise UserError(f"--time-limit must be >= 0, got {args.time_limit}")
    if args.max_images < 1 or args.queue_size < 1 or args.max_batch_images < 1:
        raise UserError("--max-images, --queue-size and --max-batch-images must be >= 1")
    if not 1 <= args.max_batch_size <= MAX_BATCH_REQUESTS:
        raise UserError(f"--max-batch-size must be in 1..{MAX_BATCH_REQUESTS}, got {args.max_batch_size}")
    if not (math.isfinite(args.batch_wait) and 0 <= args.batch_wait <= 10):
        raise UserError(f"--batch-wait must be in 0..10 seconds, got {args.batch_wait}")
    if args.sampling:
        SamplingOptions.preset(args.sampling)  # an unknown preset is one line before the model loads
    pipeline = load_pipeline(args.model, device=str(resolve_device(args.device)), text_encoder_path=args.text_encoder_path)
    blocks = build_demo(pipeline, max_images=args.max_images, time_limit=args.time_limit or None,
                        queue_size=args.queue_size, max_batch_size=args.max_batch_size,
                        max_batch_images=args.max_batch_images, batch_wait=args.batch_wait,
                        sampling=args.sampling or pipeline.generator.config.display.sampling or DEFAULT_PRESET)
    try:
        blocks.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_options())
    except OSError as e:
        raise UserError(f"cannot serve on {args.host}:{args.port}: {e}") from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
