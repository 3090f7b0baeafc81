"""Numerical parity of ``hart convert`` (HART checkpoints) and our HART path with mit-han-lab/hart's own code.

    git clone https://github.com/mit-han-lab/hart /path/to/hart      # its code is imported, not copied
    python -m pip install --target /tmp/hart-pydeps scipy            # HART imports scipy; not a dependency of ours
    python benchmarks/official_parity.py --hart-src /path/to/hart --pydeps /tmp/hart-pydeps

Builds, with HART's own constructors, a small hybrid tokenizer (``HARTAutoEncoderWithDisc``:
ch 32, z 8, V 64, ``var_hybrid`` quantizer, 128 px -> an 8x8 latent, schedule 1,2,3,4,6,8)
and a depth-2 ``HARTForT2I`` (C 128, 2 heads, 8 context tokens of width 32, llama attention
and MLP, context RMSNorm, max pooling, diffusion head of width 64 and depth 2, 8 iDDPM
steps), runs HART's ``init_weights`` and then perturbs every weight (so the AdaLN gates and
the head's zeroed layers are open; then word_embed x10, the head's AdaLN x0.1 and the head
x4, so that greedy sampling does not collapse onto one code per scale), and writes them in
the released layout::

    WORK/hart-<variant>/llm/ema_model.bin      torch.save(model.state_dict())
    WORK/hart-<variant>/llm/config.json        model.config.to_json_file(...)
    WORK/hart-<variant>/tokenizer/             config.json + pytorch_model.bin (keys vae.*, disc.*)

for two variants: ``table`` (level embedding ``nn.Embedding``, l2-normalised attention) and
``timestep`` (HART's ``TimestepEmbedder`` level embedding, plain scaled attention), since the
released config is not known here. Each is converted with ``hart.convert_hart.convert_hart`` and
compared (CPU, fp32, one thread; max abs differences), one ``variant.name: value`` line each:

1. teacher-forced logits and last-block hidden states: HART's forward() draws a MaskGIT
   mask and a condition dropout, so its own pieces are composed instead, exactly as its
   forward does without them (context_embed(context_norm(ctx)) as the prefix, word_embed of
   the teacher inputs, + lvl_embed, each block with attn_bias_for_masking, si=-1,
   context_position_ids = cumsum(mask) - 1 and the context mask, get_logits from position
   context_token - 1 on); rows: a padded prompt, a full prompt and the null (all-zero) row;
2. greedy sampling (two prompts, one padded): HART's ``sample_with_top_k_top_p_`` is
   replaced (in the transformer module's namespace) by an argmax that records the ids and
   the guided logits; ours runs ``SamplingEngine`` with the ``hart`` preset (the last scale
   reuses the previous scale's guidance ratio, for the logits, the smoothing and the head)
   and an argmax draw (top-k 1; with smoothing, the preset's top-k 600/300, a no-op at
   V = 64, and the inverse-CDF draw replaced by an argmax). Three runs: cfg 4; cfg 1.25
   (the last scale's ratio is then exactly 1.0, where HART's ``DiffLoss.sample`` drops
   guidance); cfg 4.5 with HART's Gumbel smoothing (``more_smooth``, its demo setting),
   whose Gumbel noise is replayed from a copy of HART's generator state and handed to our
   engine in place of its own draws. The residual head's noise: HART's ``torch.randn``
   (DiffLoss.sample's start noise) and ``torch.randn_like`` (each p_sample step) draws are
   recorded and given to our ``sample_residual`` as ``noise=`` / ``step_noise=`` (the
   conditional rows), so ids, the guided logits per scale, the head's conditions, the
   residual, f_hat and the final image are compared; ``residual_on_official_cond`` runs our
   sampler on HART's own conditions;
3. the diffusion head alone: HART's ``diffloss.net(x, t, c)`` against ``gen.diffusion`` (all
   2z outputs: epsilon and the learned-range variance value), and HART's iDDPM sampler
   (``diffloss.sample``, cfg 3) against ``hart.diffusion.sample_residual`` on the same
   conditions and noise;
4. the tokenizer (shared by the variants): ids and the continuous remainder from HART's
   ``img_to_idxBl_and_frest``, teacher-forcing inputs (``idxBl_to_var_input``), f_hat and
   the decoded image from ids (HART's sampler path: no Phi at the last scale).

Running HART's code on a CPU, in this process only (nothing is installed or changed on disk):

* ``basic_hart.py`` imports ``hart_backend.fused_kernels`` (a CUDA extension). A stand-in
  module is put in ``sys.modules`` whose ``rms_norm(out, x, weight, eps, use_quant)`` writes
  x * rsqrt(mean(x^2) + eps) * weight into ``out`` in PyTorch. The fused RoPE functions
  are not provided: HART's naive (non-fused) RoPE path is the one it runs.
* HART calls ``.cuda()`` (the VAE in ``HARTForT2I.__init__``; masks, orders and noise in
  sampling): ``torch.Tensor.cuda`` and ``torch.nn.Module.cuda`` become no-ops returning self.
* ``scipy`` (imported by the transformer module) is not a dependency of this project:
  install it outside the project's environment (``pip install --target DIR scipy``) and pass
  ``--pydeps DIR`` (appended to ``sys.path``), or set ``PYTHONPATH=DIR``.
* Both HART and this project have a top-level package named ``hart`` (HART's has no
  ``__init__.py``). HART's is imported under its own name while ours is moved aside in
  ``sys.modules``, then the two are swapped back; HART's modules keep their own references.
  HART's constructors also run inside that swap.
* HART's ``PreTrainedModel`` classes never call ``post_init()``, which ``from_pretrained``
  of transformers >= 5 needs: ``HARTAutoEncoderWithDisc.from_pretrained`` (called by
  ``HARTForT2I.__init__`` with ``vae_path``) is replaced by a strict load of the folder's
  ``config.json`` + ``pytorch_model.bin``.
* HART prints while it builds (the mask shape, ``[init_weights]``); that output is swallowed.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import shutil
import sys
import tempfile
import types

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNS = (1, 2, 3, 4, 6, 8)  # 8x8 latent at 128 px (HART's autoencoder downsamples 16x)
RES = 128
V, Z, CTX_T, CTX_D = 64, 8, 8, 32
# (cfg, Gumbel smoothing): cfg 4 plain; 1.25 * 4/5 = 1.0 at the last scale, where HART's
# DiffLoss.sample skips guidance; cfg 4.5 with smoothing, HART's demo setting
SAMPLE_RUNS = ((4.0, False), (1.25, False), (4.5, True))
VARIANTS = {  # name: (use_timestep_embed, attn_l2_norm)
    "table": (False, True),
    "timestep": (True, False),
}


def mad(a, b):
    return (a.double() - b.double()).abs().max().item()


def perturb(module, std, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in module.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


# ----------------------------------------------------------------------------- HART's code on a CPU

def _rms_norm(out, x, weight, eps, use_quant):
    """Stand-in for hart_backend.fused_kernels.rms_norm (the fp path; use_quant is never set)."""
    if use_quant:
        raise NotImplementedError("the int8 RMSNorm of hart_backend is not provided")
    xf = x.float()
    out.copy_((xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight)


STAND_INS = []  # the modules stood in for in this process


def _stand_in_module(parent: str, child: str, **names) -> None:
    """A module ``parent.child`` holding ``names``, in ``sys.modules`` unless the real one is
    importable."""
    import importlib.util

    if parent in sys.modules or importlib.util.find_spec(parent) is not None:
        return
    STAND_INS.append(f"{parent}.{child}")
    sub = types.ModuleType(f"{parent}.{child}")
    sub.__dict__.update(names)
    pkg = types.ModuleType(parent)
    setattr(pkg, child, sub)
    sys.modules.setdefault(parent, pkg)
    sys.modules.setdefault(f"{parent}.{child}", sub)


def _install_stand_ins(cpu: bool = True):
    """hart_backend's RMSNorm in PyTorch; on a CPU also ``.cuda()`` as a no-op."""
    _stand_in_module("hart_backend", "fused_kernels", rms_norm=_rms_norm)
    if cpu:
        torch.Tensor.cuda = lambda self, *a, **k: self
        torch.nn.Module.cuda = lambda self, *a, **k: self


