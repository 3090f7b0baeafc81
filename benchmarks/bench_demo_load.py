"""The demo under load: many concurrent API clients, one request at a time vs merged batches.

For each mode it starts ``python -m demo`` (the bundled default model unless ``--model``) on a
free port of 127.0.0.1, sends one warm-up request, then fires every client's request at once
(each asks for ``--images`` images with its own seed and class, the demo's default sampling
settings) and prints one row per mode:

    | mode | completed | refused | wall s | images/s | median latency s | max latency s |
      server CPU ms / request | client CPU s |

and the throughput ratio of the last mode over the first. The clients are what a browser does,
written on asyncio and httpx in one thread: gradio's REST call (``POST
/gradio_api/call/generate``, then its event stream), then every file of the answer fetched at
once. They are light on purpose: one ``gradio_client.Client`` per visitor costs the load
generator about twice the server's CPU per request, so on a small machine the benchmark would
time its own clients. Server CPU is the demo process's user + system time over the timed
requests (Linux), divided by the completed requests: the serving cost per request, sampling
included; ``--model tiny-random`` (a tiny random 16x16 model, sampling in milliseconds) leaves
mostly the serving.

Before the modes it times the demo's sampling work alone in this process
(``DemoModel.sample_batch`` of 1 and of ``B`` merged requests: the batch, its decode and each
request's strip): the per-image gain that merging can give at most on this
machine. Latency: from the common start to the client's last file. ``--max-batch-size 1`` is
the one-at-a-time demo; every other setting (queue size, time limit) is the demo's default in
both modes unless given here. Each client checks that its images carry its own seeds'
captions, and the images of a request are compared across modes (same seeds: the same images,
up to the decoder's float rounding). ``--no-downloads``: the clients skip the files (and the
pixel checks).

Loopback only; the request count is bounded (one request per client and mode).

    OMP_NUM_THREADS=1 python benchmarks/bench_demo_load.py --model tiny-random --clients 16
    OMP_NUM_THREADS=1 python benchmarks/bench_demo_load.py
    python benchmarks/bench_demo_load.py --clients 20 --images 4 --modes 1 8 --queue-size 16
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_demo(args, batch: int, tmp: Path):
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "demo", "--port", str(port), "--max-batch-size", str(batch),
           "--queue-size", str(args.queue_size), "--max-images", str(max(args.images, 16))]
    if args.model:
        cmd += ["--model", args.model]
    cmd += ["--device", args.device]
    log = open(tmp / f"demo-{batch}.log", "wb")
    env = dict(os.environ, GRADIO_TEMP_DIR=str(tmp / "gradio"), PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"demo exited with {proc.returncode}:\n{(tmp / f'demo-{batch}.log').read_text()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return proc, log, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("demo did not start in 120 s")
        time.sleep(0.3)


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _refusal(r) -> str:
    """The message of a refused call: gradio's JSON ``detail`` (a full queue: HTTP 503), else the text."""
    try:
        detail = r.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail or (r.text.strip().splitlines() or [f"HTTP {r.status_code}"])[0])


async def one_request(http, url: str, data: list, download: bool) -> dict:
    """One visitor as a browser would be: gradio's REST call (join, then the event stream), then
    every file of the answer fetched at once. Returns the outputs, or the refusal's message (a
    connection error counts as one)."""
    import httpx

    try:
        return await _one_request(http, url, data, download)
    except httpx.HTTPError as e:
        return dict(ok=False, error=f"{type(e).__name__}: {e}".strip().splitlines()[0])


async def _one_request(http, url: str, data: list, download: bool) -> dict:
    r = await http.post(f"{url}gradio_api/call/generate", json={"data": data})
    if r.status_code != 200:
        return dict(ok=False, error=_refusal(r))
    event, payload = None, None
    async with http.stream("GET", f"{url}gradio_api/call/generate/{r.json()['event_id']}") as s:
        async for line in s.aiter_lines():
            if line.startswith("event:"):
                event = line[len("event:"):].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                payload = json.loads(line[len("data:"):])
                break
    if event != "complete":
        msg = payload.get("error") if isinstance(payload, dict) else payload
        fallback = "server error (message hidden)" if event == "error" else f"stream ended with {event!r}"
        return dict(ok=False, error=str(msg or fallback).strip().splitlines()[0])
    gallery, strip, timing = payload
    out = dict(ok=True, captions=[g["caption"] for g in gallery], timing=timing, pixels=None)
    if download:
        files = [g["image"]["url"] for g in gallery] + [strip["url"]]
        got = await asyncio.gather(*(http.get(f) for f in files))
        for f, g in zip(files, got):
            if g.status_code != 200:
                return dict(ok=False, error=f"HTTP {g.status_code} fetching {f}")
        out["pixels"] = [np.asarray(Image.open(io.BytesIO(g.content)).convert("RGB"), dtype=np.int16)
                         for g in got[:-1]]
    return out


