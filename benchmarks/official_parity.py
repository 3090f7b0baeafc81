"""Numerical parity of ``hart convert`` with the official code: FoundationVision/VAR and mit-han-lab/hart.

    git clone https://github.com/FoundationVision/VAR /path/to/VAR     # its code is imported, not copied
    python benchmarks/official_parity.py --var-src /path/to/VAR
    git clone https://github.com/mit-han-lab/hart /path/to/hart
    python -m pip install --target /tmp/hart-pydeps scipy             # HART imports scipy (not ours)
    python benchmarks/official_parity.py --hart-src /path/to/hart --pydeps /tmp/hart-pydeps

Either source or both (at least one). ``--var-src``: builds a small official VQVAE (ch 32, z 8,
V 64, VAR's 10 scales) and a depth-2 VAR with the official constructors, perturbs every
weight (so the AdaLN gates are open), saves both, converts them with ``hart convert``, and
prints max differences for: token ids, teacher-forcing inputs, decoded images, teacher-
forced logits, greedy sampling (cfg 4, top-k 1) and the HART tokenizer path (no Phi at the
last scale). CPU, fp32, one thread; fp64 cross-checks of the decoders at the end.

``--hart-src``: the same for HART's text-to-image transformer, its residual diffusion head
and its hybrid tokenizer, built with HART's own code (``benchmarks/hart_parity.py``; its
docstring lists what is compared and what is stubbed to run HART's code on a CPU). Its lines
are prefixed ``tok.``, ``table.`` and ``timestep.`` (the two transformer variants).
"""
import argparse
import os
import sys
import shutil
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
import torch
import torch.nn.functional as F

torch.set_num_threads(1)
torch.set_num_interop_threads(1)

HERE_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE_DIR))  # this project
sys.path.insert(1, HERE_DIR)  # hart_parity

from tokenizer.config import PATCH_NUMS  # noqa: E402
from hart_parity import mad, perturb  # noqa: E402  (one copy of the comparison helpers)

PNS = PATCH_NUMS[256]