def _scipy_stand_in():
    """``scipy.stats.truncnorm``, which HARTForT2I only builds for its training masks: a stand-in
    that refuses to be drawn from, for timing HART's sampler where scipy is not installed."""
    def truncnorm(*a, **k):
        return types.SimpleNamespace(rvs=lambda *a, **k: (_ for _ in ()).throw(
            RuntimeError("scipy stand-in: HART's training masks are not available")))

    _stand_in_module("scipy", "stats", truncnorm=truncnorm)


def _take_hart_modules() -> dict:
    return {k: sys.modules.pop(k) for k in list(sys.modules) if k == "hart" or k.startswith("hart.")}


@contextlib.contextmanager
def official_namespace(official: dict):
    """``hart`` means HART's package inside the block (ours is set aside and restored after)."""
    ours = _take_hart_modules()
    sys.modules.update(official)
    try:
        yield
    finally:
        official.update(_take_hart_modules())
        sys.modules.update(ours)


def import_official_hart(hart_src: str, pydeps: str | None = None, cpu: bool = True,
                         scipy_stand_in: bool = False) -> types.SimpleNamespace:
    """HART's modules (imported from ``hart_src``, never copied) on a CPU (``cpu=False``: on a
    GPU, with its ``.cuda()`` calls as they are); see the module doc. ``scipy_stand_in``: where
    scipy is missing, a stand-in for the one name HART's transformer takes from it (sampling only)."""
    src = os.path.abspath(hart_src)
    if not os.path.isfile(os.path.join(src, "hart", "modules", "models", "transformer", "hart_transformer_t2i.py")):
        raise SystemExit(f"--hart-src {hart_src}: not a mit-han-lab/hart checkout "
                         "(no hart/modules/models/transformer/)")
    if pydeps:
        sys.path.append(os.path.abspath(pydeps))
    try:
        import scipy.stats  # noqa: F401
    except ImportError:
        if scipy_stand_in:
            _scipy_stand_in()
        else:
            raise SystemExit("HART's code imports scipy, which is not installed here: pip install --target DIR "
                             "scipy and pass --pydeps DIR (or PYTHONPATH=DIR)") from None
    _install_stand_ins(cpu)
    official: dict = {}
    with official_namespace(official):
        pkg = types.ModuleType("hart")
        pkg.__path__ = [os.path.join(src, "hart")]
        pkg.__package__ = "hart"
        sys.modules["hart"] = pkg
        mods = {
            "T": "hart.modules.models.transformer.hart_transformer_t2i",
            "TC": "hart.modules.models.transformer.configuration",
            "AE": "hart.modules.models.autoencoder.hart_autoencoder_with_disc",
            "AEC": "hart.modules.models.autoencoder.configuration",
        }
        ns = types.SimpleNamespace(**{k: importlib.import_module(v) for k, v in mods.items()}, official=official)

    def from_pretrained(cls, path, **_):
        config = cls.config_class.from_json_file(os.path.join(path, "config.json"))
        model = cls(config)
        state = torch.load(os.path.join(path, "pytorch_model.bin"), map_location="cpu", weights_only=True)
        torch.nn.Module.load_state_dict(model, state, strict=True)
        return model.eval()

    ns.AE.HARTAutoEncoderWithDisc.from_pretrained = classmethod(from_pretrained)
    return ns


