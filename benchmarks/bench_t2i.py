"""Sampling time of a text-conditioned generator against a class-conditional one of the same
depth and width, in the same process, alternating A/B.

Models: ``fm-s`` (class, VAR layout) and ``shapes-t2i`` (text, HART's layout: a 20-token
MiniLM prefix, RMSNorm, SwiGLU, RoPE), both 6 blocks of width 256 on the fm-32 token layout
(7 scales, 8x8 latent), random weights, CFG on, residual head on, decode left out. Prints

    batch=B class_ms=X text_ms=Y ratio=Y/X encode_ms=E ratio_with_encoder=(Y+E)/X

per image (medians over ``--repeats`` alternating rounds after a warm-up); ``encode_ms`` is
MiniLM encoding the batch's prompts (a text model pays it once per prompt).

    python benchmarks/bench_t2i.py --batches 8 1 --repeats 7
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from hart.config import GeneratorConfig
from hart.model import HARTGenerator
from sampling.engine import SamplingEngine
from sampling.seeds import make_generators
from sampling.options import SamplingOptions
from tokenizer import HybridTokenizer, TokenizerConfig

PROMPT = "a small red circle left of a large blue square"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[8, 1])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    tok = HybridTokenizer(TokenizerConfig.from_name("fm-32")).eval()
    tc = tok.config
    fit = dict(patch_nums=tc.patch_nums, codebook_size=tc.codebook_size, z_channels=tc.z_channels, stats=dict(residual_scale=0.1))
    cls = HARTGenerator(GeneratorConfig.from_name("fm-s", **fit)).eval()
    t2i = HARTGenerator(GeneratorConfig.from_name("shapes-t2i", **fit)).eval()
    from hart.text import load_text_encoder

    enc = load_text_encoder("minilm", t2i.config.context_tokens)
    opt = SamplingOptions(cfg=1.5, top_k=0, top_p=1.0)
    e_cls, e_t2i = SamplingEngine(cls, tok), SamplingEngine(t2i, tok)
    print(f"threads={torch.get_num_threads()} params class={sum(q.numel() for q in cls.parameters()) / 1e6:.2f}M "
          f"text={sum(q.numel() for q in t2i.parameters()) / 1e6:.2f}M (+ MiniLM 22.7M)")
    for B in a.batches:
        labels = list(range(B))
        prompts = [PROMPT] * B
        ctx = enc.encode(prompts)

        def run_cls():
            e_cls.sample(labels, make_generators(range(B)), opt, decode=False)

        def run_t2i():
            e_t2i.sample(ctx, make_generators(range(B)), opt, decode=False)

        def run_enc():
            enc.encode(prompts)

        fns = {"class": run_cls, "text": run_t2i, "encode": run_enc}
        for f in fns.values():
            f()  # warm-up
        times = {k: [] for k in fns}
        for _ in range(a.repeats):
            for k, f in fns.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
        ms = {k: 1000 * statistics.median(v) / B for k, v in times.items()}
        print(f"batch={B} class_ms={ms['class']:.2f} text_ms={ms['text']:.2f} ratio={ms['text'] / ms['class']:.3f} "
              f"encode_ms={ms['encode']:.2f} ratio_with_encoder={(ms['text'] + ms['encode']) / ms['class']:.3f}")


if __name__ == "__main__":
    main()