def run_mode(args, batch: int, tmp: Path) -> dict:
    import httpx

    proc, log, url = start_demo(args, batch, tmp)
    try:
        info = httpx.get(f"{url}gradio_api/info", timeout=30).json()
        params = info["named_endpoints"]["/generate"]["parameters"]
        names = params[0]["type"]["enum"]
        defaults = {p["parameter_name"]: p["parameter_default"] for p in params}

        def request(i: int) -> list:
            return [names[i % len(names)], defaults["cfg"], defaults["top_k"], defaults["top_p"],
                    defaults["temperature"], 1000 * i, args.images]

        async def timed(http, i: int, t_start: float) -> tuple[int, dict]:
            res = await one_request(http, url, request(i), not args.no_downloads)
            res["end"] = time.perf_counter() - t_start
            if res["ok"]:
                want = [f"{names[i % len(names)]}, seed {1000 * i + j}" for j in range(args.images)]
                if res["captions"] != want:
                    raise RuntimeError(f"client {i} got {res['captions']}, expected {want}")
            return i, res

        async def all_clients() -> tuple[dict, float, float, float | None]:
            limits = httpx.Limits(max_connections=8 * args.clients, max_keepalive_connections=8 * args.clients)
            async with httpx.AsyncClient(timeout=args.timeout, limits=limits) as http:
                warm = await one_request(http, url, request(0), not args.no_downloads)  # not timed
                if not warm["ok"]:
                    raise SystemExit(f"mode max-batch-size {batch}: the warm-up request failed: {warm['error']}")
                server0, client0, t_start = process_cpu_seconds(proc.pid), time.process_time(), time.perf_counter()
                done = await asyncio.wait_for(asyncio.gather(*(timed(http, i, t_start) for i in range(args.clients))),
                                              args.timeout)
                server1 = process_cpu_seconds(proc.pid)
                return (dict(done), time.process_time() - client0,
                        None if server0 is None or server1 is None else server1 - server0)

        try:
            results, client_cpu, server_cpu = asyncio.run(all_clients())
        except asyncio.TimeoutError:
            raise SystemExit(f"mode max-batch-size {batch}: the clients did not finish in {args.timeout} s (a hang)")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    done = [r for r in results.values() if r["ok"]]
    wall = max(r["end"] for r in results.values())
    lat = [r["end"] for r in done]
    return dict(batch=batch, results=results, completed=len(done), refused=args.clients - len(done), wall=wall,
                ips=len(done) * args.images / wall, median=statistics.median(lat) if lat else float("nan"),
                max=max(lat) if lat else float("nan"), client_cpu=client_cpu, server_cpu=server_cpu,
                errors=sorted({r["error"] for r in results.values() if not r["ok"]}))


def tiny_random_model(folder: Path) -> str:
    """A tiny random class model (16x16, 3 classes): serving costs without the sampler's."""
    import torch

    from hart.config import GeneratorConfig
    from hart.model import HARTGenerator
    from tokenizer import HybridTokenizer, TokenizerConfig

    torch.manual_seed(0)
    tok = HybridTokenizer(TokenizerConfig.from_name("tiny"))
    tok.save_pretrained(folder / "tokenizer")
    c = tok.config
    HARTGenerator(GeneratorConfig.from_name("tiny", num_classes=3, display=dict(class_names=("a", "b", "c")),
                                            patch_nums=c.patch_nums, codebook_size=c.codebook_size,
                                            z_channels=c.z_channels)).save_pretrained(folder / "generator")
    return str(folder)