# ----------------------------------------------------------------------------- official models

def build_official_tokenizer(H, folder):
    """HART's hybrid autoencoder (+ its discriminator), perturbed; saved as config.json + pytorch_model.bin."""
    with official_namespace(H.official), contextlib.redirect_stdout(io.StringIO()):
        cfg = H.AEC.HARTAutoEncoderWithDiscConfig(
            vocab_size=V, z_channels=Z, ch=32, v_patch_nums=PNS, quantizer_type="var_hybrid", hybrid=True,
            share_quant_resi=4, test_mode=True)
        torch.manual_seed(0)
        ae = H.AE.HARTAutoEncoderWithDisc(cfg)
    vae = ae.vae
    perturb(vae, 0.02, seed=1)
    with torch.no_grad():
        g = torch.Generator().manual_seed(2)
        x0 = torch.rand(2, 3, RES, RES, generator=g) * 2 - 1
        lat_std = vae.quant_conv(vae.encoder(x0)).std().item()
        vae.quantize.embedding.weight.copy_(torch.randn(V, Z, generator=g) * max(0.5, lat_std) * 0.5)
        vae.quantize.ema_vocab_hit_SV.copy_(torch.rand(len(PNS), V, generator=g))
    ae.eval()
    os.makedirs(folder, exist_ok=True)
    torch.save(ae.state_dict(), os.path.join(folder, "pytorch_model.bin"))
    ae.config.to_json_file(os.path.join(folder, "config.json"))
    return lat_std


