"""One 1024px image from a full-size HART-0.7B-shaped release with random weights, on this machine.

    python benchmarks/bench_hart_1024.py --work /tmp/hart-full            # CPU, fp32
    python benchmarks/bench_hart_1024.py --work /tmp/hart-full --device cuda --dtype fp16

What users of ``hart convert hart`` can expect from the real weights (which cannot be fetched
here): the same shapes, the same code path, random tensors.

1. writes an official-layout release folder (``llm/config.json`` + ``llm/ema_model.bin`` with
   HART's saved buffers, the 9750^2 mask included; ``tokenizer/`` with VAR's ch-160 autoencoder,
   V 4096, z 32) at the 1024px schedule 1,2,3,4,5,7,9,12,16,21,27,36,48,64;
2. converts it with ``hart convert hart`` (timed; peak memory);
3. a random one-layer Qwen2 of width 1536 stands in for Qwen2-1.5B-Instruct (the prompt
   encoding is timed but is not the real encoder's cost);
4. samples one image with the ``hart`` preset (cfg 4.5, smoothing, the residual head's 8 iDDPM
   steps) and times the transformer + head and the decoder apart;
5. on a GPU (or with ``--repeats`` on a CPU): the median of warm runs of one image, decode
   included, with the eager engine, with the whole run as one CUDA graph (``cuda_graph=True``),
   and, with ``--hart-src``, with HART's own ``autoregressive_infer_cfg`` on the same release and
   the same encoded prompt (its model built by its constructors, imported from the checkout as
   ``benchmarks/hart_parity.py`` does: hart_backend's CUDA RMSNorm replaced by PyTorch, SDPA
   where flash-attn is not installed, a stand-in for scipy's ``truncnorm`` where scipy is
   missing), each with its peak GPU memory, and the ratios:

       python benchmarks/bench_hart_1024.py --work /tmp/hart-full --device cuda --dtype fp16 --hart-src .ext/hart

Size: depth 16, width 1536 (HART's C), 300 context tokens of width 1536, head width 1024 and
depth 6 (HART's DiffLoss), heads 24 by default. HART's ``config.json`` is not at hand: depth 16
is the depth whose parameter count matches the published 732M (printed below). Prints one
``name: value`` line per measurement, then a summary line.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB


def timed(fn, repeats, sync, device, res, name):
    """Median ms of ``repeats`` runs of ``fn`` after one warm-up, and the peak GPU memory of them."""
    import statistics

    import torch

    fn()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    res[f"{name}_ms"] = round(1e3 * statistics.median(times), 1)
    if device.type == "cuda":
        res[f"{name}_peak_cuda_gb"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)


def warm_runs(args, res, repeats, pipe, inputs, opt, device, sync, pns, release, work):
    """One image, decode included, warm: our engine eager and as one CUDA graph; with
    ``--hart-src`` HART's own ``autoregressive_infer_cfg`` on the same release and context."""
    import torch

    from sampling.engine import SamplingEngine
    from sampling.seeds import make_generators

    def ours(engine):
        # generators on the device: the smoothing's Gumbel noise (V per token) drawn there, as HART does
        return lambda: engine.sample(inputs, make_generators([0], device), opt, decode=True)

    graphed = SamplingEngine(pipe.generator, pipe.tokenizer, dtype=args.dtype, cuda_graph=True)
    timed(ours(SamplingEngine(pipe.generator, pipe.tokenizer, dtype=args.dtype)), repeats, sync, device, res, "warm_eager")
    timed(ours(graphed), repeats, sync, device, res, "warm_graph")
    res["graph_replays"] = graphed.graphs.replays
    res["graph_speedup_vs_eager"] = round(res["warm_eager_ms"] / res["warm_graph_ms"], 3)
    if not args.hart_src:
        return
    try:
        hart_model = official_model(args, device, pns, release, work)
    except Exception as err:  # noqa: BLE001 - our figures are printed already; say why HART's are missing
        res["official_hart"] = f"not built: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        return
    ctx, mask = (t.to(device) for t in inputs)
    dt = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.dtype)

    def official():
        with torch.inference_mode(), torch.autocast(device.type, dtype=dt, enabled=dt is not None, cache_enabled=True):
            return hart_model.autoregressive_infer_cfg(  # HART's sample.py: cfg 4.5, more_smooth, top-k 600 / 300
                B=1, label_B=ctx, cfg=opt.cfg, g_seed=0, more_smooth=opt.smooth,
                context_position_ids=mask.long().cumsum(1) - 1, context_mask=mask)

    import importlib.util

    from hart_parity import STAND_INS

    res["official_hart_runs_with"] = ", ".join(
        [f"a PyTorch stand-in for {name}" for name in STAND_INS if name.startswith("hart_backend")]
        + ([] if importlib.util.find_spec("flash_attn") else ["SDPA (flash-attn not installed)"])) or "its own kernels"
    timed(official, repeats, sync, device, res, "warm_official_hart")
    for name in ("eager", "graph"):
        res[f"speedup_vs_official_hart_{name}"] = round(res["warm_official_hart_ms"] / res[f"warm_{name}_ms"], 3)


