"""The official FoundationVision/VAR code beside ours, on the same weights (benchmarks only).

``build(var_src, ...)`` imports VAR's own ``models`` package from a checkout (its code is
imported, never copied), builds a VQVAE and a VAR with VAR's constructors and init, saves
them as official checkpoint files, converts them with ``hart convert``, and returns both
sides: ``(vae, var, tokenizer, generator)``, so a benchmark can time the official sampler or
training step against ours on identical weights in the same process.
"""
from __future__ import annotations

import os
import sys
import tempfile

import torch

from tokenizer.config import PATCH_NUMS


def import_var(var_src: str):
    """VAR's ``models`` package from a checkout: (VQVAE, VAR, the models.var module)."""
    path = os.path.abspath(var_src)
    if not os.path.isfile(os.path.join(path, "models", "var.py")):
        raise SystemExit(f"--var-src {var_src}: not a FoundationVision/VAR checkout (no models/var.py)")
    sys.path.insert(0, path)
    import models.var as var_mod
    from models.var import VAR
    from models.vqvae import VQVAE

    return VQVAE, VAR, var_mod


def build(var_src: str, depth: int, width: int, heads: int, vocab: int = 4096, z: int = 32, vae_ch: int = 32,
          patch_nums=PATCH_NUMS[256], seed: int = 0, workdir: str | None = None):
    """Official VQVAE + VAR (VAR's init, AdaLN gates opened a little so the blocks matter),
    converted into ours. ``vae_ch`` only sizes the autoencoder's CNN, which the benchmarks
    leave out of their timings."""
    from hart.convert_var import convert_var
    from hart.model import HARTGenerator
    from tokenizer.model import HybridTokenizer

    VQVAE, VAR, _ = import_var(var_src)
    torch.manual_seed(seed)
    vae = VQVAE(vocab_size=vocab, z_channels=z, ch=vae_ch, test_mode=True, share_quant_resi=4,
                v_patch_nums=tuple(patch_nums)).eval()
    var = VAR(vae_local=vae, num_classes=1000, depth=depth, embed_dim=width, num_heads=heads, mlp_ratio=4.0,
              drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0, norm_eps=1e-6, shared_aln=False,
              cond_drop_rate=0.1, attn_l2_norm=True, patch_nums=tuple(patch_nums), flash_if_available=False,
              fused_if_available=False)
    var.init_weights(init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, init_std=-1)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in var.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    var.eval()
    work = workdir or tempfile.mkdtemp(prefix="var-official-")
    torch.save(vae.state_dict(), f"{work}/vae.pth")
    torch.save(var.state_dict(), f"{work}/var.pth")
    convert_var(f"{work}/vae.pth", f"{work}/model", var=f"{work}/var.pth")
    tok = HybridTokenizer.from_pretrained(f"{work}/model/tokenizer").eval()
    gen = HARTGenerator.from_pretrained(f"{work}/model/generator").eval()
    return vae, var, tok, gen


def sampler_without_decode(var):
    """VAR's ``autoregressive_infer_cfg`` with its final decode replaced by the identity, so it
    is timed like our sampler with ``decode=False``."""
    proxy = var.vae_proxy[0]
    proxy.fhat_to_img = lambda f_hat: f_hat
    return var.autoregressive_infer_cfg


def official_train_step(vae, var, opt, labels, ids):
    """VAR's trainer step on given token ids (its trainer.py, without the image encoding, the
    progressive-training weights or the logging): teacher inputs from the ids, forward,
    cross-entropy, backward, gradient clipping (2.0, as ours), AdamW."""
    import torch.nn.functional as F

    x = vae.quantize.idxBl_to_var_input(ids)
    gt = torch.cat(ids, 1)
    logits = var(labels, x)
    loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), gt.view(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(var.parameters(), 2.0)
    opt.step()
    return loss.detach()
