"""Gradio demo: class- or text-conditional generation with the per-scale view of next-scale prediction.

    hart demo --model runs/fm                       # http://127.0.0.1:7860
    python -m demo --model runs/fm --port 8080
    hart demo --model runs/fm --host 0.0.0.0        # reachable from other machines
    hart demo --model runs/fm --share               # public gradio.live link (asked for only)

The page has the class (by name), CFG, top-k, top-p, temperature, seed (with a randomise
button) and the number of images; it shows the images, a strip of the first four images after
every scale (1x1 .. full, the last scale with and without the continuous residual) and the time.

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
import math  # noqa: E402
import random  # noqa: E402

import gradio as gr  # noqa: E402

from demo.model import (  # noqa: E402
    MAX_SEED, STRIP_MAX_ROWS, DemoModel, load_pipeline, prompt_examples,
)
from hart.common.args import add_device_argument  # noqa: E402
from hart.common.dist import resolve_device  # noqa: E402
from hart.common.errors import UserError, cli_entry  # noqa: E402
from sampling import HARTPipeline  # noqa: E402
from sampling.options import DEFAULT_PRESET, SAMPLING_PRESETS, SamplingOptions  # noqa: E402

# gradio runs each admitted request in a worker thread of its own (anyio's pool: 40 threads),
# and admits twice --max-batch-size at once
MAX_BATCH_REQUESTS = 16


# passed to launch() (gradio 6 takes theme and css there, not in Blocks()); system fonts so
# the page asks no font server
THEME_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
CSS = ".pixelated img { image-rendering: pixelated; }"


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

    def generate(subject, cfg, top_k, top_p, temperature, seed, num_images):
        try:
            r = model.generate(subject, cfg, top_k, top_p, temperature, seed, num_images)
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
    add_device_argument(p)
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
    check_bindable(args.host, args.port)
    try:  # quiet: gradio's banner speaks of launch() arguments; the lines below speak of our flags
        blocks.launch(server_name=args.host, server_port=args.port, share=args.share, quiet=True,
                      prevent_thread_lock=True, **launch_options())
    except OSError as e:
        raise UserError(f"cannot serve on {args.host}:{args.port}: {e}; pick another --port") from None
    print(f"serving on {blocks.local_url} (Ctrl-C stops it)", flush=True)
    if blocks.share_url:
        print(f"public link: {blocks.share_url}", flush=True)
    blocks.block_thread()
    return 0


def check_bindable(host: str, port: int) -> None:
    """One line when ``host:port`` cannot be served on (an unknown host name, an address not of
    this machine, a port in use), naming the flag to change; nothing is left bound."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(f"--host {host}: no such address or host name ({e.strerror})") from None
    first = None
    for family, kind, proto, _, addr in infos:  # localhost may be ::1 and 127.0.0.1: one that binds will do
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            try:
                sock.bind(addr)
                return
            except OSError as e:
                first = first or e
    if first.errno == errno.EADDRINUSE:
        raise UserError(f"port {port} on {host} is in use: pick another with --port")
    if first.errno == errno.EADDRNOTAVAIL:
        raise UserError(f"--host {host} is not an address of this machine: use 127.0.0.1 (this machine "
                        "only) or 0.0.0.0 (every interface)")
    raise UserError(f"cannot serve on {host}:{port}: {first.strerror}")


if __name__ == "__main__":
    raise SystemExit(main())