def build_official_transformer(H, ckpt_dir, use_timestep_embed, attn_l2_norm, seed):
    """HARTForT2I with HART's constructors and init, every weight perturbed; saved as llm/."""
    tok_dir = os.path.join(ckpt_dir, "tokenizer")
    with official_namespace(H.official), contextlib.redirect_stdout(io.StringIO()):
        cfg = H.TC.HARTForT2IConfig(
            vae_path=tok_dir, context_token=CTX_T, context_dim=CTX_D, depth=2, embed_dim=128, num_heads=2,
            mlp_ratio=4.0, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0, norm_eps=1e-6, shared_aln=False,
            cond_drop_rate=0.1, attn_l2_norm=attn_l2_norm, patch_nums=PNS, flash_if_available=False,
            fused_if_available=False, mlp_type="llama", attn_type="llama", disable_aln=False,
            use_timestep_embed=use_timestep_embed, sep_aln_pooling_mode="max", use_cross_attn=False,
            diff_width=64, diff_depth=2, num_sampling_steps="8", sampler="iddpm", use_context_norm=True)
        torch.manual_seed(seed)
        model = H.T.HARTForT2I(cfg)
        model.init_weights(init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, init_std=-1)
    perturb(model, 0.05, seed=seed + 1)  # opens the AdaLN gates and the head's zeroed layers
    with torch.no_grad():
        # greedy sampling with random weights collapses onto one code per scale unless the
        # tokens' content outweighs the position-independent parts: a larger input embedding
        # and a smaller head AdaLN shift; the head gets some spread so choices are not near-ties
        model.word_embed.weight.mul_(10.0)
        model.head_nm.ada_lin[-1].weight.mul_(0.1)
        model.head_nm.ada_lin[-1].bias.mul_(0.1)
        model.head.weight.mul_(4.0)
    model.eval()
    llm = os.path.join(ckpt_dir, "llm")
    os.makedirs(llm, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(llm, "ema_model.bin"))
    model.config.to_json_file(os.path.join(llm, "config.json"))
    return model


# ----------------------------------------------------------------------------- HART's pieces, composed

def official_teacher_forced(m, ctx, mask, teacher):
    """HART's forward() without its MaskGIT masking and condition dropout: (logits, hidden), both (B, L, .)."""
    B, T = mask.shape
    pos = mask.long().cumsum(1) - 1
    cond = m.context_embed(m.context_norm(ctx))
    x = torch.cat([cond, m.word_embed(teacher.float())], 1)
    ed = x.shape[1]
    x = x + m.lvl_embed(m.lvl_1L[:, :ed].expand(B, -1))
    bias = m.attn_bias_for_masking[:, :, :ed, :ed]
    for blk in m.blocks:
        x = blk(x=x, cond_BD=cond, attn_bias=bias, si=-1, context_position_ids=pos, context_mask=mask, m_maskgit=None)
    logits = m.get_logits(x.float(), cond)
    return logits[:, T - 1:], x[:, T - 1:]


def official_fhat_from_ids(q, ids, patch_nums):
    """f_hat as HART's sampler builds it (get_next_autoregressive_input: no Phi at the last scale)."""
    B, SN, n = ids[0].shape[0], len(patch_nums), patch_nums[-1]
    f_hat = torch.zeros(B, q.Cvae, n, n)
    for si, (idx, pn) in enumerate(zip(ids, patch_nums)):
        h = q.embedding(idx).transpose(1, 2).reshape(B, q.Cvae, pn, pn)
        f_hat, _ = q.get_next_autoregressive_input(si, SN, f_hat, h, patch_nums=patch_nums)
    return f_hat


@contextlib.contextmanager
def recording_randn(draws: list):
    """Record every torch.randn / torch.randn_like draw (HART's DiffLoss.sample / p_sample)."""
    randn, randn_like = torch.randn, torch.randn_like

    def rec_randn(*a, **k):
        r = randn(*a, **k)
        draws.append(("randn", r.clone()))
        return r

    def rec_randn_like(*a, **k):
        r = randn_like(*a, **k)
        draws.append(("randn_like", r.clone()))
        return r

    torch.randn, torch.randn_like = rec_randn, rec_randn_like
    try:
        yield
    finally:
        torch.randn, torch.randn_like = randn, randn_like


