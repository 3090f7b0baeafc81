"""Training throughput of the generator on this machine: tokens/s and MFU.

    python benchmarks/bench_train.py                      # fm-s (32x32 CPU preset) and var-d8, fp32 and bf16
    python benchmarks/bench_train.py --configs var-d8 --dtypes bf16 --steps 5

For each config and dtype it prints
    config=NAME dtype=DT tokens_per_s=X mfu=Y
where MFU = model FLOPs per second / the fp32 matmul peak this script measures on the same
threads (a large square matmul). Model FLOPs = 3 x forward (matmuls of every token, the
attention over the full L x L score matrix, the head), the usual accounting.

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
SDPA (``hart.kernels.attention`` takes an explicit path for short bf16 sequences on the CPU),
adding ``sdpa_only_tokens_per_s=X speedup_vs_sdpa_only=Y``:

    python benchmarks/bench_train.py --configs fm-s --dtypes bf16 --sdpa-only
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from hart import kernels
from hart.config import GeneratorConfig
from hart.common.dist import DistInfo, autocast, resolve_dtype
from hart.train import GeneratorTrainer, build_parser
from tokenizer import HybridTokenizer, TokenizerConfig

BENCH = {
    # name: (generator preset, tokenizer preset, batch)
    "fm-s": ("fm-s", "fm-32", 64),
    "var-d8": ("var-d8", "var-256", 8),
}


def matmul_peak(dtype=torch.float32, n=2048, reps=10) -> float:
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def forward_flops_per_sample(c: GeneratorConfig) -> float:
    C, L, V = c.width, c.seq_len, c.codebook_size
    hidden = int(C * c.mlp_ratio)
    per_token_block = 2 * (3 * C * C + C * C + 2 * C * hidden)  # qkv, proj, fc1, fc2
    attn = 2 * 2 * L * C  # q k^T and p v over the full L x L matrix
    per_token = c.depth * (per_token_block + attn) + 2 * C * V + 2 * c.z_channels * C
    flops = L * per_token
    if c.diff_head:  # head MLP on the kept last-scale tokens, batch_mul draws
        n_last = c.patch_nums[-1] ** 2
        w = c.diff_width
        head = 2 * (c.z_channels * w + C * w + c.diff_depth * (2 * w * w + 3 * w * w) + 2 * w * w + w * c.z_channels)
        flops += n_last * c.diff_keep_frac * c.diff_batch_mul * head
    return flops


def bench(name: str, dtype: str, steps: int, warmup: int, peak: float, var_src: str | None = None,
          sdpa_only: bool = False) -> str:
    gen_preset, tok_preset, batch = BENCH[name]
    torch.manual_seed(0)
    official = None
    if var_src and name == "var-d8" and not sdpa_only:
        from var_official import build

        c8 = GeneratorConfig.from_name("var-d8")
        vae, var, tok, gen = build(var_src, c8.depth, c8.width, c8.heads)
        official = (vae, var.train())
        tok.requires_grad_(False)
        config = gen.config
    else:
        tok = HybridTokenizer(TokenizerConfig.from_name(tok_preset)).eval().requires_grad_(False)
    tc = tok.config
    if official is None:
        config = GeneratorConfig.from_name(gen_preset, patch_nums=tc.patch_nums, codebook_size=tc.codebook_size,
                                           z_channels=tc.z_channels)
    args = build_parser().parse_args(["--tokenizer", "x", "--data", "synthetic", "--out", "x",
                                      "--dtype", dtype, "--steps", str(steps + warmup)])
    trainer = GeneratorTrainer(config, tok, args, DistInfo())
    if official is not None:
        trainer.model.load_state_dict(gen.state_dict())  # the converted official weights
    n = tc.latent_size
    labels = torch.randint(0, config.num_classes, (batch,))
    ids = [torch.randint(0, tc.codebook_size, (batch, p * p)) for p in tc.patch_nums]
    residual = torch.randn(batch, tc.z_channels, n, n) * 0.1
    ours = lambda: trainer.train_step(ids, residual, labels)  # noqa: E731
    theirs = None
    if sdpa_only:  # the same step with attention always through SDPA (no explicit CPU path)
        def theirs():
            saved, kernels.EXPLICIT_MAX_KEYS = kernels.EXPLICIT_MAX_KEYS, 0
            try:
                return trainer.train_step(ids, residual, labels)
            finally:
                kernels.EXPLICIT_MAX_KEYS = saved
    if official is not None:
        from var_official import official_train_step

        vae, var = official
        var_opt = torch.optim.AdamW(var.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
        amp = resolve_dtype(dtype, torch.device("cpu"))

        def theirs():  # under the same autocast as ours (VAR trains under AMP)
            with autocast(torch.device("cpu"), amp):
                return official_train_step(vae, var, var_opt, labels, ids)
    for _ in range(warmup):
        ours()
        if theirs:
            theirs()
    t_ours, t_var = [], []
    for _ in range(steps):  # alternate, so that drift of a noisy machine hits both alike
        t = time.perf_counter()
        ours()
        t_ours.append(time.perf_counter() - t)
        if theirs:
            t = time.perf_counter()
            theirs()
            t_var.append(time.perf_counter() - t)
    dt = statistics.median(t_ours)
    tokens_per_s = batch * config.seq_len / dt
    mfu = 3 * forward_flops_per_sample(config) * batch / dt / peak
    line = f"config={name} dtype={dtype} tokens_per_s={tokens_per_s:.0f} mfu={mfu:.2f}"
    if t_var:
        dv = statistics.median(t_var)
        if official is not None:
            line += f" var_tokens_per_s={batch * config.seq_len / dv:.0f} speedup_vs_var={dv / dt:.3f}"
        else:
            line += f" sdpa_only_tokens_per_s={batch * config.seq_len / dv:.0f} speedup_vs_sdpa_only={dv / dt:.3f}"
    return line


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=list(BENCH), choices=list(BENCH))
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--var-src", default=None, metavar="PATH",
                   help="a FoundationVision/VAR checkout: time its training step beside ours (var-d8, same dtype)")
    p.add_argument("--sdpa-only", action="store_true",
                   help="instead of VAR, time the same step with attention always through SDPA (hart.kernels.attention)")
    args = p.parse_args(argv)
    peak = matmul_peak()
    bf16_peak = matmul_peak(torch.bfloat16)
    print(f"threads={torch.get_num_threads()} fp32_matmul_gflops={peak / 1e9:.0f} "
          f"bf16_matmul_gflops={bf16_peak / 1e9:.0f} bf16_speedup={bf16_peak / peak:.2f}")
    for name in args.configs:
        for dtype in args.dtypes:
            print(bench(name, dtype, args.steps, args.warmup, peak, args.var_src, args.sdpa_only), flush=True)


if __name__ == "__main__":
    main()
