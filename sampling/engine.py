"""Next-scale sampling engine: static KV cache, one forward per scale, scale-growing CFG.

For a batch of B class ids the engine runs 2B sequences (conditional rows first, then the
null class) when guidance is on, through the generator's own weights:

    scale k (tokens [b_k, e_k)):
        x      = start token (k = 0) or word_embed(area_down(f_hat) at pn_k) + lvl + pos
        blocks : AdaLN-LN (fused kernel) -> qkv -> k, v written in place into the
                 preallocated (2B, H, L, hd) cache at [b_k, e_k) -> attention of the new
                 queries over cache[:, :, :e_k] (block-causal: every earlier and same-scale
                 key, nothing later, so no mask) -> proj, gated residual; same for the MLP
        head   : logits (2B, T, V) -> one fused CFG + top-k/top-p + draw kernel -> ids_k
        f_hat += Phi(up(codebook[ids_k]))  (the tokenizer's next_scale_input)

CFG ratio t_k = cfg * k / (K - 1) (VAR): logits = (1 + t_k) cond - t_k uncond.
Last scale: ids, then the continuous residual from the diffusion head (HART), per token
conditioned on decoder_norm(last block output + word_embed(codebook[id])); its guidance acts
on the noise prediction with the last scale's ratio, as for the logits:
(1 + t) eps_c - t eps_u (:func:`hart.diffusion.guide`).

Randomness comes only from explicit ``torch.Generator`` objects, one per image, drawn in
a fixed order (per scale: one uniform per token, then the smoothing noise if on; then the
diffusion start noise), so an image depends on its own seed only, not on its batch.

The engine holds no weights of its own; it reads the generator's submodules
(``blk.ada_lin``, ``blk.attn``, ``blk.ffn``, ``head_nm``, ``head``) so the cache write is
in place and the per-scale step can be compiled (``compile=True``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math

import torch
import torch.nn.functional as F

from hart.diffusion import make_sample_scheduler, sample_residual
from hart.common.errors import UserError
from hart.model import MAX_ATTN_SCALE_LOG, HARTGenerator
from sampling import kernels
from sampling.options import SamplingOptions
from tokenizer.model import HybridTokenizer, TokenizerCode

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclasses.dataclass
class SampleOutput:
    """What :meth:`SamplingEngine.sample` returns (all on the engine's device).

    ids:      K LongTensors (B, pn_k^2)
    residual: (B, z, n, n) predicted continuous residual, or None without a diffusion head
    f_hat:    (B, z, n, n) discrete latent (soft if smoothing was on)
    images:   (B, 3, R, R) in [-1, 1], or None when ``decode=False``
    previews: K tensors (B, 3, R, R): the image after each scale (the last one includes the
              residual), or None unless requested
    logits:   K tensors (2B or B, pn_k^2, V): the raw head logits (conditional rows first),
              or None unless requested (for the cache-parity test)
    """

    ids: list
    residual: torch.Tensor | None
    f_hat: torch.Tensor
    images: torch.Tensor | None = None
    previews: list | None = None
    logits: list | None = None


def cfg_ratio(cfg: float, k: int, num_scales: int) -> float:
    """VAR's guidance schedule t_k = cfg * k / (K - 1), growing from 0 to cfg."""
    return cfg * k / (num_scales - 1) if num_scales > 1 else cfg


def make_generators(seeds, device="cpu") -> list[torch.Generator]:
    """One ``torch.Generator`` per image, seeded with that image's seed."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def check_compatible(tokenizer: HybridTokenizer, generator: HARTGenerator) -> None:
    t, g = tokenizer.config, generator.config
    pairs = (("patch_nums", tuple(t.patch_nums), tuple(g.patch_nums)),
             ("codebook_size", t.codebook_size, g.codebook_size),
             ("z_channels", t.z_channels, g.z_channels))
    for name, a, b in pairs:
        if a != b:
            raise UserError(f"tokenizer and generator disagree on {name}: {a} vs {b}")


class SamplingEngine:
    """Drives a :class:`HARTGenerator` scale by scale against a static KV cache.

    Args:
        generator, tokenizer: eval-mode models on the same device.
        dtype: ``"fp32"`` or ``"bf16"`` (CPU/GPU autocast; the cache is bf16 too).
        kernels: backend for the fused kernels, ``"auto"`` / ``"torch"`` / ``"triton"``
            (see :func:`sampling.kernels.select_backend`).
        compile: wrap the per-scale transformer step in ``torch.compile`` (one full graph
            per scale; the fused ops are then left to the compiler's own fusion). ``True``
            uses the default backend (inductor); a string names another backend.
    """

    def __init__(self, generator: HARTGenerator, tokenizer: HybridTokenizer, dtype: str = "fp32",
                 kernels: str = "auto", compile: bool | str = False):
        check_compatible(tokenizer, generator)
        if dtype not in DTYPES:
            raise UserError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.generator = generator
        self.tokenizer = tokenizer
        self.config = generator.config
        self.dtype = dtype
        self.kernels = "torch" if compile else kernels
        self.caches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._step = self._scale_step
        if compile:
            import torch._dynamo

            # one specialised graph per scale (static shapes), more than the default limit
            limit = 2 * self.config.num_scales + 4
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
            backend = compile if isinstance(compile, str) else "inductor"
            self._step = torch.compile(self._scale_step, backend=backend, dynamic=False, fullgraph=True)

    # ------------------------------------------------------------------ cache

    @property
    def device(self) -> torch.device:
        return self.generator.word_embed.weight.device

    def _autocast(self):
        if self.dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.dtype])

    def setup_caches(self, batch: int) -> None:
        """Preallocate (batch, H, L, hd) keys and values per block; reused while shapes match."""
        c = self.config
        dt = DTYPES[self.dtype]
        shape = (batch, c.heads, c.seq_len, c.head_dim)
        if self.caches and tuple(self.caches[0][0].shape) == shape and self.caches[0][0].dtype == dt:
            return
        self.caches = [
            (torch.empty(shape, device=self.device, dtype=dt), torch.empty(shape, device=self.device, dtype=dt))
            for _ in self.generator.blocks
        ]

    # ------------------------------------------------------------------ the transformer step

    def _modulations(self, cond: torch.Tensor) -> tuple[list, tuple]:
        """Per-batch constants of every block and of the head, computed once per sample call.

        Returns ([(gamma1, gamma2, scale1, scale2, shift1, shift2 (each (2B, 1, C)),
        qkv bias (3C,), q scale (1, H, 1, 1) or None) per block], (head scale, head shift)).
        """
        C = self.config.width
        blocks = []
        for blk in self.generator.blocks:
            attn = blk.attn
            qkv_bias = torch.cat([attn.q_bias, attn.zero_k_bias, attn.v_bias])
            q_scale = attn.scale_mul_1H11.clamp(max=MAX_ATTN_SCALE_LOG).exp() if attn.l2_norm else None
            blocks.append((*blk.ada_lin(cond).view(-1, 1, 6, C).unbind(2), qkv_bias, q_scale))
        head = self.generator.head_nm.ada_lin(cond).view(-1, 1, 2, C).unbind(2)
        return blocks, head

    def _attention(self, attn, xn: torch.Tensor, qkv_bias, q_scale, cache, start: int) -> torch.Tensor:
        """Cached block-causal attention of tokens [start, start + T). (B, T, C) -> (B, T, C)."""
        B, T, C = xn.shape
        H, hd = attn.heads, attn.head_dim
        qkv = F.linear(xn, attn.mat_qkv.weight, qkv_bias).view(B, T, 3, H, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, hd)
        if q_scale is not None:  # cosine attention (VAR): unit q, k; q scaled by the learned exp(s)
            q = F.normalize(q, dim=-1) * q_scale
            k = F.normalize(k, dim=-1)
        end = start + T
        ck, cv = cache
        q = q.to(ck.dtype)  # the learned scale is fp32; keep attention in the cache's dtype
        ck[:, :, start:end] = k  # in place: the cache never grows or moves
        cv[:, :, start:end] = v
        # block-causal: queries of this scale see exactly the keys [0, end), so no mask
        out = F.scaled_dot_product_attention(
            q, ck[:, :, :end], cv[:, :, :end], scale=attn.scale
        )  # (B, H, T, hd)
        return attn.proj(out.transpose(1, 2).reshape(B, T, C))

    def _scale_step(self, x: torch.Tensor, block_mods: list, head_mods: tuple, start: int):
        """One scale through every block and the head.

        Args:
            x: (2B, T, C) embedded tokens at positions [start, start + T).
        Returns:
            (logits (2B, T, V), hidden (2B, T, C): the last block's output).
        """
        eps = self.config.norm_eps
        for blk, mods, cache in zip(self.generator.blocks, block_mods, self.caches):
            g1, g2, s1, s2, b1, b2, qkv_bias, q_scale = mods
            xn = kernels.adaln_layernorm(x, s1, b1, eps, self.kernels)
            x = torch.addcmul(x, self._attention(blk.attn, xn, qkv_bias, q_scale, cache, start), g1)  # x + attn * gamma1
            h = blk.ffn(kernels.adaln_layernorm(x, s2, b2, eps, self.kernels))
            x = torch.addcmul(x, h, g2)
        hs, hb = head_mods
        return self.generator.head(kernels.adaln_layernorm(x, hs, hb, eps, self.kernels)), x

    # ------------------------------------------------------------------ sampling

    def _uniforms(self, gens: list[torch.Generator], n: int) -> torch.Tensor:
        """(B, n) uniforms, row i from image i's generator."""
        return torch.stack([torch.rand(n, generator=g, device=g.device) for g in gens]).to(self.device)

    def _gumbel(self, gens: list[torch.Generator], n: int, V: int) -> torch.Tensor:
        u = torch.stack([torch.rand(n, V, generator=g, device=g.device) for g in gens]).to(self.device)
        return -torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7)))  # (B, n, V)

    def _soft_contribution(self, weights: torch.Tensor, k: int) -> torch.Tensor:
        """f_hat increment of soft code vectors (VAR's smoothing). weights (B, n_k, V) -> (B, z, n, n)."""
        tok = self.tokenizer
        q = tok.quantize
        K = len(q.patch_nums)
        pn, n = q.patch_nums[k], tok.config.latent_size
        vec = weights.float() @ q.embedding.float()  # (B, pn*pn, z)
        h = vec.view(vec.shape[0], pn, pn, -1).permute(0, 3, 1, 2)
        if pn != n:
            h = F.interpolate(h, size=(n, n), mode="bicubic")
        if k == K - 1 and not q.phi_last:
            return h
        return q.quant_resi(h, k, K)

    @torch.no_grad()
    def sample(
        self,
        class_ids,
        generators: list[torch.Generator],
        options: SamplingOptions | None = None,
        *,
        decode: bool = True,
        previews: bool = False,
        return_logits: bool = False,
    ) -> SampleOutput:
        """Sample B images.

        Args:
            class_ids: (B,) int ids in [0, num_classes).
            generators: B ``torch.Generator`` objects (one per image, any device).
            options: :class:`SamplingOptions` (validated here).
            decode: also decode the final images (the benchmark times it separately).
            previews: decode the discrete f_hat after every scale.
            return_logits: keep the raw per-scale head logits.
        Returns:
            :class:`SampleOutput`.
        """
        opt = (options or SamplingOptions()).validate()
        gen, tok, c = self.generator, self.tokenizer, self.config
        labels = torch.as_tensor(class_ids, dtype=torch.long, device=self.device).view(-1)
        B = labels.numel()
        if len(generators) != B:
            raise ValueError(f"need one generator per image: {B} ids, {len(generators)} generators")
        if B and (labels.min() < 0 or labels.max() >= c.num_classes):
            raise UserError(f"class ids must be in [0, {c.num_classes - 1}], got {labels.tolist()}")
        use_cfg = opt.cfg > 0
        K, V = c.num_scales, c.codebook_size
        ranges = c.scale_ranges
        rows = torch.cat([labels, torch.full_like(labels, c.null_class)]) if use_cfg else labels
        self.setup_caches(rows.numel())

        ids, logits_out, preview_imgs = [], [], []
        f_hat = None
        with self._autocast():
            cond = gen.condition(rows)  # (2B, C)
            block_mods, head_mods = self._modulations(cond)
            x = gen.embed_start(cond)  # (2B, 1, C)
            for k in range(K):
                start, end = ranges[k]
                logits, hidden = self._step(x, block_mods, head_mods, start)  # (2B, T, V), (2B, T, C)
                if return_logits:
                    logits_out.append(logits.float().clone())
                T = end - start
                t = cfg_ratio(opt.cfg, k, K)
                lc = logits[:B].reshape(B * T, V)
                lu = logits[B:].reshape(B * T, V) if use_cfg else None
                u = self._uniforms(generators, T).reshape(B * T)
                if opt.smooth:
                    filtered = kernels.filter_logits(
                        kernels.guided_logits(lc, lu, t, opt.temperature), opt.top_k_at(k), opt.top_p)
                    ids_k = kernels.sample_from_logits(filtered, u).view(B, T)
                    r = k / (K - 1) if K > 1 else 1.0
                    tau = max(0.27 * (1 - 0.95 * r), 0.005)  # VAR's smoothing temperature
                    noise = self._gumbel(generators, T, V).view(B * T, V)
                    w = torch.softmax((filtered * (1 + r) + noise) / tau, dim=-1).view(B, T, V)
                    h_k = self._soft_contribution(w, k)
                    f_hat = h_k if f_hat is None else f_hat + h_k
                    nxt = None
                    if k + 1 < K:
                        pn = c.patch_nums[k + 1]
                        nxt = F.interpolate(f_hat, size=(pn, pn), mode="area").flatten(2).transpose(1, 2)
                else:
                    ids_k = kernels.cfg_sample(
                        lc, lu, u, t, opt.temperature, opt.top_k_at(k), opt.top_p, backend=self.kernels
                    ).view(B, T)
                    f_hat, nxt = tok.next_scale_input(k, f_hat, ids_k)
                ids.append(ids_k)
                if previews and k + 1 < K:
                    with torch.autocast(self.device.type, enabled=False):
                        preview_imgs.append(tok.decode_latent(f_hat.float()).float())
                if nxt is not None:
                    e = gen.embed_inputs(nxt, end)  # (B, T', C)
                    x = torch.cat([e, e]) if use_cfg else e  # both halves see the same ids
            residual = self._residual(hidden, ids[-1], B, generators, opt, use_cfg)
        images = None
        if decode or previews:  # in fp32: the decoder is not part of the autocast step
            images = tok.decode(TokenizerCode(ids=ids, residual=residual, f_hat=f_hat.float())).float()
        if previews:
            preview_imgs.append(images)
        return SampleOutput(
            ids=ids, residual=residual, f_hat=f_hat.float(), images=images if decode else None,
            previews=preview_imgs if previews else None, logits=logits_out if return_logits else None,
        )

    def _residual(self, hidden, ids_last, B, generators, opt: SamplingOptions, use_cfg: bool):
        """HART's residual for the last scale: DDIM with the diffusion head, CFG on eps.

        Returns (B, z, n, n) in latent units, or None without a head.
        """
        gen, c = self.generator, self.config
        head = gen.diffusion
        if head is None:
            return None
        N = ids_last.shape[1]
        vec = self.tokenizer.code_vectors(ids_last)  # (B, N, z)
        conds = gen.diffusion_cond(hidden[:B], vec).reshape(B * N, -1)
        unconds = gen.diffusion_cond(hidden[B:], vec).reshape(B * N, -1) if use_cfg else None
        # start noise per image from its own generator (batch independence)
        noise = torch.stack([torch.randn(N, head.channels, generator=g, device=g.device) for g in generators])
        x = sample_residual(
            head, conds, unconds, cfg=cfg_ratio(opt.cfg, c.num_scales - 1, c.num_scales),
            steps=opt.diff_steps or c.diff_sample_steps, temperature=opt.diff_temperature,
            scheduler=make_sample_scheduler(c.diff_train_steps), noise=noise.reshape(B * N, -1),
        )  # (B*N, z), DDIM with eta 0: deterministic given the start noise
        n = self.tokenizer.config.latent_size
        res = (x.float() * c.target_scale).view(B, N, -1)  # target units -> latent units
        return res.transpose(1, 2).reshape(B, -1, n, n)