def split_diffusion_draws(draws, n):
    """HART's draws -> (start noise (n, z), [per-step noise (n, z)]): the conditional rows.

    With guidance DiffLoss.sample draws n rows and repeats them for the unconditional half,
    and p_sample's 2n-row draws reach the output through the first n only (forward_with_cfg
    reads x[:n]); without guidance (its cfg == 1.0) both are 2n rows of two separate chains."""
    kinds = [k for k, _ in draws]
    assert kinds and kinds[0] == "randn" and all(k == "randn_like" for k in kinds[1:]), kinds
    return draws[0][1][:n], [d[:n] for _, d in draws[1:]]


# ----------------------------------------------------------------------------- comparisons

def compare_tokenizer(vae, tok, res):
    g = torch.Generator().manual_seed(123)
    img = torch.rand(3, 3, RES, RES, generator=g) * 2 - 1
    with torch.no_grad():
        out = vae.img_to_idxBl_and_frest(img)
        ids_off, frest = out[:-1], out[-1]
        code = tok.encode(img)
        res["tok.ids_equal_per_scale"] = [(a == b).float().mean().item() for a, b in zip(ids_off, code.ids)]
        res["tok.ids_distinct_per_scale"] = [int(a.unique().numel()) for a in ids_off]
        # HART's continuous target: f_rest before the last scale's code, minus that code
        target = frest - vae.quantize.embedding(ids_off[-1])  # (B, N, z)
        ours = code.residual.flatten(2).transpose(1, 2)
        res["tok.residual_maxdiff"] = mad(target, ours)
        res["tok.residual_absmax"] = target.abs().max().item()
        tf_off = vae.quantize.idxBl_to_var_input(ids_off)
        tf_our = tok.teacher_inputs(ids_off)
        res["tok.teacher_shape"] = (tuple(tf_off.shape), tuple(tf_our.shape))
        res["tok.teacher_maxdiff"] = mad(tf_off, tf_our)
        fh_off = official_fhat_from_ids(vae.quantize, ids_off, PNS)
        res["tok.fhat_from_ids_maxdiff"] = mad(fh_off, tok.ids_to_fhat(ids_off))
        res["tok.decode_ids_maxdiff"] = mad(vae.fhat_to_img(fh_off), tok.decode_ids(ids_off))
        fh_full = fh_off + target.transpose(1, 2).reshape(fh_off.shape)
        res["tok.decode_with_residual_maxdiff"] = mad(vae.fhat_to_img(fh_full.clone()), tok.decode(code))
    return ids_off


def make_contexts(B, seed):
    """Encoder outputs of B prompts (row 0 padded after 5 tokens, row 1 full) + the null row.

    Pads carry nonzero vectors (HART sees whatever the text model leaves at pad positions)."""
    g = torch.Generator().manual_seed(seed)
    ctx = torch.randn(B, CTX_T, CTX_D, generator=g) * 2.0
    mask = torch.ones(B, CTX_T, dtype=torch.bool)
    mask[0, 5:] = False
    return ctx, mask