def official_model(args, device, pns, release, work):
    """HART's HARTForT2I built with its own constructors from the release, moved to ``device``.
    Its tokenizer folder gets a full HART config and the release's ``vae.*`` weights (the
    release's discriminator is a stand-in of another shape; HART's own, untrained, is kept)."""
    import contextlib
    import io
    import json

    import torch
    from hart_parity import import_official_hart, official_namespace

    H = import_official_hart(args.hart_src, args.pydeps, cpu=device.type != "cuda", scipy_stand_in=True)
    tok_dir = work / "official-tokenizer"
    tok_dir.mkdir(parents=True, exist_ok=True)
    tok_cfg = {"vocab_size": 4096, "z_channels": 32, "ch": 160, "v_patch_nums": list(pns),
               "quantizer_type": "var_hybrid", "hybrid": True, "test_mode": True}
    (tok_dir / "config.json").write_text(json.dumps({"model_type": "hart_autoencoder_with_disc", **tok_cfg}))
    with official_namespace(H.official), contextlib.redirect_stdout(io.StringIO()):
        disc = {k: v for k, v in H.AE.HARTAutoEncoderWithDisc(H.AEC.HARTAutoEncoderWithDiscConfig(**tok_cfg))
                .state_dict().items() if k.startswith("disc.")}
    vae = {k: v for k, v in torch.load(release / "tokenizer" / "pytorch_model.bin", map_location="cpu",
                                       weights_only=True).items() if k.startswith("vae.")}
    torch.save({**vae, **disc}, tok_dir / "pytorch_model.bin")
    llm = json.loads((release / "llm" / "config.json").read_text())
    fields = {k: v for k, v in llm.items() if k not in ("model_type", "architectures")}
    with official_namespace(H.official), contextlib.redirect_stdout(io.StringIO()):
        model = H.T.HARTForT2I(H.TC.HARTForT2IConfig(**fields, vae_path=str(tok_dir)))
    state = torch.load(release / "llm" / "ema_model.bin", map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="folder for the release and the converted model (about 7 GB)")
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--width", type=int, default=1536)
    p.add_argument("--heads", type=int, default=24)
    p.add_argument("--resolution", type=int, default=1024, choices=(256, 512, 1024))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--keep", action="store_true", help="reuse an existing release / model folder in --work")
    p.add_argument("--repeats", type=int, default=None,
                   help="warm runs timed (median) of one image, decode included, for the eager engine, the "
                        "one-CUDA-graph engine and HART's sampler (default: 3 on a GPU, none on a CPU)")
    p.add_argument("--hart-src", default=None, metavar="PATH",
                   help="a mit-han-lab/hart checkout: time its own sampler on the same release (imported, not copied)")
    p.add_argument("--pydeps", default=None, metavar="DIR", help="extra site folder for HART's imports (scipy)")
    args = p.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from hart.convert_hart import convert_hart
    from sampling.engine import SamplingEngine
    from sampling.seeds import make_generators
    from sampling.options import SamplingOptions
    from sampling.pipeline import HARTPipeline
    from tests.official_layout import hart_llm_config, write_hart_release
    from tokenizer.config import PATCH_NUMS

    work = Path(args.work)
    pns = PATCH_NUMS[args.resolution]
    res = {"device": args.device, "dtype": args.dtype, "threads": torch.get_num_threads(), "torch": torch.__version__}
    release, model, qwen = work / "release", work / "model", work / "qwen2-standin"
    cfg = hart_llm_config(depth=args.depth, width=args.width, heads=args.heads, context_token=300, context_dim=1536,
                          patch_nums=pns, diff_width=1024, diff_depth=6)
    if not (args.keep and (release / "llm" / "ema_model.bin").is_file()):
        t = time.perf_counter()
        write_hart_release(release, cfg, vocab=4096, z=32, tokenizer_ch=160)
        res["write_release_s"] = round(time.perf_counter() - t, 1)
    res["release_llm_gb"] = round((release / "llm" / "ema_model.bin").stat().st_size / 2 ** 30, 2)
    if not (args.keep and qwen.is_dir()):
        from transformers import AutoTokenizer, Qwen2Config, Qwen2Model

        from hart.text import minilm_path

        tok = AutoTokenizer.from_pretrained(str(minilm_path()))
        tok.save_pretrained(str(qwen))
        torch.manual_seed(0)
        Qwen2Model(Qwen2Config(vocab_size=tok.vocab_size, hidden_size=1536, intermediate_size=1536, num_hidden_layers=1,
                               num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=1024)
                   ).save_pretrained(str(qwen))
    before = peak_gb()
    t = time.perf_counter()
    if not (args.keep and (model / "generator").is_dir()):
        convert_hart(release, model, text_encoder=qwen, overwrite=True)
        res["convert_s"] = round(time.perf_counter() - t, 1)
        res["convert_peak_rss_gb"] = round(peak_gb(), 2)
    res["peak_rss_before_convert_gb"] = round(before, 2)

    device = torch.device(args.device)
    pipe = HARTPipeline.from_pretrained(model, device=device, dtype=args.dtype)
    gen, c = pipe.generator, pipe.generator.config
    res["generator_params_M"] = round(sum(p.numel() for p in gen.parameters()) / 1e6, 1)
    res["head_params_M"] = round(sum(p.numel() for p in gen.diffusion.parameters()) / 1e6, 1)
    res["tokens"] = f"{c.context_tokens} context + {c.seq_len} image (sequence {c.total_len})"

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    prompt = ["A 4k dslr image of a lemur wearing a red magician hat and a blue coat performing magic tricks "
              "with cards in a garden."]
    t = time.perf_counter()
    inputs = pipe.encode_prompts(prompt)
    sync()
    res["encode_prompt_s (stand-in encoder)"] = round(time.perf_counter() - t, 2)
    engine = SamplingEngine(gen, pipe.tokenizer, dtype=args.dtype)
    opt = SamplingOptions.preset("hart")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    out = engine.sample(inputs, make_generators([0]), opt, decode=False)
    sync()
    res["transformer_and_head_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    from tokenizer.model import TokenizerCode

    with torch.no_grad():
        img = pipe.tokenizer.decode(TokenizerCode(ids=out.ids, residual=out.residual, f_hat=out.f_hat))
    sync()
    res["decode_s"] = round(time.perf_counter() - t, 1)
    res["image"] = tuple(img.shape)
    res["image_finite"] = bool(torch.isfinite(img).all())
    res["total_s"] = round(res["transformer_and_head_s"] + res["decode_s"], 1)
    res["peak_rss_gb"] = round(peak_gb(), 2)
    if device.type == "cuda":  # of the first image (the warm runs below report their own)
        res["peak_cuda_gb"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    for k, v in res.items():  # printed now: a run stopped by a time limit keeps them
        print(f"{k}: {v}", flush=True)
    print(f"one {args.resolution}px image: {res['total_s']} s ({res['transformer_and_head_s']} s transformer + head, "
          f"{res['decode_s']} s decode) on {args.device} {args.dtype}, {res['generator_params_M']}M parameters",
          flush=True)
    repeats = args.repeats if args.repeats is not None else (3 if device.type == "cuda" else 0)
    if repeats:  # warm runs (the first run above compiled the kernels), one image with its decode
        warm_runs(args, Printed(), repeats, pipe, inputs, opt, device, sync, pns, release, work)
    return 0


class Printed(dict):
    """A dict that prints each ``name: value`` as it is set."""

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        print(f"{key}: {value}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
