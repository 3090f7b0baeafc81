"""Train the hybrid tokenizer.

Examples:
    hart train-tokenizer --preset fm-32 --data fashion-mnist --out runs/tok --steps 3000
    hart train-tokenizer --preset fm-32 --data fashion-mnist --out runs/tok --steps 6000 --resume
    hart train-tokenizer --init runs/tok --freeze-codebook --data fashion-mnist --out runs/tok2 --steps 2000
    python -m tokenizer.train --preset tiny --data synthetic --out /tmp/tok --steps 20

Two stages (HART): the first trains everything; the second (``--init DIR --freeze-codebook``,
HART's ``freeze_codebook_for_hybrid``) starts from a trained tokenizer, freezes the encoder,
``quant_conv`` and the quantizer (so token ids and residuals stay exactly those of DIR, and a
generator trained on DIR's tokens stays valid), and fine-tunes only ``post_quant_conv`` and the
decoder, on the same 50/50 alternation of discrete-only and exact latents (``--hybrid-share``
moves the split: 0.8 decodes the exact latent in 80% of the batches).

DIR is a tokenizer folder (``config.json`` + ``model.safetensors``, the EMA weights) that
every later command reads; ``DIR/train_state/`` holds what ``--resume`` needs (raw and EMA
weights, discriminator, optimizers, step, RNG); ``DIR/recon.png`` shows input | discrete-only
| hybrid rows for a fixed batch of held-out images (of training images where the data has no
test split: a folder).

What the run shows while it runs (rank 0): ``DIR/metrics.jsonl``, one line per ``--log-every``
steps (losses, PSNR, codebook usage over those steps, learning rate, images/s), always; the same
as TensorBoard scalars under ``DIR/tensorboard/`` (``pip install 'hart-open[tensorboard]'``;
``tensorboard --logdir DIR``), with the reconstruction grid every ``--image-every`` steps.
``hart plot DIR`` draws the curves as a PNG.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from tqdm import tqdm

from hart.data.datasets import add_data_arguments, add_workers_argument, infinite_batches, make_dataset, parse_spec
from hart.data.sources import splits_of
from hart.common.ema import EMA
from hart.common.errors import UserError, cli_entry
from hart.common.images import grid, save_grid
from hart.common.args import add_device_argument
from hart.common.dist import DTYPE_CHOICES, autocast, resolve_device, resolve_dtype
from hart.common.fs import output_dir
from hart.common.io import WEIGHTS_NAME, load_weights, resolve_dir
from hart.common.loop import (check_positive, check_preset, check_range, check_resume_flags, load_run, nonfinite_loss,
                              resume_flags, run_faults, run_meta, save_run, set_lr, warmup_cosine)
from hart.common.metrics import RunLog, Throughput, Window
from tokenizer.config import TokenizerConfig
from tokenizer.losses import (LPIPS, FeatureDiscriminator, PatchDiscriminator, hinge_d_loss, hinge_g_loss, psnr,
                             reconstruction_loss, sharpness_loss)
from tokenizer.model import HybridTokenizer



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hart train-tokenizer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=None, help=f"tokenizer preset: {', '.join(TokenizerConfig.PRESETS)} "
                   "(default fm-32; on --resume, the saved one)")
    add_data_arguments(p)
    add_workers_argument(p)
    p.add_argument("--out", required=True, help="output tokenizer folder")
    p.add_argument("--steps", type=int, default=3000, help="total optimizer steps (default 3000)")
    p.add_argument("--batch-size", type=int, default=32, help="images per step (default 32)")
    p.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (default 2e-4)")
    p.add_argument("--disc-start", type=int, default=None,
                   help="step at which the PatchGAN loss starts (default: half of --steps)")
    p.add_argument("--disc-weight", type=float, default=0.1, help="weight of the generator's GAN loss")
    p.add_argument("--disc-input", default="image", choices=("image", "features"),
                   help="what the discriminator sees: 'image', the decode alone (a PatchGAN, as HART); "
                        "'features', an MLP on the channel means and stds of the frozen VGG16 features of "
                        "--lpips-weights (scripts/feature_net.py trains them on your labelled images)")
    p.add_argument("--hybrid-share", type=float, default=0.5,
                   help="share of the batches that decode the exact latent (discrete + residual); the rest "
                        "decode the discrete-only latent (default 0.5, HART's alternation)")
    p.add_argument("--grayscale", choices=["auto", "on", "off"], default="auto",
                   help="the decoder's output while training: auto (default) measures the data, and gray data "
                        "trains through the channel mean; off trains every channel against the target "
                        "(hart export --grayscale on still ships the mean)")
    p.add_argument("--sharpness-weight", type=float, default=0.0,
                   help="weight of a loss that holds each decode's fine detail (Laplacian energy) at its "
                        "image's (default 0: off)")
    p.add_argument("--lpips-weights", default=None, help="VGG16+LPIPS weights file; LPIPS is off without it")
    p.add_argument("--init", default=None, metavar="DIR",
                   help="start from the weights (and config) of this tokenizer folder")
    p.add_argument("--freeze-codebook", action="store_true",
                   help="second stage (HART): freeze encoder, quant_conv and quantizer; train the decoder only")
    p.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps (default 500)")
    p.add_argument("--log-every", type=int, default=50,
                   help="one metrics.jsonl line / TensorBoard point per N steps, means over them (default 50)")
    p.add_argument("--image-every", type=int, default=None,
                   help="reconstruction grid to TensorBoard every N steps (default: --save-every)")
    p.add_argument("--no-tensorboard", action="store_true", help="metrics.jsonl only, no TensorBoard event files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    add_device_argument(p)
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                   help="autocast dtype of the encoder, decoder and discriminator; the quantizer stays fp32 "
                        "(auto: bf16 on a GPU, fp32 on the CPU; bf16 pays on CPUs with avx512_bf16 or AMX)")
    return p


class Trainer:
    """Everything a tokenizer run holds; ``save`` / ``load`` make resume exact."""

    def __init__(self, config: TokenizerConfig, args, device):
        self.config, self.args, self.device = config, args, device
        self.model = HybridTokenizer(config).to(device)
        if args.init:
            load_weights(self.model, resolve_dir(args.init) / WEIGHTS_NAME)
        self.frozen = tuple(frozen_parts(self.model) if args.freeze_codebook else ())
        for m in self.frozen:
            m.requires_grad_(False)
        self.set_train()
        self.ema = EMA(self.model, decay=0.999)
        self.lpips = LPIPS.from_file(args.lpips_weights).to(device) if args.lpips_weights else None
        nl = 3 if config.resolution >= 64 else 2
        if args.disc_input == "features":
            self.disc = FeatureDiscriminator(self.lpips)
        else:
            self.disc = PatchDiscriminator(config.in_channels, ndf=64, n_layers=nl)
        self.disc = self.disc.to(device).train()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        # fused: one kernel over all tensors, on a CPU as on a GPU (measured for the generator's
        # optimizer: 3.4x the foreach step over 8.7M parameters on a 2-core EPYC)
        self.opt_g = torch.optim.AdamW(trainable, lr=args.lr, betas=(0.5, 0.9), weight_decay=0.0, fused=True)
        self.opt_d = torch.optim.AdamW(self.disc.parameters(), lr=args.lr, betas=(0.5, 0.9), weight_decay=0.0,
                                       fused=True)
        self.gen = torch.Generator().manual_seed(args.seed)  # hybrid coin flips
        self.amp_dtype = resolve_dtype(args.dtype, device)
        self.step = self.saved_step = 0

    def set_train(self) -> None:
        """Train mode, except frozen parts: an eval-mode quantizer makes no codebook updates."""
        self.model.train()
        for m in self.frozen:
            m.eval()

    def train_step(self, x: torch.Tensor) -> dict:
        """One optimizer step (and one discriminator step once the GAN is on) on images x (B, 3, R, R)."""
        args, step = self.args, self.step
        # linear warm-up over 2% of the run, then cosine to 10% of the peak
        set_lr((self.opt_g, self.opt_d), warmup_cosine(step, args.steps, args.lr, max(1, args.steps // 50)))
        # HART's hybrid training: half the batches (1 - --hybrid-share) decode the discrete-only latent
        discrete = bool(torch.rand((), generator=self.gen) < 1.0 - args.hybrid_share)
        mask = torch.full((x.shape[0],), discrete, device=x.device)
        use_gan = step >= args.disc_start
        judge = self.disc
        with autocast(self.device, self.amp_dtype):
            out = self.model(x, mask)
            loss_rec = reconstruction_loss(out.recon, x)
            loss = loss_rec + (out.vq_loss if not self.frozen else 0.0)  # frozen: vq_loss has no gradient
            if self.lpips is not None:
                loss = loss + self.lpips(out.recon, x).mean()
            loss_sharp = None
            if args.sharpness_weight:
                loss_sharp = sharpness_loss(out.recon, x)
                loss = loss + args.sharpness_weight * loss_sharp
            if use_gan:
                self.disc.requires_grad_(False)
                loss = loss + args.disc_weight * hinge_g_loss(judge(out.recon))
                self.disc.requires_grad_(True)
        if not torch.isfinite(loss):
            raise nonfinite_loss(loss.item(), step, args.out, self.saved_step)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.opt_g.param_groups[0]["params"], 1.0)
        self.opt_g.step()
        d_loss = torch.zeros(())
        if use_gan:
            with autocast(self.device, self.amp_dtype):
                d_loss = hinge_d_loss(judge(x), judge(out.recon.detach()))
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
        self.ema.update(self.model, self.ema.warmup_decay(step))
        self.step += 1
        return dict(loss=loss.item(), rec=loss_rec.item(), vq=out.vq_loss.item(), d=d_loss.item(),
                    sharp=0.0 if loss_sharp is None else loss_sharp.item(),
                    psnr=psnr(out.recon, x).mean().item(), grad_norm=grad_norm.item(),
                    kind="discrete" if discrete else "hybrid",
                    ids=torch.cat([i.flatten() for i in out.ids]))

    # ------------------------------------------------------------------ checkpoints

    def modules(self) -> dict:
        return {"model": self.model, "ema": self.ema.shadow, "disc": self.disc}

    def save(self, out: Path, preview: torch.Tensor) -> None:
        save_run(out, self.modules(),
                 {"opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                  "torch_rng": torch.get_rng_state(), "gen": self.gen.get_state()},
                 {"step": self.step, "config": self.config.to_dict(), **resume_flags(self.args),
                  "steps": self.args.steps, "freeze_codebook": bool(self.frozen),
                  "disc_input": self.args.disc_input, "sharpness_weight": self.args.sharpness_weight})
        self.ema.shadow.save_pretrained(out)  # the EMA weights are the model later commands read
        self.saved_step = self.step
        write_recon_grid(self.ema.shadow, preview, out / "recon.png")

    def load(self, out: Path) -> None:
        st, meta = load_run(out, self.modules())
        self.opt_g.load_state_dict(st["opt_g"])
        self.opt_d.load_state_dict(st["opt_d"])
        torch.set_rng_state(st["torch_rng"])
        self.gen.set_state(st["gen"])
        self.step = self.saved_step = int(meta["step"])


def frozen_parts(model: HybridTokenizer) -> list:
    """What HART's ``freeze_codebook_for_hybrid`` freezes: everything that makes ids and residual."""
    return [model.encoder, model.quant_conv, model.quantize]