def run_variant(H, name, model, vae, ckpt_dir, ids_tf, res):
    from hart.convert_hart import convert_hart
    from hart.diffusion import sample_residual
    from hart.model import HARTGenerator
    from tokenizer.model import HybridTokenizer

    p = f"{name}."
    out = os.path.join(os.path.dirname(ckpt_dir), f"converted-{name}")
    shutil.rmtree(out, ignore_errors=True)
    out_path, dropped = convert_hart(ckpt_dir, out, overwrite=True)
    res[p + "dropped"] = dropped
    gen = HARTGenerator.from_pretrained(os.path.join(out_path, "generator")).eval()
    tok = HybridTokenizer.from_pretrained(os.path.join(out_path, "tokenizer")).eval()
    gc = gen.config
    res[p + "our_config"] = {**{k: getattr(gc, k) for k in (
        "level_embed", "attn_l2_norm", "rope_2d", "mask_pads", "context_pool", "context_norm", "target_scale")},
        "head_sampler": gc.head.sampler, "head_learn_sigma": gc.head.learn_sigma}

    with torch.no_grad():
        # 1. teacher forcing: a padded prompt, a full prompt, the null row
        ctx, mask = make_contexts(2, seed=7)
        ctx = torch.cat([ctx, torch.zeros(1, CTX_T, CTX_D)])
        mask = torch.cat([mask, torch.zeros(1, CTX_T, dtype=torch.bool)])
        mask[2, 0] = True  # HART's null row: only the first position counts
        teacher = vae.quantize.idxBl_to_var_input(ids_tf)
        lg_off, h_off = official_teacher_forced(model, ctx, mask, teacher)
        o = gen((ctx, mask), teacher)
        res[p + "logits_shape"] = (tuple(lg_off.shape), tuple(o.logits.shape))
        res[p + "logits_maxdiff"] = mad(lg_off, o.logits)
        res[p + "logits_maxdiff_per_row"] = [mad(lg_off[i], o.logits[i]) for i in range(3)]
        res[p + "logits_absmax"] = lg_off.abs().max().item()
        res[p + "logits_argmax_equal"] = (lg_off.argmax(-1) == o.logits.argmax(-1)).float().mean().item()
        res[p + "hidden_maxdiff"] = mad(h_off, o.hidden)
        res[p + "hidden_absmax"] = h_off.abs().max().item()

        # 3. the diffusion head alone, and HART's iDDPM sampler alone
        g = torch.Generator().manual_seed(11)
        N = 16
        x = torch.randn(N, Z, generator=g)
        t = torch.randint(0, 1000, (N,), generator=g)
        c = torch.randn(N, gen.config.width, generator=g)
        net_off = model.diffloss.net(x, t, c)
        net_our = gen.diffusion(x, t, c)
        res[p + "diffhead_shape"] = (tuple(net_off.shape), tuple(net_our.shape))
        res[p + "diffhead_maxdiff"] = mad(net_off, net_our)
        res[p + "diffhead_eps_absmax"] = net_off[:, :Z].abs().max().item()
        res[p + "diffhead_var_range"] = (net_off[:, Z:].min().item(), net_off[:, Z:].max().item())
        cu = torch.randn(N, gen.config.width, generator=g)
        draws = []
        torch.manual_seed(5)
        with recording_randn(draws):
            s_off = model.diffloss.sample(z=torch.cat([c, cu]), temperature=1.0, cfg=3.0)[:N]
        start, steps = split_diffusion_draws(draws, N)
        s_our = sample_residual(gen.diffusion, c, cu, cfg=3.0, steps=8, noise=start, step_noise=steps,
                                sampler=gen.config.head.sampler) * gen.config.target_scale
        res[p + "iddpm_sampler_maxdiff"] = mad(s_off, s_our)
        res[p + "iddpm_sampler_absmax"] = s_off.abs().max().item()
        res[p + "iddpm_sampler_clipped_share"] = (s_off.abs() >= 0.6 - 1e-6).float().mean().item()

        # 2. greedy sampling: ids per scale, the head's conditions, residual, f_hat, image
        for cfg, smooth in SAMPLE_RUNS:
            tag = f"cfg{cfg:g}" + ("-smooth" if smooth else "")
            compare_greedy_sampling(H, model, gen, tok, cfg, smooth, res, f"{p}{tag}.")


