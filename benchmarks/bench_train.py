"""Training throughput of the generator on this machine: tokens/s and MFU.

    python benchmarks/bench_train.py                      # fm-s (32x32 CPU preset) and var-d8, fp32 and bf16
    python benchmarks/bench_train.py --configs var-d8 --dtypes bf16 --steps 5

For each config and dtype it prints
    config=NAME dtype=DT tokens_per_s=X mfu=Y
where MFU = model FLOPs per second / the fp32 matmul peak this script measures on the same
threads (a large square matmul). Model FLOPs = 3 x forward (matmuls of every token, the
attention over the full L x L score matrix, the head), the usual accounting. With both dtypes
it adds ``config=NAME bf16_speedup_vs_fp32=R``, the ratio of the two steps' rates (far below 1
on a CPU without avx512_bf16 or AMX, where autocast emulates bf16).

The step timed is the real one from ``hart.train``: teacher inputs from random ids through a
random tokenizer, forward, cross-entropy (+ the diffusion loss where the preset has the
head), backward, gradient clipping, AdamW, EMA.

With ``--var-src PATH`` (a checkout of FoundationVision/VAR), ``var-d8`` is built with VAR's
own constructors and converted with ``hart convert``, and VAR's training step (teacher
inputs from the ids, forward, cross-entropy, backward, clipping, AdamW: its trainer.py
without image encoding or logging) is timed on the same weights and ids in the same process,
alternating with ours, under the same autocast for bf16 (VAR's trainer runs under AMP),
adding ``var_tokens_per_s=X speedup_vs_var=Y``:

    python benchmarks/bench_train.py --var-src /path/to/VAR --configs var-d8 --dtypes fp32 bf16

With ``--sdpa-only``, the other step timed is ours with attention always through PyTorch's
SDPA (``hart.attention.attention`` takes an explicit path for short bf16 sequences on the CPU),
adding ``sdpa_only_tokens_per_s=X speedup_vs_sdpa_only=Y``:

    python benchmarks/bench_train.py --configs fm-s --dtypes bf16 --sdpa-only

On a GPU (``--device cuda``) the peak is the measured bf16 (or fp32) matmul rate of the GPU
(8192^3 products), CUDA is synchronized around every step, and ``--attention sdpa flex``
times our step with each whole-sequence attention (flex: FlexAttention with a block-causal
``BlockMask``, ``hart train --attention flex``; ``+compile``: with ``hart train --compile``, each
block compiled; ``+compile-all``: the whole forward and loss compiled as one graph, a probe),
alternating with VAR's step where
``--var-src`` is given (var-d8 / var-d16 built with VAR's constructors):

    python benchmarks/bench_train.py --device cuda --configs var-d16 --dtypes bf16 \
        --attention sdpa flex sdpa+compile flex+compile --var-src /path/to/VAR
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from hart import attention as attn
from hart.config import GeneratorConfig
from hart.common.dist import DistInfo, autocast, cpu_has_bf16, resolve_dtype
from hart.train import GeneratorTrainer, build_parser
from tokenizer import HybridTokenizer, TokenizerConfig

BENCH = {
    # name: (generator preset, tokenizer preset, batch)
    "fm-s": ("fm-s", "fm-32", 64),
    "var-d8": ("var-d8", "var-256", 8),
    "var-d16": ("var-d16", "var-256", 32),  # VAR's 256px model (310M); its batch per GPU is 48-64
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(dtype=torch.float32, n=2048, reps=10, device=torch.device("cpu")) -> float:
    """FLOP/s of an n^3 matmul in this dtype on this device (the MFU denominator)."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(2):
        a @ b
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def forward_flops_per_sample(c: GeneratorConfig) -> float:
    C, L, V = c.width, c.seq_len, c.codebook_size
    hidden = int(C * c.mlp_ratio)
    per_token_block = 2 * (3 * C * C + C * C + 2 * C * hidden)  # qkv, proj, fc1, fc2
    attn = 2 * 2 * L * C  # q k^T and p v over the full L x L matrix
    per_token = c.depth * (per_token_block + attn) + 2 * C * V + 2 * c.z_channels * C
    flops = L * per_token
    if c.has_head:  # head MLP on the kept last-scale tokens, batch_mul draws
        n_last = c.patch_nums[-1] ** 2
        w = c.head.width
        head = 2 * (c.z_channels * w + C * w + c.head.depth * (2 * w * w + 3 * w * w) + 2 * w * w + w * c.z_channels)
        flops += n_last * c.training.diff_keep_frac * c.training.diff_batch_mul * head
    return flops


