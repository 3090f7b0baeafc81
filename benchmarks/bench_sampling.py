"""Sampling speed against the dense compute floor.

Fixed config: a VAR-shaped generator of depth 8 (width 512, 8 heads, 10 scales, codebook
4096, z 32; preset ``var-d8``) and the VAR tokenizer shape, random weights, CFG on (VAR's
FID settings: cfg 1.5, top-k 900, top-p 0.96). For each batch and dtype it prints one line

    batch=B dtype=DT ms_per_image=X floor_ms=Y ratio=Z naive_ratio=W decode_ms=V

* ms_per_image: the engine (static KV cache, one forward per scale), final decode left out;
* floor_ms: one teacher-forced forward over the whole sequence at the same doubled batch
  and dtype, per image (the dense compute floor);
* ratio = ms_per_image / floor_ms; naive_ratio: the same for a sampler without a cache
  that recomputes the whole prefix at every scale;
* decode_ms: the tokenizer decode of the final latent, per image (fp32).

Times are medians over ``--repeats`` runs after one warm-up run.

With ``--var-src PATH`` (a checkout of FoundationVision/VAR) the generator and tokenizer are
VAR's own, built with its constructors and converted with ``hart convert``, and VAR's sampler
(``autoregressive_infer_cfg``, its decode left out) runs on the same weights in the same
process, adding ``var_ms_per_image=X speedup_vs_var=Y`` (fp32 lines; the official sampler has
no bf16 path on the CPU).

    python benchmarks/bench_sampling.py
    python benchmarks/bench_sampling.py --var-src /path/to/VAR --dtypes fp32 --batches 8 1
    python benchmarks/bench_sampling.py --batches 1 --dtypes fp32 --repeats 5
    python benchmarks/bench_sampling.py --device cuda --batches 1 64 --compile

``--config var-d16`` takes VAR's 256px shape (depth 16, width 1024, 310M) instead. On a GPU,
``--engines kernels eager compile`` times our engine with the Triton kernels, with eager
PyTorch (``kernels="torch"``), and with ``--compile`` (inductor, ``mode="reduce-overhead"``:
each scale's step captured into a CUDA graph, as gpt-fast does), and ``graph`` the whole run
as one CUDA graph with the Triton kernels (``cuda_graph=True``, :mod:`sampling.graphs`; the
warm-up run captures, the timed runs replay), one line each (``engine=NAME ... images_per_s=X``);
VAR's sampler runs under the same autocast:

    python benchmarks/bench_sampling.py --device cuda --config var-d16 --dtypes bf16 --batches 1 64 \
        --engines kernels eager compile graph --skip-naive --var-src /path/to/VAR
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from hart.config import GeneratorConfig
from hart.model import HARTGenerator
from hart import kernels
from sampling.engine import DTYPES, SamplingEngine
from sampling.seeds import make_generators
from sampling.options import SamplingOptions
from tokenizer import HybridTokenizer, TokenizerCode, TokenizerConfig

OPTIONS = SamplingOptions(cfg=1.5, top_k=900, top_p=0.96)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs, after one warm-up."""
    fn()
    out = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def _autocast(device, dtype: str):
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype])


@torch.no_grad()
def naive_sample(gen: HARTGenerator, tok: HybridTokenizer, labels, gens, opt: SamplingOptions, dtype: str):
    """Baseline without a cache: every scale reruns the blocks over the whole prefix."""
    c = gen.config
    B, K, V = labels.numel(), c.num_scales, c.codebook_size
    rows = torch.cat([labels, torch.full_like(labels, c.null_class)])
    f_hat, ids = None, []
    with _autocast(labels.device, dtype):
        cond = gen.condition(rows)
        xs = [cond.prefix]
        for k, (start, end) in enumerate(c.scale_ranges):
            h = gen.forward_tokens(torch.cat(xs, 1), cond, 0)  # (2B, end, C), no cache
            logits, _ = gen.head_logits(h[:, start:end], cond.vec)
            T = end - start
            u = torch.stack([torch.rand(T, generator=g) for g in gens]).to(labels.device).reshape(-1)
            ids_k = kernels.cfg_sample(
                logits[:B].reshape(B * T, V), logits[B:].reshape(B * T, V), u, opt.guidance(k, K),
                opt.temperature, opt.top_k, opt.top_p,
            ).view(B, T)
            f_hat, nxt = tok.next_scale_input(k, f_hat, ids_k)
            ids.append(ids_k)
            if nxt is not None:
                e = gen.embed_inputs(nxt, end)
                xs.append(torch.cat([e, e]))
    return ids, f_hat


