"""Train the generator: next-scale cross-entropy + the residual diffusion loss.

Examples:
    hart train --tokenizer runs/tok --preset fm-s --data fashion-mnist --out runs/gen --steps 4000
    hart extract-tokens --tokenizer runs/tok --data fashion-mnist --out runs/fm-tokens
    hart train --tokenizer runs/tok --preset fm-s --tokens runs/fm-tokens --out runs/gen --steps 8000 --resume
    torchrun --nproc_per_node 2 -m hart.train -- --tokenizer runs/tok --preset fm-s --data fashion-mnist --out runs/gen
    hart train --init runs/gen --freeze-transformer --tokenizer runs/tok --tokens runs/fm-tokens --out runs/gen-head
    hart train --tokenizer runs/shapes-tok --preset shapes-t2i --data shapes --text-encoder minilm --out runs/shapes

Text-to-image: a text preset (``shapes-t2i``) on captioned data (``shapes``, ``emoji``,
``captions:PATH``); the frozen encoder (``--text-encoder``, default the preset's) encodes
the captions: each batch's own in the step from a token cache of ``hart extract-tokens`` (one
that holds the embeddings, as caches made before did, gives them instead), each distinct
caption once, kept in memory, when encoding images on the fly. Condition dropout for CFG is a
uniform draw (``training.cond_drop``, 10%).

``--init DIR`` starts from the weights of a model folder's generator (fine-tuning); with
``--preset`` the preset's shape is used. The parameters DIR lacks start fresh (a residual head
added to a plain VAR model by the head flags, ``--diff-width``...). On data with other classes
the run takes the data's classes and names: a class DIR knows by name keeps its row of the
class embedding, a new one starts fresh. ``--freeze-transformer`` trains only the residual head
(the diffusion MLP and its ``decoder_norm``) on top of a trained transformer.
The head's target scale (``stats.residual_scale``) is measured on the training data when a run
starts, unless ``--init`` brings a trained head, whose scale is kept. ``--residual-target``
picks what the head learns to add: ``sampled`` (HART's, the presets' default) the latent
minus the codes the transformer itself draws at the last scale, so that the head corrects
its wrong draws too; ``true`` the latent minus the true codes, the tokenizer's residual
itself (a narrower target, what ``hart eval-residual`` probes with the true ids).

DIR (``--out``) becomes a complete model folder: ``DIR/tokenizer/`` (a copy of the
tokenizer), ``DIR/generator/`` (the EMA weights), and ``DIR/train_state/`` for ``--resume``
(raw and EMA weights, optimizer, step, RNG). ``--batch-size`` is the global batch: under
torchrun each of N processes takes ``batch/N`` from its own shard of the data; only rank 0
writes.

What the run shows while it runs (rank 0): ``DIR/metrics.jsonl``, one line per ``--log-every``
steps (total loss, cross-entropy, token accuracy, diffusion loss, gradient norm, learning rate,
images/s and tokens/s), always; the same as TensorBoard scalars under ``DIR/tensorboard/``
(``pip install 'hart-open[tensorboard]'``), and for class models a fixed-seed sample grid per
class every ``--image-every`` steps (also written to ``DIR/samples.png``). ``hart plot DIR``
draws the curves. The grid needs a sampler, which lives a layer above this module: ``hart
train`` (and ``python -m hart.train``, which goes through the ``hart`` router) hands it in;
``main(argv)`` called directly makes no grid.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from hart.config import GeneratorConfig
from hart.batches import batch_source, check_same_data, data_identity, dataset_classes, dataset_examples
from hart.data.datasets import SPEC_HELP, add_workers_argument
from hart.common.args import add_device_argument
from hart.common.dist import DTYPE_CHOICES, DistInfo, autocast, init_distributed, resolve_dtype
from hart.common.ema import EMA
from hart.common.errors import UserError, cli_entry
from hart.common.fs import output_dir
from hart.common.io import component_dir
from hart.common.metrics import RunLog, Throughput, Window
from hart.common.models import write_pipeline_index
from hart.model import HARTGenerator
from hart.objective import TrainingObjective, measure_decoder_metric, measure_latent_scales
from hart.attention import ATTENTION_IMPLS
from hart.common.loop import (check_positive, check_range, load_run, nonfinite_loss, resume_flags, run_faults, run_meta,
                              save_run, set_lr, warmup_cosine)
from hart.run_config import (class_embedding, class_rows, copy_tokenizer, generator_dir, init_weights, resolve_config,
                              same_classes)
from hart.train_samples import write_samples
from tokenizer import HybridTokenizer



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hart train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True,
                   help="tokenizer folder (from hart train-tokenizer), or a model folder: its tokenizer/ "
                        "(default, default-t2i: the bundled models')")
    p.add_argument("--preset", default=None, help=f"generator preset: {', '.join(GeneratorConfig.PRESETS)} "
                   "(default fm-s; on --resume, the saved one)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help=SPEC_HELP + " (encoded on the fly)")
    src.add_argument("--tokens", help="token cache folder from hart extract-tokens (faster)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files")
    add_workers_argument(p)  # with --data
    p.add_argument("--text-encoder", default=None, help="text models: the frozen prompt encoder, minilm or "
                   "qwen2 (default: the preset's)")
    p.add_argument("--text-encoder-path", default=None, help="text models: the encoder's folder (needed for qwen2)")
    p.add_argument("--context-tokens", type=int, default=None,
                   help="text models: prompt length T in tokens (default: the preset's)")
    p.add_argument("--out", required=True, help="output model folder")
    p.add_argument("--steps", type=int, default=4000, help="total optimizer steps (default 4000)")
    p.add_argument("--batch-size", type=int, default=64, help="global batch size (default 64)")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (default 5e-4)")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the saved weights")
    p.add_argument("--init", default=None, metavar="DIR",
                   help="start from the generator weights of this model folder (fine-tuning; default, "
                        "default-t2i: the bundled models)")
    p.add_argument("--freeze-transformer", action="store_true",
                   help="train only the residual head on top of the --init transformer")
    p.add_argument("--residual-target", choices=("sampled", "true"), default=None,
                   help="the head's target: latent minus the transformer's own last-scale draws (sampled, "
                        "HART's) or minus the true codes (true); default: the preset's (or --init's)")
    p.add_argument("--diff-mix", choices=("none", "map"), default=None,
                   help="the head: none (HART's: each last-scale token denoised on its own) or map (ours: a "
                        "convolutional denoiser of the whole residual map given f_hat; --diff-width is its "
                        "channels, e.g. 96; a head of another kind from --init starts fresh); default: the "
                        "preset's (or --init's)")
    p.add_argument("--diff-metric", choices=("scale", "decoder"), default=None,
                   help="the head's target units: scale (the residual over its RMS) or decoder (each token's "
                        "residual in the tokenizer decoder's pixel metric, measured when the run starts); "
                        "default: the preset's (or --init's)")
    p.add_argument("--diff-prediction", choices=("epsilon", "v_prediction"), default=None,
                   help="what the head predicts: epsilon (HART's) or v_prediction; default: the preset's "
                        "(or --init's)")
    p.add_argument("--diff-width", type=int, default=None,
                   help="the residual head's width (default: the preset's, or --init's); with --init, the head "
                        "then starts fresh on the loaded transformer")
    p.add_argument("--diff-depth", type=int, default=None,
                   help="the residual head's number of blocks (as --diff-width)")
    p.add_argument("--diff-batch-mul", type=int, default=None,
                   help="noise draws per token (per map) in the head's loss (default: the preset's, 4, or --init's)")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                   help="autocast dtype (auto: bf16 on a GPU, fp32 on the CPU)")
    p.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps (default 500)")
    p.add_argument("--log-every", type=int, default=50,
                   help="one metrics.jsonl line / TensorBoard point per N steps, means over them (default 50)")
    p.add_argument("--image-every", type=int, default=None,
                   help="fixed-seed sample grid per class every N steps (default: --save-every)")
    p.add_argument("--no-tensorboard", action="store_true", help="metrics.jsonl only, no TensorBoard event files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    add_device_argument(p)
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the transformer blocks in place (one graph shared by all; "
                        "the first steps pay for the compile)")
    p.add_argument("--attention", default="sdpa", choices=ATTENTION_IMPLS,
                   help="training attention: sdpa (dense block-causal mask) or flex (FlexAttention with a "
                        "block-causal BlockMask that skips hidden blocks; GPU only)")
    return p


class GeneratorTrainer:
    """Model, EMA, optimizer, RNG and step; ``save`` / ``load`` make --resume exact."""

    def __init__(self, config: GeneratorConfig, tokenizer: HybridTokenizer, args, dist: DistInfo):
        self.config, self.args, self.dist = config, args, dist
        dev = dist.device
        self.model = HARTGenerator(config).to(dev).train()
        attention = getattr(args, "attention", "sdpa")
        if attention == "flex" and dev.type != "cuda":
            raise UserError("--attention flex needs a GPU (PyTorch's FlexAttention has no CPU backward); "
                            "use --attention sdpa")
        self.model.set_attention(attention)
        resized = getattr(args, "diff_width", None) or getattr(args, "diff_depth", None)
        init = HARTGenerator.load_config(generator_dir(args.init)) if args.init and not args.resume else None
        if init is not None and config.has_head:
            # a map head has other tensors than a token head; a head of another output or target
            # units has learned another function: these start fresh on the loaded transformer
            ih = init.head
            resized = resized or ih is None or ((ih.mix, ih.prediction, ih.metric)
                                                != (config.head.mix, config.head.prediction, config.head.metric))
        skip, adapt = ("diffusion.",) if resized else (), {}
        if init is not None and not config.is_text and not same_classes(init, config):
            # other classes: rows by name, new ones fresh (hart.run_config.fit_classes)
            rows, own = class_rows(init, config), self.model.class_emb.weight.detach().cpu().clone()
            adapt["class_emb.weight"] = lambda w: class_embedding(w, rows, own)
        self.fresh = init_weights(self.model, args.init, dist.is_main, skip, adapt) if init is not None else []
        if args.freeze_transformer:
            for name, p in self.model.named_parameters():
                p.requires_grad_(name.startswith(HEAD_PREFIXES))
        self.objective = TrainingObjective(self.model, tokenizer, args.label_smoothing, args.freeze_transformer)
        self.ddp = self.objective
        if dist.enabled:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.objective, device_ids=[dev.index] if dev.type == "cuda" else None)
        self.ema = EMA(self.model, args.ema)
        if getattr(args, "compile", False):
            # each transformer block compiled in place (state-dict keys unchanged); the blocks share
            # one graph, their weights being its inputs. After the EMA copy: the shadow stays eager.
            for blk in self.model.blocks:
                blk.compile(dynamic=False)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in trainable if p.ndim >= 2]
        no_decay = [p for p in trainable if p.ndim < 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}],
                                     lr=args.lr, betas=(0.9, 0.95), fused=True)  # fused: 3.4x the foreach optimizer step on a CPU too
        self.gen = torch.Generator().manual_seed(args.seed * 1000 + dist.rank)
        self.amp_dtype = resolve_dtype(args.dtype, dev)
        self.step = self.saved_step = 0

    def set_config(self, config: GeneratorConfig) -> None:
        """A config that differs only in constants (the measured residual scale), not in shapes."""
        self.config = self.model.config = self.ema.shadow.config = config

    def train_step(self, ids: list, residual: torch.Tensor, labels) -> dict:
        # linear warm-up over 5% of the run, then cosine decay to 10% of the peak
        a = self.args
        set_lr([self.opt], warmup_cosine(self.step, a.steps, a.lr, max(1, a.steps // 20)))
        dev = self.dist.device
        with autocast(dev, self.amp_dtype):
            loss, metrics = self.ddp(ids, residual, labels, self.gen)
        bad = torch.tensor(0.0 if torch.isfinite(loss) else 1.0, device=dev)
        if self.dist.all_reduce_mean(bad).item() > 0:
            raise nonfinite_loss(loss.item(), self.step, self.args.out, self.saved_step)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_([p for g in self.opt.param_groups for p in g["params"]], 2.0)
        self.opt.step()
        self.ema.update(self.model, self.ema.warmup_decay(self.step))
        self.step += 1
        return {"loss": loss.item(), **{k: v.item() for k, v in metrics.items()}, "grad_norm": grad_norm.item()}

    def save(self, out: Path) -> None:
        if self.dist.is_main:
            save_run(out, {"model": self.model, "ema": self.ema.shadow},
                     {"opt": self.opt.state_dict(), "torch_rng": torch.get_rng_state(), "gen": self.gen.get_state()},
                     {"step": self.step, "config": self.config.to_dict(), **resume_flags(self.args),
                      "source": getattr(self, "data_source", None),
                      "world_size": self.dist.world_size, "freeze_transformer": bool(self.args.freeze_transformer)})
            self.ema.shadow.save_pretrained(out / "generator")
            if (out / "tokenizer").is_dir():  # also a diffusers pipeline folder
                write_pipeline_index(out, {"tokenizer": HybridTokenizer, "generator": self.ema.shadow})
        self.saved_step = self.step
        self.dist.barrier()

    def load(self, out: Path) -> None:
        st, meta = load_run(out, {"model": self.model, "ema": self.ema.shadow})
        self.opt.load_state_dict(st["opt"])
        torch.set_rng_state(st["torch_rng"])
        if self.dist.world_size == 1 and meta.get("world_size", 1) == 1:
            self.gen.set_state(st["gen"])  # exact continuation of the single-process stream
        else:  # each rank reseeds deterministically from the step
            self.gen.manual_seed(self.args.seed * 1000 + self.dist.rank + 7919 * int(meta["step"]))
        self.step = self.saved_step = int(meta["step"])


HEAD_PREFIXES = ("diffusion.", "decoder_norm.")  # what --freeze-transformer trains


@cli_entry
def main(argv=None, sampler=None, model_folder=None):
    """``sampler``: what draws the sample grids (see :func:`hart.train_samples.sample_grid`); None: no grids.
    ``model_folder``: a model name or path -> its folder (the bundled models by name), for
    ``--init`` and ``--tokenizer``; None: paths only."""
    args = build_parser().parse_args(argv)
    if model_folder is not None:
        args.init = args.init and str(model_folder(args.init))
        args.tokenizer = str(model_folder(args.tokenizer))
    if args.image_every is None:
        args.image_every = args.save_every
    check_positive(args, "steps", "batch_size", "save_every", "log_every", "image_every")
    check_range(args, "lr", 0, 1)
    check_range(args, "weight_decay", 0, 10)
    check_range(args, "label_smoothing", 0, 1, high_open=True)
    check_range(args, "ema", 0, 1, high_open=True)
    for name in ("diff_width", "diff_depth", "diff_batch_mul"):
        if getattr(args, name, None) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(args, name)}")
    output_dir(args.out, create=False)  # a file there, or no way to make it: one line (after the checks)
    dist = init_distributed(args.device)
    try:
        return run(args, dist, sampler)
    finally:
        dist.close()


def run(args, dist: DistInfo, sampler=None) -> int:
    if args.batch_size % dist.world_size:
        raise UserError(f"--batch-size {args.batch_size} must be divisible by the {dist.world_size} processes")
    out = Path(args.out)
    if dist.enabled and dist.is_main:
        import torch.distributed as tdist

        print(f"distributed: {tdist.get_backend()} process group of {dist.world_size}, rank 0 on {dist.device}")
    torch.manual_seed(args.seed)
    args.tokenizer = component_dir(args.tokenizer, "tokenizer")  # a model folder's tokenizer/ too
    tokenizer = HybridTokenizer.from_pretrained(args.tokenizer, device=dist.device).requires_grad_(False)
    source = data_identity(args, tokenizer)
    if args.resume:  # before the saved config meets what may be other data
        check_same_data(run_meta(out, True, "generator").get("source"), source, out)
    config = resolve_config(args, out, tokenizer, dataset_classes(args, tokenizer), verbose=dist.is_main)
    if config.is_text:  # its encoder's width, before anything is written
        from hart.text import check_text_encoder

        check_text_encoder(config, args.text_encoder_path)
    if config.is_text and not args.resume and not config.display.example_prompts:
        config = config.replace_in("display", example_prompts=dataset_examples(args, tokenizer))
    trainer = GeneratorTrainer(config, tokenizer, args, dist)  # --init's weights checked before anything is written
    if dist.is_main:
        copy_tokenizer(args.tokenizer, out)
    trainer.data_source = source
    fresh_head = any(k.startswith(HEAD_PREFIXES) or k == "residual_metric" for k in trainer.fresh)
    if config.has_head and not args.resume and (config.stats.residual_scale is None or fresh_head):
        # the head's target scale is a fact about this tokenizer's latents: measure it
        map_head = config.head.mix == "map"  # it also divides its f_hat input by f_hat's RMS
        # one pass at most: a small folder is not encoded again and again (a cache that does not
        # record its size is read up to the cap; its epochs cost no encoding)
        per_rank = -(-source["num"] // dist.world_size) if source else None
        cap = lambda n: n if per_rank is None else max(1, min(n, per_rank))  # noqa: E731
        scale, fs = measure_latent_scales(batch_source(args, tokenizer, dist, args.batch_size // dist.world_size, 0,
                                                       config, encode=False), tokenizer if map_head else None,
                                          max_images=cap(2048), progress=dist.is_main)
        scale = dist.all_reduce_mean(torch.tensor(scale, device=dist.device)).item()
        config = config.replace_in("stats", residual_scale=scale)
        if dist.is_main:
            print(f"residual scale (RMS of the residual on the training data): {scale:.4f}")
        if map_head:
            config = config.replace_in("stats", fhat_scale=dist.all_reduce_mean(torch.tensor(fs, device=dist.device)).item())
            if dist.is_main:
                print(f"f_hat scale (its RMS on the training data): {config.stats.fhat_scale:.4f}")
        if config.head.metric == "decoder":  # the decoder's pixel metric on this tokenizer's latents
            A = measure_decoder_metric(batch_source(args, tokenizer, dist, args.batch_size // dist.world_size, 0,
                                                    config, encode=False), tokenizer, max_images=cap(512)).to(dist.device)
            A = dist.all_reduce_mean(A)
            for m in (trainer.model, trainer.ema.shadow):
                m.residual_metric.copy_(A)
            if dist.is_main:
                print(f"decoder metric: condition number {torch.linalg.cond(A.double()).item():.1f}")
        trainer.set_config(config)
    if args.resume:
        trainer.load(out)
        if trainer.step >= args.steps:
            print(f"{out} is already at step {trainer.step} >= --steps {args.steps}; nothing to do")
            return 0
    batches = batch_source(args, tokenizer, dist, args.batch_size // dist.world_size, trainer.step, config)
    n_params = sum(p.numel() for p in trainer.model.parameters())
    desc = f"generator {n_params / 1e6:.1f}M"
    window, speed = Window(), Throughput()
    log = RunLog(out, start_step=trainer.step, resume=args.resume, enabled=dist.is_main,
                 tensorboard=not args.no_tensorboard)
    # a grid per class, or per example prompt of a text model
    grids = sampler is not None and dist.is_main and (not config.is_text or bool(trainer.config.display.example_prompts))
    encoder = None
    if grids and config.is_text:
        from hart.text import text_encoder_for

        encoder = text_encoder_for(config, args.text_encoder_path, dist.device)
    with run_faults(out, "train"), log, tqdm(total=args.steps, initial=trainer.step, desc=desc, dynamic_ncols=True,
                                             disable=not dist.is_main) as bar:
        while trainer.step < args.steps:
            t0 = time.perf_counter()
            ids, residual, labels = next(batches)
            m = trainer.train_step(ids, residual, labels)
            speed.add(args.batch_size, time.perf_counter() - t0)  # the global batch: all ranks step together
            window.add(**m)
            step = trainer.step
            if step % 10 == 0 or step == args.steps:
                bar.set_postfix({k: f"{v:.3f}" for k, v in m.items()}, refresh=False)
            if step % args.log_every == 0 or step == args.steps:
                mean = window.means()
                ips = speed.rate()
                names = {"loss": "loss/total", "ce": "loss/ce", "diff": "loss/diff"}
                log.scalars(step, {tag: mean[k] for k, tag in names.items() if k in mean},
                            acc=mean["acc"], grad_norm=mean["grad_norm"], lr=trainer.opt.param_groups[0]["lr"],
                            **{"throughput/images_per_s": ips, "throughput/tokens_per_s": ips * config.seq_len})
            if grids and (step % args.image_every == 0 or step == args.steps):
                write_samples(sampler, trainer.ema.shadow, tokenizer, out, log, step, encoder)
            bar.update(1)
            if step % args.save_every == 0 or step == args.steps:
                trainer.save(out)
                log.flush()
    if dist.is_main:
        print(f"saved model folder {out} (step {trainer.step}): {out / 'tokenizer'} + {out / 'generator'}")
    return 0


if __name__ == "__main__":
    import sys

    from hart.cli import main as hart_main  # the router hands in the sampler (a higher layer)

    raise SystemExit(hart_main(["train", *sys.argv[1:]]))