def compare_greedy_sampling(H, model, gen, tok, cfg, smooth, res, p):
    """HART's autoregressive_infer_cfg against our SamplingEngine: argmax ids, HART's noise.

    Ids are the argmax of the guided logits on both sides (HART's top-k 600/300 and ours are
    no-ops at V = 64). With ``smooth`` (HART's ``more_smooth``) the Gumbel noise HART draws
    from its generator is replayed from a copy of the generator's state and given to our
    engine in place of its own draws."""
    from hart import kernels
    import sampling.engine as engine_mod
    from sampling.engine import SamplingEngine
    from sampling.seeds import make_generators
    from sampling.options import SamplingOptions

    B = 2
    ctx, mask = make_contexts(B, seed=8)
    rec, rec_logits, gumbels, hart_z, hart_diff, hart_fhat = [], [], [], [], [], []
    T, orig_sample, orig_gumbel = H.T, H.T.sample_with_top_k_top_p_, H.T.gumbel_softmax_with_rng

    def argmax_sample(logits_BlV, **kw):
        r = logits_BlV.argmax(-1, keepdim=True)
        rec.append(r[:, :, 0].clone())
        rec_logits.append(logits_BlV.clone())  # guided
        return r

    def recording_gumbel(logits, tau=1, hard=False, eps=1e-10, dim=-1, rng=None):
        replay = torch.Generator(device=rng.device)
        replay.set_state(rng.get_state())  # the draws HART is about to make
        gumbels.append(-torch.empty_like(logits).exponential_(generator=replay).log())
        return orig_gumbel(logits, tau=tau, hard=hard, eps=eps, dim=dim, rng=rng)

    dl, vae = model.diffloss, model.vae_proxy[0]
    dl_sample, fhat_to_img = dl.sample, vae.fhat_to_img

    def recording_dl_sample(z, temperature=1.0, cfg=1.5, sampler=None):
        hart_z.append((z.clone(), cfg))
        r = dl_sample(z, temperature=temperature, cfg=cfg, sampler=sampler)
        hart_diff.append(r.clone())
        return r

    def recording_fhat_to_img(f_hat):
        hart_fhat.append(f_hat.clone())
        return fhat_to_img(f_hat)

    T.sample_with_top_k_top_p_, T.gumbel_softmax_with_rng = argmax_sample, recording_gumbel
    dl.sample, vae.fhat_to_img = recording_dl_sample, recording_fhat_to_img
    draws = []
    try:
        torch.manual_seed(0)
        with recording_randn(draws):
            img_off = model.autoregressive_infer_cfg(
                B=B, label_B=ctx.clone(), g_seed=0, cfg=cfg, top_k=1, top_p=0.0, more_smooth=smooth,
                context_position_ids=mask.long().cumsum(1) - 1, context_mask=mask.clone())
    finally:
        T.sample_with_top_k_top_p_, T.gumbel_softmax_with_rng = orig_sample, orig_gumbel
        del dl.sample, vae.fhat_to_img  # back to the class's methods
    N = PNS[-1] ** 2
    start, steps = split_diffusion_draws(draws, B * N)

    ours = {}
    orig_sr, orig_draw = engine_mod.sample_residual, kernels.sample_from_logits
    orig_engine_gumbel = SamplingEngine._gumbel

    def sample_residual(head, cond, cond_uncond=None, cfg=0.0, **kw):
        ours.update(cond=cond.clone(), uncond=None if cond_uncond is None else cond_uncond.clone(), cfg=cfg,
                    sampler=kw.get("sampler"), steps=kw.get("steps"), kw=dict(kw))
        kw.update(noise=start, step_noise=steps)  # HART's draws
        return orig_sr(head, cond, cond_uncond, cfg, **kw)

    hart_gumbels = list(gumbels)
    engine_mod.sample_residual = sample_residual
    kernels.sample_from_logits = lambda logits, u: logits.argmax(-1)
    SamplingEngine._gumbel = lambda self, gens, n, V: hart_gumbels.pop(0)
    try:
        if smooth:  # the preset as it is (its top-k 600 / 300 keep all 64 codes)
            opts = SamplingOptions.preset("hart", cfg=cfg)
        else:
            opts = SamplingOptions.preset("hart", cfg=cfg, top_k=1, top_k_schedule=(), top_p=1.0, smooth=False)
        so = SamplingEngine(gen, tok).sample((ctx, mask), make_generators(range(B)), opts, return_logits=True)
    finally:
        engine_mod.sample_residual, kernels.sample_from_logits = orig_sr, orig_draw
        SamplingEngine._gumbel = orig_engine_gumbel
    res[p + "ids_equal_per_scale"] = [(a == b).float().mean().item() for a, b in zip(rec, so.ids)]
    res[p + "ids_distinct_per_scale"] = [int(a.unique().numel()) for a in rec]
    K = len(PNS)
    guided = [(1 + cfg * opts.ratio(k, K)) * lg[:B] - cfg * opts.ratio(k, K) * lg[B:] for k, lg in enumerate(so.logits)]
    res[p + "guided_logits_maxdiff_per_scale"] = [float(f"{mad(a, b):.3g}") for a, b in zip(rec_logits, guided)]
    if smooth:
        res[p + "gumbel_draws(hart, ours used)"] = (len(gumbels), len(gumbels) - len(hart_gumbels))
    z_off, head_cfg = hart_z[0]
    res[p + "head_cfg(hart, ours)"] = (head_cfg, ours.get("cfg"))
    res[p + "head_sampler(ours)"] = (ours.get("sampler"), ours.get("steps"))
    res[p + "head_cond_maxdiff"] = mad(z_off[:B * N], ours["cond"])
    res[p + "head_uncond_maxdiff"] = mad(z_off[B * N:], ours["uncond"]) if ours.get("uncond") is not None else None
    resid_off = hart_diff[0][:B * N].view(B, N, Z).transpose(1, 2).reshape(B, Z, PNS[-1], PNS[-1])
    res[p + "residual_maxdiff"] = mad(resid_off, so.residual)
    res[p + "residual_absmax"] = resid_off.abs().max().item()
    # the last iDDPM step returns the clipped x0: this share sits exactly at +-vae_scale
    res[p + "residual_clipped_share"] = (resid_off.abs() >= 0.6 - 1e-6).float().mean().item()
    # our sampler on HART's own conditions (separates the sampler from the transformer)
    kw = dict(ours["kw"], noise=start, step_noise=steps)
    x = orig_sr(gen.diffusion, z_off[:B * N], z_off[B * N:] if ours.get("uncond") is not None else None,
                ours["cfg"], **kw) * gen.config.target_scale
    res[p + "residual_on_official_cond_maxdiff"] = mad(hart_diff[0][:B * N], x)
    res[p + "discrete_fhat_maxdiff"] = mad(hart_fhat[0] - resid_off, so.f_hat)
    res[p + "fhat_maxdiff"] = mad(hart_fhat[0], so.f_hat + so.residual)
    res[p + "image_maxdiff"] = mad(img_off, (so.images + 1) / 2)
    res[p + "image_range"] = (img_off.min().item(), img_off.max().item())
    # our decoder on HART's final f_hat (separates the decoder from the sampler)
    res[p + "decode_official_fhat_maxdiff"] = mad(img_off, (tok.decode_latent(hart_fhat[0]) + 1) / 2)