ENGINES = {"kernels": dict(kernels="auto"), "eager": dict(kernels="torch"), "compile": dict(compile=True),
           "graph": dict(kernels="auto", cuda_graph=True)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="var-d8", choices=["var-d8", "var-d16"], help="generator shape (default var-d8)")
    p.add_argument("--batches", type=int, nargs="+", default=[8, 1], help="batch sizes (default 8 1)")
    p.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"], help="compute dtypes")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median; default 3)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--compile", action="store_true", help="torch.compile the engine's per-scale step")
    p.add_argument("--engines", nargs="+", choices=list(ENGINES), default=None,
                   help="time several engine variants, one line each (default: kernels, or compile with --compile)")
    p.add_argument("--skip-naive", action="store_true", help="leave out the naive sampler (prints naive_ratio=nan)")
    p.add_argument("--var-src", default=None, metavar="PATH",
                   help="a FoundationVision/VAR checkout: time its sampler on the same (converted) weights")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    engines = args.engines or (["compile"] if args.compile else ["kernels"])

    torch.manual_seed(0)
    var_sample = None
    if args.var_src:
        from var_official import build, sampler_without_decode

        cv = GeneratorConfig.from_name(args.config)
        vae, var, tok, gen = build(args.var_src, cv.depth, cv.width, cv.heads)
        vae, var, tok, gen = vae.to(device), var.to(device), tok.to(device), gen.to(device)  # VAR holds its VAE by proxy
        var_sample = sampler_without_decode(var)
    else:
        gen = HARTGenerator(GeneratorConfig.from_name(args.config)).to(device).eval()
        tok = HybridTokenizer(TokenizerConfig.from_name("var-256")).to(device).eval()
    c = gen.config
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu threads {torch.get_num_threads()}"
    print(f"# {args.config}: depth {c.depth} width {c.width} heads {c.heads} scales {c.num_scales} "
          f"V {c.codebook_size} z {c.z_channels} L {c.seq_len}; cfg {OPTIONS.cfg} top-k {OPTIONS.top_k} "
          f"top-p {OPTIONS.top_p}; {where}; engines {' '.join(engines)}", flush=True)

    for dtype in args.dtypes:
        built = {name: SamplingEngine(gen, tok, dtype=dtype, **ENGINES[name]) for name in engines}
        for B in args.batches:
            labels = torch.arange(B, device=device) % c.num_classes
            seeds = list(range(B))
            rows = torch.cat([labels, torch.full_like(labels, c.null_class)])
            teacher = torch.randn(2 * B, c.seq_len - 1, c.z_channels, device=device)

            def run_floor():
                with torch.no_grad(), _autocast(device, dtype):
                    return gen(rows, teacher).logits

            t_floor = _time(run_floor, device, args.repeats)
            t_var = None
            if var_sample is not None and (dtype == "fp32" or device.type == "cuda"):
                var_labels = labels.clone()

                def run_var():
                    with torch.no_grad(), _autocast(device, dtype):
                        return var_sample(B=B, label_B=var_labels, g_seed=0, cfg=OPTIONS.cfg, top_k=OPTIONS.top_k,
                                          top_p=OPTIONS.top_p, more_smooth=False)

                t_var = _time(run_var, device, args.repeats)
                print(f"batch={B} dtype={dtype} engine=var ms_per_image={1e3 * t_var / B:.2f} "
                      f"images_per_s={B / t_var:.1f} ratio={t_var / t_floor:.3f}", flush=True)
            if args.skip_naive:
                t_naive = float("nan")
            else:
                t_naive = _time(lambda: naive_sample(gen, tok, labels, make_generators(seeds), OPTIONS, dtype),
                                device, max(1, args.repeats - 1))
            for name, engine in built.items():
                def run_engine():
                    return engine.sample(labels, make_generators(seeds), OPTIONS, decode=False)

                t_sample = _time(run_engine, device, args.repeats)
                out = run_engine()
                code = TokenizerCode(ids=out.ids, residual=out.residual, f_hat=out.f_hat)
                with torch.no_grad():
                    t_decode = _time(lambda: tok.decode(code), device, max(1, args.repeats - 1))
                ms, floor = 1e3 * t_sample / B, 1e3 * t_floor / B
                line = (f"batch={B} dtype={dtype} ms_per_image={ms:.2f} floor_ms={floor:.2f} "
                        f"ratio={t_sample / t_floor:.3f} naive_ratio={t_naive / t_floor:.3f} decode_ms={1e3 * t_decode / B:.2f}")
                if args.engines:
                    line = line.replace(f"dtype={dtype} ", f"dtype={dtype} engine={name} ") + f" images_per_s={B / t_sample:.1f}"
                if t_var is not None:
                    line += f" var_ms_per_image={1e3 * t_var / B:.2f} speedup_vs_var={t_var / t_sample:.3f}"
                print(line, flush=True)


if __name__ == "__main__":
    main()