def sampler_ms_per_image(model, requests: list[int], images: int, repeats: int = 2, device: str = "cpu") -> dict:
    """The ceiling of merging on this machine: the demo's own sampling work in process
    (``DemoModel.sample_batch``: the batch, its final decode and each request's strip), for
    ``r`` merged requests of ``images`` images each; best of ``repeats`` after a warm-up, ms per image."""
    import torch

    from demo.model import DemoModel, Job, prompt_examples
    from sampling import HARTPipeline

    pipe = HARTPipeline.from_pretrained(model, device=device)
    demo = DemoModel(pipe, time_limit=None)
    d = demo.defaults
    labels = prompt_examples(pipe) if demo.is_text else demo.names
    sync = torch.cuda.synchronize if pipe.device.type == "cuda" else (lambda: None)
    out = {}
    try:
        for r in requests:
            jobs = [demo.parse(labels[i % len(labels)], d.cfg, min(d.top_k, demo.codebook_size), d.top_p,
                               d.temperature, 1000 * i, images) for i in range(r)]
            jobs = [Job(*j) for j in jobs]
            demo.sample_batch(jobs)
            best = float("inf")
            for _ in range(repeats):
                sync()
                t0 = time.perf_counter()
                demo.sample_batch(jobs)
                sync()
                best = min(best, time.perf_counter() - t0)
            out[r * images] = 1000 * best / (r * images)
    finally:
        demo.deadline.remove()
    return out


def server_ms(row: dict) -> str:
    if row["server_cpu"] is None or not row["completed"]:
        return "n/a"
    return f"{1000 * row['server_cpu'] / row['completed']:.0f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: the bundled default model)")
    p.add_argument("--clients", type=int, default=20, help="concurrent clients (default 20)")
    p.add_argument("--images", type=int, default=4, help="images per request (default 4)")
    p.add_argument("--modes", type=int, nargs="+", default=[1, 8], metavar="B",
                   help="--max-batch-size of each mode (default 1 8: one at a time, then the demo's default)")
    p.add_argument("--queue-size", type=int, default=16, help="the demo's --queue-size in every mode (default 16)")
    p.add_argument("--timeout", type=float, default=600, help="seconds before a client counts as hung")
    p.add_argument("--device", default="cpu", help="where the demo and the in-process sampler run: cpu or cuda")
    p.add_argument("--no-downloads", action="store_true",
                   help="clients do not fetch their answer's files (what the downloads cost)")
    args = p.parse_args(argv)
    if args.clients < 1 or args.images < 1 or args.clients > 64:
        p.error("--clients must be in 1..64 and --images >= 1")
    import torch

    print(f"clients={args.clients} images_per_request={args.images} queue_size={args.queue_size} "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} torch={torch.__version__} device={args.device}")
    sizes = sorted({args.images * b for b in args.modes})
    with tempfile.TemporaryDirectory() as d:
        if args.model == "tiny-random":  # made once, for the sampling alone and for the demo
            args.model = tiny_random_model(Path(d) / "tiny-random")
        ceiling = sampler_ms_per_image(args.model, sorted(set(args.modes)), args.images, device=args.device)
        print("the demo's sampling alone (in process: the batch, its decode and the strips): "
              + ", ".join(f"batch {b}: {ms:.1f} ms/image" for b, ms in ceiling.items())
              + f"; batch {sizes[-1]} vs {sizes[0]}: {ceiling[sizes[0]] / ceiling[sizes[-1]]:.2f}x per image")
        rows = [run_mode(args, b, Path(d)) for b in args.modes]
    print("\n| mode | completed | refused | wall s | images/s | median latency s | max latency s "
          "| server CPU ms / request | client CPU s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mode = "one at a time (--max-batch-size 1)" if r["batch"] == 1 else f"batched (--max-batch-size {r['batch']})"
        print(f"| {mode} | {r['completed']}/{args.clients} | {r['refused']} | {r['wall']:.2f} | {r['ips']:.2f} "
              f"| {r['median']:.2f} | {r['max']:.2f} | {server_ms(r)} | {r['client_cpu']:.2f} |")
    for r in rows:
        for e in r["errors"]:
            print(f"max-batch-size {r['batch']}: refused with: {e}")
    base = rows[0]
    for r in rows[1:]:
        print(f"throughput ratio (max-batch-size {r['batch']} / {base['batch']}): {r['ips'] / base['ips']:.2f}x")
        both = [] if args.no_downloads else [  # without downloads there are no pixels to compare
            i for i in r["results"] if r["results"][i]["ok"] and base["results"].get(i, {}).get("ok")]
        diff = max((int(np.abs(a - b).max()) for i in both
                    for a, b in zip(r["results"][i]["pixels"], base["results"][i]["pixels"])), default=0)
        print(f"same requests in both modes: {len(both)}; largest pixel difference between them: {diff} "
              "(uint8 levels)")
        merged = sum("sampled with" in r["results"][i]["timing"] for i in r["results"] if r["results"][i]["ok"])
        print(f"max-batch-size {r['batch']}: {merged} of {r['completed']} requests shared a sampler batch")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