def run_var(var_src: str, HERE: str) -> dict:
    """The VAR comparisons; returns {name: value}."""
    from var_official import import_var  # noqa: E402  (checks the checkout, then its models/)

    VQVAE, VAR, var_mod = import_var(var_src)

    from hart.convert_var import convert_var  # noqa: E402
    from hart.convert_hart import convert_hart_tokenizer  # noqa: E402
    from tokenizer.model import HybridTokenizer  # noqa: E402
    from hart.model import HARTGenerator  # noqa: E402
    from sampling.pipeline import HARTPipeline  # noqa: E402

    res = {}

    # ----------------------------------------------------------------------------- 1. official models
    torch.manual_seed(0)
    vae = VQVAE(vocab_size=64, z_channels=8, ch=32, test_mode=True, share_quant_resi=4, v_patch_nums=PNS)
    perturb(vae, 0.02, seed=1)
    with torch.no_grad():
        # codebook spread matched to the latent scale so that codes are distinct
        g = torch.Generator().manual_seed(2)
        x0 = torch.rand(2, 3, 256, 256, generator=g) * 2 - 1
        lat_std = vae.quant_conv(vae.encoder(x0)).std().item()
        vae.quantize.embedding.weight.copy_(torch.randn(64, 8, generator=g) * max(0.5, lat_std) * 0.5)
        # a non-trivial usage buffer as in a trained checkpoint
        vae.quantize.ema_vocab_hit_SV.copy_(torch.rand(len(PNS), 64, generator=g))
    vae.eval()
    res["latent_std"] = lat_std
    torch.save(vae.state_dict(), f"{HERE}/vae.pth")

    torch.manual_seed(3)
    var = VAR(
        vae_local=vae, num_classes=1000, depth=2, embed_dim=128, num_heads=2, mlp_ratio=4.0,
        drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0, norm_eps=1e-6, shared_aln=False,
        cond_drop_rate=0.1, attn_l2_norm=True, patch_nums=PNS, flash_if_available=False, fused_if_available=False,
    )
    var.init_weights(init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, init_std=-1)  # as build_vae_var
    perturb(var, 0.05, seed=4)  # opens the AdaLN gates, head, biases, scale_mul, embeddings
    with torch.no_grad():
        var.head.weight.mul_(4.0)  # logits with some spread so greedy choices are not near-ties
    var.eval()
    torch.save(var.state_dict(), f"{HERE}/var.pth")
    res["gate_absmean"] = [b.ada_lin[-1](torch.nn.functional.silu(var.class_emb.weight[:4]))[:, :256].abs().mean().item()
                           for b in var.blocks]

    # ----------------------------------------------------------------------------- 2. convert
    out = f"{HERE}/model"
    shutil.rmtree(out, ignore_errors=True)
    convert_var(f"{HERE}/vae.pth", out, var=f"{HERE}/var.pth")
    tok = HybridTokenizer.from_pretrained(f"{out}/tokenizer").eval()
    gen = HARTGenerator.from_pretrained(f"{out}/generator").eval()

    # ----------------------------------------------------------------------------- 3. comparisons
    g = torch.Generator().manual_seed(123)
    img = torch.rand(2, 3, 256, 256, generator=g) * 2 - 1

    with torch.no_grad():
        # a. ids
        ids_off = vae.img_to_idxBl(img)
        code = tok.encode(img)
        ids_our = code.ids
        res["ids_equal_per_scale"] = [(a == b).float().mean().item() for a, b in zip(ids_off, ids_our)]
        res["ids_distinct_per_scale"] = [int(a.unique().numel()) for a in ids_off]
        res["latent_maxdiff"] = mad(vae.quant_conv(vae.encoder(img)), tok.latent(img))
        f_hat_off = vae.quantize.f_to_idxBl_or_fhat(vae.quant_conv(vae.encoder(img)), to_fhat=True)[-1]
        res["encode_fhat_maxdiff"] = mad(f_hat_off, code.f_hat)

        # b. teacher-forcing inputs, from the official ids
        tf_off = vae.quantize.idxBl_to_var_input(ids_off)
        tf_our = tok.teacher_inputs(ids_off)
        res["teacher_shape"] = (tuple(tf_off.shape), tuple(tf_our.shape))
        res["teacher_maxdiff"] = mad(tf_off, tf_our)
        res["teacher_absmax"] = tf_off.abs().max().item()

        # c. decode
        im_off = vae.idxBl_to_img(ids_off, same_shape=True, last_one=True)
        im_our = tok.decode_ids(ids_off)
        res["decode_maxdiff"] = mad(im_off, im_our)
        res["decode_fhat_maxdiff"] = mad(vae.quantize.embed_to_fhat(
            [vae.quantize.embedding(i).transpose(1, 2).view(2, 8, p, p) for i, p in zip(ids_off, PNS)],
            all_to_max_scale=True, last_one=True), tok.ids_to_fhat(ids_off))

        # d. logits (teacher forced); VAR's forward draws cond-dropout with torch.rand even in eval
        var.cond_drop_rate = 0.0
        labels = torch.tensor([3, 1000])
        lg_off = var(labels, tf_off)
        lg_our = gen(labels, tf_off).logits
        res["logits_shape"] = (tuple(lg_off.shape), tuple(lg_our.shape))
        res["logits_maxdiff"] = mad(lg_off, lg_our)
        res["logits_absmax"] = lg_off.abs().max().item()
        res["logits_argmax_equal"] = (lg_off.argmax(-1) == lg_our.argmax(-1)).float().mean().item()

        # e. greedy sampling (top_k=1), cfg=4; record the official ids through its sampling helper
        rec = []
        orig = var_mod.sample_with_top_k_top_p_

        def recording(logits_BlV, **kw):
            r = orig(logits_BlV, **kw)
            rec.append(r[:, :, 0].clone())
            return r

        var_mod.sample_with_top_k_top_p_ = recording
        img_off = var.autoregressive_infer_cfg(B=2, label_B=torch.tensor([3, 7]), g_seed=0, cfg=4, top_k=1,
                                               top_p=0.95, more_smooth=False)
        var_mod.sample_with_top_k_top_p_ = orig
        pipe = HARTPipeline.from_pretrained(out)
        so = pipe.sample([3, 7], seed=0, cfg=4, top_k=1, top_p=1.0)
        img_our = (so.images + 1) / 2
        res["sample_ids_equal_per_scale"] = [(a == b).float().mean().item() for a, b in zip(rec, so.ids)]
        res["sample_image_maxdiff"] = mad(img_off, img_our)
        res["sample_image_range"] = (img_off.min().item(), img_off.max().item())
        # and the official teacher-forced greedy ids are consistent with our generator's teacher pass
        # (sanity: ids decoded by official decoder vs our decode of official ids)
        res["sample_decode_official_ids_maxdiff"] = mad(vae.idxBl_to_img(rec, True, True).add(1).mul(0.5), img_our)

        # ------------------------------------------------------------------------- 4. HART tokenizer path
        sd = {"vae." + k: v for k, v in vae.state_dict().items()}
        gd = torch.Generator().manual_seed(9)
        sd["disc.main.0.weight"] = torch.randn(16, 3, 4, 4, generator=gd)
        sd["disc.main.0.bias"] = torch.randn(16, generator=gd)
        sd["disc.main.2.weight"] = torch.randn(32, 16, 4, 4, generator=gd)
        torch.save(sd, f"{HERE}/hart_tok.pth")
        hout = f"{HERE}/hart_tok"
        shutil.rmtree(hout, ignore_errors=True)
        _, dropped = convert_hart_tokenizer(f"{HERE}/hart_tok.pth", hout, resolution=256)
        htok = HybridTokenizer.from_pretrained(hout).eval()
        res["hart_phi_last"] = htok.config.phi_last
        res["hart_dropped"] = dropped

        # official-code f_hat with no Phi at the last scale (hand-rolled from VAR's quantizer pieces)
        q = vae.quantize
        SN, H = len(PNS), PNS[-1]
        fh = torch.zeros(2, 8, H, H)
        for si, (idx, pn) in enumerate(zip(ids_off, PNS)):
            h = q.embedding(idx).transpose(1, 2).reshape(2, 8, pn, pn)
            if si < SN - 1:
                fh += q.quant_resi[si / (SN - 1)](F.interpolate(h, size=(H, H), mode="bicubic"))
            else:
                fh += h  # HART: no Phi at the last scale
        im_hart_off = vae.fhat_to_img(fh)
        im_hart_our = htok.decode_ids(ids_off)
        res["hart_fhat_maxdiff"] = mad(fh, htok.ids_to_fhat(ids_off))
        res["hart_decode_maxdiff"] = mad(im_hart_off, im_hart_our)
        res["hart_vs_var_decode_maxdiff(sanity, should be >0)"] = mad(im_hart_our, im_our)
        # ids: the last scale's Phi acts after its ids are chosen, so ids are unchanged
        res["hart_ids_equal_per_scale"] = [(a == b).float().mean().item() for a, b in zip(ids_off, htok.encode(img).ids)]

    # ----------------------------------------------------------------------------- fp64 cross-checks
    # (the fp32 decode differences come from the decoder's AttnBlock: official torch.bmm vs our SDPA;
    #  in float64 both paths must agree to ~1e-12 if the weights/mapping are right)
    def official_fhat(q, ids, phi_last, dtype):
        """embed_to_fhat(all_to_max_scale=True) re-typed: VAR's quantizer pieces, optional Phi at the last scale."""
        SN, H, B, C = len(PNS), PNS[-1], ids[0].shape[0], q.Cvae
        f = torch.zeros(B, C, H, H, dtype=dtype)
        for si, (idx, pn) in enumerate(zip(ids, PNS)):
            h = q.embedding(idx).transpose(1, 2).reshape(B, C, pn, pn).to(dtype)
            if si < SN - 1:
                f += q.quant_resi[si / (SN - 1)](F.interpolate(h, size=(H, H), mode="bicubic"))
            else:
                f += q.quant_resi[si / (SN - 1)](h) if phi_last else h
        return f

    with torch.no_grad():
        res["handrolled_vs_embed_to_fhat_fp32"] = mad(official_fhat(vae.quantize, ids_off, True, torch.float32),
                                                      vae.quantize.embed_to_fhat(
            [vae.quantize.embedding(i).transpose(1, 2).view(2, 8, p, p) for i, p in zip(ids_off, PNS)], True, True))
        vae64, tok64, htok64 = vae.double(), tok.double(), htok.double()
        q64 = vae64.quantize
        # our ids_to_fhat casts code vectors to fp32 (tokenizer/quant.py contribution), so in fp64 the
        # decoders are compared on the same official fp64 f_hat (f_hat itself already matches exactly in fp32)
        for name, ii, pl, t in (("fp64_decode_maxdiff", ids_off, True, tok64), ("fp64_hart_decode_maxdiff", ids_off, False, htok64),
                                ("fp64_sample_decode_maxdiff", rec, True, tok64)):
            f64 = official_fhat(q64, ii, pl, torch.float64)
            res[name] = mad(vae64.fhat_to_img(f64), t.decode_latent(f64))
        res["fp32_sample_fhat_maxdiff"] = mad(official_fhat(vae.float().quantize, rec, True, torch.float32), so.f_hat)
        # (no fp64 logits check: VAR.forward casts its input to fp32 itself)

    qr = vae.quantize.quant_resi
    res["phi_index_official"] = [[id(m) for m in qr.qresi_ls].index(id(qr[si / (len(PNS) - 1)])) for si in range(len(PNS))]
    res["phi_index_ours"] = [tok.quantize.quant_resi.index(k, len(PNS)) for k in range(len(PNS))]
    res["torch"] = torch.__version__
    res["threads"] = torch.get_num_threads()
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--var-src", default=None, help="a checkout of FoundationVision/VAR (its models/ and dist.py)")
    ap.add_argument("--hart-src", default=None, help="a checkout of mit-han-lab/hart (its hart/modules/)")
    ap.add_argument("--work", default=None, help="folder for the checkpoints (default: a temp folder)")
    import hart_parity

    hart_parity.add_arguments(ap)
    args = ap.parse_args(argv)
    if not (args.var_src or args.hart_src):
        ap.error("give --var-src, --hart-src or both")
    work = args.work or tempfile.mkdtemp(prefix="official-parity-")
    os.makedirs(work, exist_ok=True)
    res = {}
    if args.var_src:
        res.update(run_var(args.var_src, work))
    if args.hart_src:
        variants = hart_parity.parse_variants(args.hart_variants)
        hres = hart_parity.run(args.hart_src, work, args.pydeps, variants=variants)
        if args.var_src:  # torch and threads are printed once
            res.pop("torch"), res.pop("threads")
        res.update(hres)
    for k, v in res.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