def run(hart_src: str, work: str | None = None, pydeps: str | None = None, variants=None) -> dict:
    """Build, convert and compare; returns {name: value} (see the module doc)."""
    H = import_official_hart(hart_src, pydeps)
    work = work or tempfile.mkdtemp(prefix="hart-parity-")
    os.makedirs(work, exist_ok=True)
    if ROOT not in sys.path:
        sys.path.insert(1, ROOT)
    res = {}
    tok_dir = os.path.join(work, "hart-tokenizer")
    res["tok.latent_std"] = build_official_tokenizer(H, tok_dir)
    from hart.convert_hart import convert_hart_tokenizer
    from tokenizer.model import HybridTokenizer

    tout = os.path.join(work, "converted-hart-tokenizer")
    shutil.rmtree(tout, ignore_errors=True)
    convert_hart_tokenizer(os.path.join(tok_dir, "pytorch_model.bin"), tout, patch_nums=PNS)
    vae = H.AE.HARTAutoEncoderWithDisc.from_pretrained(tok_dir).vae
    ids_tf = compare_tokenizer(vae, HybridTokenizer.from_pretrained(tout).eval(), res)
    for name in variants or VARIANTS:
        timestep, l2 = VARIANTS[name]
        ckpt = os.path.join(work, f"hart-{name}")
        shutil.rmtree(ckpt, ignore_errors=True)
        shutil.copytree(tok_dir, os.path.join(ckpt, "tokenizer"))
        model = build_official_transformer(H, ckpt, timestep, l2, seed=10 * (list(VARIANTS).index(name) + 1))
        res[f"{name}.hart_config"] = dict(use_timestep_embed=timestep, attn_l2_norm=l2)
        with torch.no_grad():
            ctx, _ = make_contexts(2, seed=8)
            cond = model.context_embed(model.context_norm(ctx)).amax(1)
            res[f"{name}.gate_absmean"] = [b.ada_lin(cond)[:, :2 * model.C].abs().mean().item() for b in model.blocks]
        run_variant(H, name, model, model.vae_proxy[0], ckpt, ids_tf, res)
    res["torch"] = torch.__version__
    res["threads"] = torch.get_num_threads()
    return res


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--pydeps", default=None, metavar="DIR",
                    help="a folder with scipy (pip install --target DIR scipy), appended to sys.path for HART")
    ap.add_argument("--hart-variants", default=",".join(VARIANTS), metavar="LIST",
                    help=f"which HART builds to compare (default {','.join(VARIANTS)})")


def parse_variants(text: str) -> list:
    names = [v for v in text.split(",") if v]
    bad = [v for v in names if v not in VARIANTS]
    if bad or not names:
        raise SystemExit(f"--hart-variants: choose from {', '.join(VARIANTS)}, got {text!r}")
    return names