def is_grayscale(dataset, num: int = 512, seed: int = 0) -> bool:
    """Whether ``num`` random images of ``dataset`` all have R = G = B (then the tokenizer's
    output is its channel mean: a faint tint a colour decoder leaves is what FD-EffNet sees most)."""
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:num]
    for i in idx.tolist():
        x = dataset[i][0]
        if x.shape[0] > 1 and (x - x.mean(0, keepdim=True)).abs().max() > 1e-6:
            return False
    return True


RECON_LABELS = ["input", "discrete", "hybrid"]


@torch.no_grad()
def recon_rows(model: HybridTokenizer, images: torch.Tensor) -> list:
    """Rows input | discrete-only | hybrid (discrete + residual), on the CPU."""
    was_training = model.training
    model.eval()
    code = model.encode(images)
    rows = [images, model.decode(code, use_residual=False), model.decode(code, use_residual=True)]
    model.train(was_training)
    return [r.cpu() for r in rows]


def write_recon_grid(model: HybridTokenizer, images: torch.Tensor, path) -> None:
    """PNG with rows: input | discrete-only | hybrid (discrete + residual)."""
    save_grid(recon_rows(model, images), path, row_labels=RECON_LABELS, scale=2)


def resolve_config(args, out: Path) -> TokenizerConfig:
    """New run: the preset, or the config of ``--init``. Resume: the saved config, and a
    --preset that differs is refused, as is a --freeze-codebook that differs from the run's."""
    if args.freeze_codebook and not args.init and not args.resume:
        raise UserError("--freeze-codebook needs --init DIR: the trained tokenizer whose encoder and codebook to keep")
    if args.disc_input == "features" and not args.lpips_weights:
        raise UserError("--disc-input features judges the VGG16 features of --lpips-weights FILE; give one "
                        "(python scripts/feature_net.py trains it on your labelled images)")
    meta = run_meta(out, args.resume, WEIGHTS_NAME)
    if meta is None:
        if args.init:
            if args.preset:
                raise UserError("--init takes the config of the tokenizer it starts from; drop --preset")
            return HybridTokenizer.load_config(args.init)
        return TokenizerConfig.from_name(args.preset or "fm-32")
    saved = TokenizerConfig.from_dict(meta["config"])
    if args.init:
        raise UserError("--resume continues from the run's own checkpoint; drop --init")
    args.freeze_codebook = args.freeze_codebook or bool(meta.get("freeze_codebook", False))
    if meta.get("draws"):
        raise UserError(f"the run in {out} decodes head draws (--draws, an option that no longer exists); "
                        "start a new stage with --init instead")
    if meta.get("disc_input") == "detail":
        raise UserError(f"the run in {out} was trained with --disc-input detail, an option that no longer "
                        "exists; start a new stage with --init instead")
    if meta.get("disc_input", "image") != args.disc_input:
        raise UserError(f"the run in {out} was trained with --disc-input {meta.get('disc_input', 'image')}; "
                        f"resume it with that")
    if bool(meta.get("freeze_codebook", False)) != args.freeze_codebook:
        raise UserError(f"the run in {out} was started without --freeze-codebook; resume it without the flag")
    # grayscale is measured on the data when a run starts, not part of a preset
    preset = args.preset and TokenizerConfig.from_name(args.preset).replace(grayscale=saved.grayscale)
    check_preset(args.preset, preset, saved, out)
    check_resume_flags(meta, args, out)
    return saved


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.image_every is None:
        args.image_every = args.save_every
    check_positive(args, "steps", "batch_size", "save_every", "log_every", "image_every")
    if not 0.0 <= args.hybrid_share <= 1.0:
        raise UserError(f"--hybrid-share is a share of the batches, from 0 to 1; got {args.hybrid_share}")
    check_range(args, "lr", 0, 1)
    for name in ("disc_weight", "sharpness_weight"):
        check_range(args, name, 0, 1e6)
    output_dir(args.out, create=False)  # a file there, or no way to make it: one line (after the checks)
    out = Path(args.out)
    config = resolve_config(args, out)
    if args.disc_start is None:
        args.disc_start = args.steps // 2
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    train_set = make_dataset(args.data, "train", config.resolution, args.data_dir)
    spec = parse_spec(args.data)
    held_out, preview_of = train_set, "training"  # a folder, or a split named in --data: no other split
    if spec.kind == "dataset" and spec.split is None and "test" in splits_of(spec.name):
        try:
            held_out, preview_of = make_dataset(args.data, "test", config.resolution, args.data_dir), "held-out"
        except UserError:  # a --data-dir with the training files only
            pass
    if len(train_set) < args.batch_size:
        raise UserError(f"the dataset has {len(train_set)} images, fewer than --batch-size {args.batch_size}")
    if not args.resume:  # a new run or an --init stage measures it; a resumed run keeps its own
        gray = is_grayscale(train_set) if args.grayscale == "auto" else args.grayscale == "on"
        if gray != config.grayscale and args.grayscale == "auto":
            print(f"the training images {'have no' if gray else 'have'} colour: grayscale output "
                  f"{'on' if gray else 'off'}")
        config = config.replace(grayscale=gray)
    n_prev = min(8, len(held_out))
    preview = torch.stack([held_out[i * (len(held_out) // n_prev)][0] for i in range(n_prev)]).to(device)

    trainer = Trainer(config, args, device)
    if args.disc_input == "features" and not args.resume:  # a resumed run keeps its standardisation
        idx = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(args.seed))[:1024]
        trainer.disc.fit(torch.stack([train_set[i][0] for i in idx.tolist()]).to(device))
    if args.resume:
        trainer.load(out)
        if trainer.step >= args.steps:
            print(f"{out} is already at step {trainer.step} >= --steps {args.steps}; nothing to do")
            return 0
    batches = infinite_batches(train_set, args.batch_size, torch.Generator().manual_seed(args.seed),
                               start_step=trainer.step, workers=args.workers)
    usage = torch.zeros(config.codebook_size, dtype=torch.long)
    window, speed = Window(), Throughput()
    log = RunLog(out, start_step=trainer.step, resume=args.resume, tensorboard=not args.no_tensorboard)
    with run_faults(out, "train-tokenizer"), log, \
            tqdm(total=args.steps, initial=trainer.step, desc="tokenizer", dynamic_ncols=True) as bar:
        while trainer.step < args.steps:
            t0 = time.perf_counter()
            x = next(batches)[0]
            m = trainer.train_step(x.to(device))
            speed.add(x.shape[0], time.perf_counter() - t0)
            usage += torch.bincount(m["ids"].cpu(), minlength=config.codebook_size)
            window.add(**{k: m[k] for k in ("loss", "rec", "vq", "d", "sharp", "psnr", "grad_norm")})
            window.add(**{f"psnr/{m['kind']}": m["psnr"]})
            step = trainer.step
            if step % args.log_every == 0 or step == args.steps:
                frac = (usage > 0).float().mean().item()  # share of the codebook used in the window
                usage.zero_()
                mean = window.means()
                names = {"loss": "loss/total", "rec": "loss/rec", "vq": "loss/vq", "d": "loss/disc", "sharp": "loss/sharp"}
                split = {k: mean[k] for k in ("psnr/discrete", "psnr/hybrid") if k in mean}
                log.scalars(step, {**{tag: mean[k] for k, tag in names.items()}, **split},
                            psnr=mean["psnr"], grad_norm=mean["grad_norm"], **{"codebook/usage": frac},
                            lr=trainer.opt_g.param_groups[0]["lr"], **{"throughput/images_per_s": speed.rate()})
                apart = {k.split("/")[1]: f"{v:.1f}" for k, v in split.items()}  # discrete=.. hybrid=..
                bar.set_postfix(loss=f"{mean['loss']:.3f}", psnr=f"{mean['psnr']:.1f}", **apart, usage=f"{frac:.0%}",
                                refresh=False)
            if log.writer is not None and (step % args.image_every == 0 or step == args.steps):
                log.image("reconstructions", grid(recon_rows(trainer.ema.shadow, preview), RECON_LABELS, scale=2),
                          step)
            bar.update(1)
            if step % args.save_every == 0 or step == args.steps:
                trainer.save(out, preview)
                log.flush()
    print(f"saved tokenizer to {out} (step {trainer.step}); reconstructions of {preview_of} images in "
          f"{out / 'recon.png'}")
    return 0


if __name__ == "__main__":
    main()