def bench(name: str, dtype: str, steps: int, warmup: int, peak: float, var_src: str | None = None,
          sdpa_only: bool = False, device=torch.device("cpu"), attentions=("sdpa",)) -> tuple[list[str], list[float]]:
    gen_preset, tok_preset, batch = BENCH[name]
    torch.manual_seed(0)
    official = None
    if var_src and name.startswith("var-") and not sdpa_only:
        from var_official import build

        cv = GeneratorConfig.from_name(name)
        vae, var, tok, gen = build(var_src, cv.depth, cv.width, cv.heads)
        official = (vae.to(device), var.to(device).train())
        tok.requires_grad_(False)
        config = gen.config
    else:
        tok = HybridTokenizer(TokenizerConfig.from_name(tok_preset)).eval().requires_grad_(False)
    tok = tok.to(device)
    tc = tok.config
    if official is None:
        config = GeneratorConfig.from_name(gen_preset, patch_nums=tc.patch_nums, codebook_size=tc.codebook_size,
                                           z_channels=tc.z_channels)
    n = tc.latent_size
    labels = torch.randint(0, config.num_classes, (batch,)).to(device)
    ids = [torch.randint(0, tc.codebook_size, (batch, p * p)).to(device) for p in tc.patch_nums]
    residual = (torch.randn(batch, tc.z_channels, n, n) * 0.1).to(device)
    steps_of = {}  # label -> the step to time
    state = None
    for attention in attentions:
        impl, _, compiled = attention.partition("+")
        args = build_parser().parse_args(["--tokenizer", "x", "--data", "synthetic", "--out", "x", "--dtype", dtype,
                                          "--steps", str(steps + warmup), "--device", str(device),
                                          "--attention", impl] + (["--compile"] if compiled == "compile" else []))
        trainer = GeneratorTrainer(config, tok, args, DistInfo(device=device))
        if compiled == "compile-all":  # the probe of a whole compiled forward + loss (not a hart train option)
            trainer.ddp = torch.compile(trainer.objective)
        if official is not None:
            trainer.model.load_state_dict(gen.state_dict())  # the converted official weights
        elif state is None:
            state = trainer.model.state_dict()
        else:
            trainer.model.load_state_dict(state)  # every variant starts from the same weights
        steps_of[attention] = (lambda t: lambda: t.train_step(ids, residual, labels))(trainer)
    if sdpa_only:  # the same step with attention always through SDPA (no explicit CPU path)
        ours = steps_of[attentions[0]]

        def sdpa_step():
            saved, attn.EXPLICIT_MAX_KEYS = attn.EXPLICIT_MAX_KEYS, 0
            try:
                return ours()
            finally:
                attn.EXPLICIT_MAX_KEYS = saved
        steps_of["sdpa_only"] = sdpa_step
    if official is not None:
        from var_official import official_train_step

        vae, var = official
        var_opt = torch.optim.AdamW(var.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
        amp = resolve_dtype(dtype, device)

        def var_step():  # under the same autocast as ours (VAR trains under AMP)
            with autocast(device, amp):
                return official_train_step(vae, var, var_opt, labels, ids)
        steps_of["var"] = var_step
    for _ in range(warmup):
        for fn in steps_of.values():
            fn()
    times = {k: [] for k in steps_of}
    for _ in range(steps):  # alternate, so that drift of a noisy machine hits every variant alike
        for k, fn in steps_of.items():
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    lines, rates = [], []
    for attention in attentions:
        dt = med[attention]
        tokens_per_s = batch * config.seq_len / dt
        rates.append(tokens_per_s)
        mfu = 3 * forward_flops_per_sample(config) * batch / dt / peak
        line = f"config={name} dtype={dtype} batch={batch} "
        if device.type == "cuda" or len(attentions) > 1:
            line += f"attention={attention} "
        line += f"tokens_per_s={tokens_per_s:.0f} mfu={mfu:.2f}"
        if "var" in med:
            dv = med["var"]
            line += f" var_tokens_per_s={batch * config.seq_len / dv:.0f} speedup_vs_var={dv / dt:.3f}"
        if "sdpa_only" in med:
            dv = med["sdpa_only"]
            line += f" sdpa_only_tokens_per_s={batch * config.seq_len / dv:.0f} speedup_vs_sdpa_only={dv / dt:.3f}"
        lines.append(line)
    return lines, rates


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["fm-s", "var-d8"], choices=list(BENCH))
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--attention", nargs="+", default=["sdpa"],
                   choices=[a + c for a in attn.ATTENTION_IMPLS for c in ("", "+compile", "+compile-all")],
                   help="whole-sequence attention(s) of our step (flex needs a GPU); +compile: hart train "
                        "--compile (each block); +compile-all: forward and loss compiled as one (a probe)")
    p.add_argument("--var-src", default=None, metavar="PATH",
                   help="a FoundationVision/VAR checkout: time its training step beside ours (var-d8/var-d16, same dtype)")
    p.add_argument("--sdpa-only", action="store_true",
                   help="instead of VAR, time the same step with attention always through SDPA (hart.attention.attention)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    big = 8192 if device.type == "cuda" else 2048
    peak = matmul_peak(device=device, n=big)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu threads={torch.get_num_threads()}"
    if device.type == "cpu" and not cpu_has_bf16():  # emulated: a 2048^3 bf16 product takes minutes
        bf16_peak = None
        print(f"# {name} fp32_matmul_gflops={peak / 1e9:.0f} bf16: emulated (no avx512_bf16 / amx_bf16)")
    else:
        bf16_peak = matmul_peak(torch.bfloat16, device=device, n=big)
        print(f"# {name} fp32_matmul_gflops={peak / 1e9:.0f} bf16_matmul_gflops={bf16_peak / 1e9:.0f} "
              f"bf16_speedup={bf16_peak / peak:.2f}")
    for name in args.configs:
        rate = {}
        for dtype in args.dtypes:
            # MFU against the measured peak of the dtype's matmuls (fp32 on the CPU, as before)
            ref = bf16_peak if device.type == "cuda" and dtype == "bf16" else peak
            lines, rates = bench(name, dtype, args.steps, args.warmup, ref, args.var_src, args.sdpa_only, device,
                                 tuple(args.attention))
            for line in lines:
                print(line, flush=True)
            rate[dtype] = rates[0]
        if len(rate) == 2:  # where the CPU lacks bf16 arithmetic, autocast emulates it and this falls far below 1
            print(f"config={name} bf16_speedup_vs_fp32={rate['bf16'] / rate['fp32']:.2f}", flush=True)


if __name__ == "__main__":
    main()
