"""Next-scale sampling loop: static KV cache, one model step per scale, scale-growing CFG.

For a batch of B class ids the loop runs 2B sequences (conditional rows first, then the
null class) when guidance is on. The transformer is the generator's own forward
(:meth:`hart.model.HARTGenerator.step` over the static cache it owns, with the fused
kernels dispatched inside its blocks); this module only orchestrates:

    scale k (tokens [b_k, e_k)):
        x      = start token (k = 0) or word_embed(area_down(f_hat) at pn_k) + lvl + pos
        logits, hidden = generator.step(x, cond, b_k)       (cache written in place)
        ids_k  = one fused CFG + top-k/top-p + draw kernel on the logits
        f_hat, next input = tokenizer.next_scale_input(k, f_hat, ids_k)

CFG ratio t_k = cfg * k / (K - 1) (VAR): logits = (1 + t_k) cond - t_k uncond (HART's
sampler guides its last scale with the previous scale's ratio: ``last_scale_ratio``).
Last scale: ids, then the continuous residual from the diffusion head (HART), per token
conditioned on decoder_norm(last block output + word_embed(codebook[id])); its guidance acts
on the noise prediction with the logits' formula (1 + t) eps_c - t eps_u
(:func:`hart.diffusion.guide`), t = ``options.head_cfg`` (None: the last scale's ratio),
through the one :func:`hart.diffusion.sample_residual`.

Randomness comes only from explicit ``torch.Generator`` objects, one per image, drawn in
a fixed order (per scale: one uniform per token, then the smoothing noise if on; then the
diffusion start noise), so an image depends on its own seed only, not on its batch.

:meth:`SamplingEngine.sample` is :meth:`~SamplingEngine.prepare` (checks, the rows with their
null conditions), :meth:`~SamplingEngine.draw_noise` (the run's random numbers: all before the
run, or, with smoothing in an eager run, each scale's as the run reaches it, which keeps one
scale's V-wide Gumbel noise in memory instead of every scale's) and :meth:`~SamplingEngine.run`,
tensor work only, which :mod:`sampling.graphs` captures as one CUDA graph.
"""
from __future__ import annotations

import contextlib
import dataclasses

import torch

from hart.diffusion import make_head_scheduler, sample_residual
from hart.common.errors import UserError
from hart.model import HARTGenerator
from hart import kernels
from sampling.options import SamplingOptions, head_settings
from tokenizer.model import HybridTokenizer, TokenizerCode

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # fp16: HART's (GPU)


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


@dataclasses.dataclass
class RunNoise:
    """Every random number of one sampling run, drawn before the run starts (per image from its
    own generator, in the order the module doc gives), so that the run itself draws nothing and
    can be replayed as one CUDA graph (:mod:`sampling.graphs`). All on the engine's device.

    uniforms: K tensors (B, pn_k^2), one per token: the draw of its id
    gumbels:  K tensors (B, pn_k^2, V) of Gumbel noise (VAR's smoothing), or None when it is off
    head:     (draws, B * N, z) standard normal noise of the residual head (the start noise, then
              iDDPM's per-step noise), N = pn_{K-1}^2; None without a head
    """

    uniforms: list
    gumbels: list | None = None
    head: torch.Tensor | None = None
    # drawn as the run goes instead (an eager run with smoothing): k -> (uniforms, gumbels) of
    # scale k, then () -> head; called in that order, the order of the draws
    draw_scale: object = None
    draw_head: object = None

    def scale(self, k: int):
        """(uniforms (B, pn_k^2), Gumbel noise (B, pn_k^2, V) or None) of scale k."""
        if self.draw_scale is not None:
            return self.draw_scale(k)
        return self.uniforms[k], None if self.gumbels is None else self.gumbels[k]

    def head_noise(self):
        return self.draw_head() if self.draw_head is not None else self.head

    def tensors(self) -> list:
        """The tensors in a fixed order (the graph's static inputs)."""
        return [*self.uniforms, *(self.gumbels or []), *([] if self.head is None else [self.head])]


def check_compatible(tokenizer: HybridTokenizer, generator: HARTGenerator) -> None:
    t, g = tokenizer.config, generator.config
    pairs = (("patch_nums", tuple(t.patch_nums), tuple(g.patch_nums)),
             ("codebook_size", t.codebook_size, g.codebook_size),
             ("z_channels", t.z_channels, g.z_channels))
    for name, a, b in pairs:
        if a != b:
            raise UserError(f"tokenizer and generator disagree on {name}: {a} vs {b}")


class SamplingEngine:
    """Drives a :class:`HARTGenerator` scale by scale against its static KV cache.

    Args:
        generator, tokenizer: eval-mode models on the same device.
        dtype: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast; the KV cache takes the same dtype).
        kernels: backend for the fused kernels, ``"auto"`` / ``"torch"`` / ``"triton"``
            (see :func:`hart.kernels.select_backend`).
        compile: wrap the generator's per-scale step in ``torch.compile`` (full graphs; shapes
            turn symbolic after the first recompile, so about three graphs per batch size
            instead of one per scale; the fused ops are then left to the compiler). ``True``
            uses the default backend (inductor); a string names another backend. On a GPU,
            inductor runs with ``mode="reduce-overhead"``: each scale's step is captured into
            a CUDA graph and replayed (gpt-fast's recipe; the static KV cache has fixed
            addresses, so the graphs write into it in place).
        cuda_graph: on a GPU, capture each whole sampling run (every scale, guidance, filtering,
            the draws, the f_hat updates and the residual head; not the decode) as one CUDA
            graph per batch size and options, and replay it (:mod:`sampling.graphs`): the same
            ids as eager sampling for the same seeds. Elsewhere, or where a run cannot be
            captured, it samples eagerly and says why in one line.
    """

    def __init__(self, generator: HARTGenerator, tokenizer: HybridTokenizer, dtype: str = "fp32",
                 kernels: str = "auto", compile: bool | str = False, cuda_graph: bool = False):
        check_compatible(tokenizer, generator)
        if dtype not in DTYPES:
            raise UserError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if compile and cuda_graph:
            raise UserError("--compile and --cuda-graph do not go together (a compiled step makes CUDA graphs "
                            "of its own): pick one")
        self.generator = generator
        self.tokenizer = tokenizer
        self.config = generator.config
        self.dtype = dtype
        self.kernels = "torch" if compile else kernels
        self._step = generator.step
        self._cudagraphs = False
        # the residual head's sampler, made once (set_timesteps each draw: same steps, same state)
        self.head_scheduler = make_head_scheduler(self.config.head) if generator.diffusion is not None else None
        if compile:
            import torch._dynamo

            # one specialised graph per scale (static shapes) and per batch / dtype, more than
            # the default limit
            limit = 8 * self.config.num_scales
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
            backend = compile if isinstance(compile, str) else "inductor"
            self._cudagraphs = backend == "inductor" and self.device.type == "cuda"
            mode = "reduce-overhead" if self._cudagraphs else None
            # dynamic=None: static first, symbolic after a recompile (measured on the CPU: 3 graphs
            # per batch size instead of 10 for var's 10 scales)
            self._step = torch.compile(generator.step, backend=backend, dynamic=None, fullgraph=True, mode=mode)
        self.target_inverse = None  # set by setup_caches
        self.graphs = None
        if cuda_graph:
            from sampling.graphs import GraphRunner

            self.graphs = GraphRunner(self)

    @property
    def device(self) -> torch.device:
        return self.generator.word_embed.weight.device

    def _autocast(self, cache: bool = True):
        """The run's autocast; ``cache=False`` under CUDA graph capture (autocast's cast cache
        must not outlive the capture)."""
        if self.dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.dtype], cache_enabled=cache)

    def _uniforms(self, gens: list[torch.Generator], n: int) -> torch.Tensor:
        """(B, n) uniforms, row i from image i's generator."""
        return torch.stack([torch.rand(n, generator=g, device=g.device) for g in gens]).to(self.device)

    def _gumbel(self, gens: list[torch.Generator], n: int, V: int) -> torch.Tensor:
        u = torch.stack([torch.rand(n, V, generator=g, device=g.device) for g in gens]).to(self.device)
        return -torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7)))  # (B, n, V)

    def draw_noise(self, generators: list[torch.Generator], options: SamplingOptions,
                   ahead: bool = True) -> RunNoise:
        """The run's random numbers, per image from its own generator: per scale one uniform per
        token, then (smoothing) its Gumbel noise; then the residual head's noise. ``ahead=False``
        with smoothing: drawn as the run reaches them (the same numbers, one scale's noise held)."""
        c, opt = self.config, options
        sizes = [pn * pn for pn in c.patch_nums]

        def scale(k):
            n = sizes[k]
            return self._uniforms(generators, n), self._gumbel(generators, n, c.codebook_size)

        gumbels = None
        if opt.smooth and not ahead:
            return RunNoise([], draw_scale=scale, draw_head=lambda: self._head_noise(generators, opt))
        if opt.smooth:  # scale by scale, in the order of the draws
            uniforms, gumbels = (list(t) for t in zip(*map(scale, range(len(sizes)))))
        elif all(g.device.type == "cpu" for g in generators):
            # one draw and one copy to the device for every scale: a CPU generator draws the
            # same numbers in one call as in one call per scale (a CUDA one does not)
            uniforms = list(self._uniforms(generators, sum(sizes)).split(sizes, dim=1))
        else:
            uniforms = [self._uniforms(generators, n) for n in sizes]
        return RunNoise(uniforms, gumbels, self._head_noise(generators, opt))

    def _head_noise(self, generators, opt: SamplingOptions):
        """(draws, B * N, z): the head's start noise, then (iddpm) one per step; None without a head."""
        c = self.config
        if self.generator.diffusion is None:
            return None
        N, z = c.patch_nums[-1] ** 2, self.generator.diffusion.channels
        steps, _ = head_settings(opt.diff_steps, opt.diff_temperature, c)
        draws = 1 + (steps if c.head.sampler == "iddpm" else 0)
        head = torch.stack([torch.randn(draws, N, z, generator=g, device=g.device) for g in generators])
        return head.to(self.device).transpose(0, 1).reshape(draws, len(generators) * N, z)

    def prepare(self, inputs, generators: list[torch.Generator], options: SamplingOptions | None = None):
        """Check the inputs; -> (rows: the conditions of the run's rows, conditional first and
        then the null ones when guidance is on; B; validated options)."""
        opt = (options or SamplingOptions()).validate()
        gen, c = self.generator, self.config
        if c.is_text:
            if not isinstance(inputs, (tuple, list)) or len(inputs) != 2:
                raise UserError("this model is text-conditioned: give it prompts, not classes")
            inputs = (inputs[0].to(self.device).float(), inputs[1].to(self.device).bool())
            B = inputs[0].shape[0]
        else:
            inputs = torch.as_tensor(inputs, dtype=torch.long, device=self.device).view(-1)
            c.check_class_ids(inputs.tolist())
            B = inputs.numel()
        if len(generators) != B:
            raise ValueError(f"need one generator per image: {B} conditions, {len(generators)} generators")
        return (gen.with_null(inputs) if opt.cfg > 0 else inputs), B, opt

    @torch.no_grad()
    def sample(
        self,
        inputs,
        generators: list[torch.Generator],
        options: SamplingOptions | None = None,
        *,
        decode: bool = True,
        previews: bool = False,
        return_logits: bool = False,
        on_scale=None,
    ) -> SampleOutput:
        """Sample B images.

        Args:
            inputs: class models: (B,) int ids in [0, num_classes); text models: the encoded
                prompts ``(tokens (B, T, D), mask (B, T))`` (:meth:`hart.text.TextEncoder.encode`).
            generators: B ``torch.Generator`` objects (one per image, any device).
            options: :class:`SamplingOptions` (validated here).
            decode: also decode the final images (the benchmark times it separately).
            previews: decode the discrete f_hat after every scale.
            return_logits: keep the raw per-scale head logits.
            on_scale: called after each scale k as ``on_scale(k, ids_k, f_hat)`` (ids_k
                (B, pn_k^2), f_hat the discrete latent so far); it observes, draws nothing.
        Returns:
            :class:`SampleOutput`.
        """
        rows, B, opt = self.prepare(inputs, generators, options)
        tok = self.tokenizer
        graphed = None
        if self.graphs is not None:
            eager_only = [n for n, on in (("previews", previews), ("return_logits", return_logits),
                                          ("on_scale", on_scale is not None)) if on]
            graphed = self.graphs.run(rows, lambda: self.draw_noise(generators, opt), opt, B, eager_only)
        if graphed is not None:
            ids, residual, f_hat = graphed
            logits_out, preview_imgs = None, None
        else:
            noise = self.draw_noise(generators, opt, ahead=False)
            self.setup_caches(rows, opt)
            ids, residual, f_hat, logits_out, preview_imgs = self.run(
                rows, noise, opt, B, return_logits=return_logits, previews=previews, on_scale=on_scale)
        images = None
        if decode or previews:  # in fp32: the decoder is not part of the autocast step
            images = tok.decode(TokenizerCode(ids=ids, residual=residual, f_hat=f_hat)).float()
        if previews:
            preview_imgs.append(images)
        return SampleOutput(
            ids=ids, residual=residual, f_hat=f_hat, images=images if decode else None,
            previews=preview_imgs if previews else None, logits=logits_out if return_logits else None,
        )

    def setup_caches(self, rows, opt: SamplingOptions) -> None:
        """The generator's static KV cache for the run's rows (2B with guidance, else B), and
        what the run reads but must not compute (the head's metric inverse)."""
        n = (rows[0] if self.config.is_text else rows).shape[0]
        self.generator.setup_caches(n, DTYPES[self.dtype], self.device, self.kernels)
        self.target_inverse = self.generator.target_inverse()
        if self._cudagraphs:  # a new run of the per-scale graphs: earlier outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()

    def run(self, rows, noise: RunNoise, opt: SamplingOptions, B: int, *, return_logits: bool = False,
            previews: bool = False, on_scale=None, autocast_cache: bool = True):
        """The sampling run proper, after :meth:`prepare`, :meth:`draw_noise` and
        :meth:`setup_caches`: tensor work only (no host sync, no random draw, no allocation
        that depends on values), so that :mod:`sampling.graphs` can capture it.

        Returns (ids: K (B, pn_k^2), residual (B, z, n, n) or None, f_hat (B, z, n, n) fp32,
        logits or None, previews or None).
        """
        gen, tok, c = self.generator, self.tokenizer, self.config
        use_cfg = opt.cfg > 0
        K, V = c.num_scales, c.codebook_size
        ranges = c.token_ranges
        ids, logits_out, preview_imgs = [], [], []
        f_hat = None
        with self._autocast(cache=autocast_cache):
            cond = gen.condition(rows)  # Condition of 2B rows
            x = cond.prefix  # (2B, P, C)
            for k in range(K):
                start, end = ranges[k]
                logits, hidden = self._step(x, cond, start)  # (2B, T, V), (2B, T, C)
                if return_logits:
                    logits_out.append(logits.float().clone())
                T = logits.shape[1]  # pn_k^2 (a text prefix yields the 1x1 scale's one row)
                r = opt.ratio(k, K)  # k / (K - 1); HART: the last scale reuses the previous one
                t = opt.guidance(k, K)  # cfg * r
                lc = logits[:B].reshape(B * T, V)
                lu = logits[B:].reshape(B * T, V) if use_cfg else None
                u, gumbel = noise.scale(k)
                u = u.reshape(B * T)
                if opt.smooth:
                    filtered = kernels.filter_logits(
                        kernels.guided_logits(lc, lu, t, opt.temperature), opt.top_k_at(k), opt.top_p)
                    ids_k = kernels.sample_from_logits(filtered, u).view(B, T)
                    tau = max(0.27 * (1 - 0.95 * r), 0.005)  # VAR's smoothing temperature
                    w = torch.softmax((filtered * (1 + r) + gumbel.view(B * T, V)) / tau, dim=-1)
                    soft = w.view(B, T, V).float() @ tok.codebook.float()  # (B, T, z): a soft mix of codes
                    f_hat, nxt = tok.next_scale_input(k, f_hat, ids_k, vectors=soft)
                else:
                    ids_k = kernels.cfg_sample(
                        lc, lu, u, t, opt.temperature, opt.top_k_at(k), opt.top_p, backend=self.kernels
                    ).view(B, T)
                    f_hat, nxt = tok.next_scale_input(k, f_hat, ids_k)
                ids.append(ids_k)
                if on_scale is not None:
                    on_scale(k, ids_k, f_hat)
                if previews and k + 1 < K:
                    with torch.autocast(self.device.type, enabled=False):
                        preview_imgs.append(tok.decode_latent(f_hat.float()).float())
                if nxt is not None:
                    e = gen.embed_inputs(nxt, end)  # (B, T', C)
                    x = torch.cat([e, e]) if use_cfg else e  # both halves see the same ids
            f_hat = f_hat.float()
            residual = self._residual(hidden, ids[-1], B, noise.head_noise(), opt, use_cfg, f_hat)
        return (ids, residual, f_hat, logits_out if return_logits else None,
                preview_imgs if previews else None)

    def _residual(self, hidden, ids_last, B, noise, opt: SamplingOptions, use_cfg: bool, f_hat=None):
        """HART's residual for the last scale: DDIM with the diffusion head, CFG on eps.
        ``noise`` is :attr:`RunNoise.head`; ``f_hat`` (B, z, n, n), the drawn ids' discrete
        latent, conditions a map head.

        Returns (B, z, n, n) in latent units, or None without a head.
        """
        gen, c = self.generator, self.config
        head = gen.diffusion
        if head is None:
            return None
        N = ids_last.shape[1]
        vec = self.tokenizer.code_vectors(ids_last)  # (B, N, z)
        conds = gen.diffusion_cond(hidden[:B], vec, f_hat).reshape(B * N, -1)
        unconds = gen.diffusion_cond(hidden[B:], vec, f_hat).reshape(B * N, -1) if use_cfg else None
        steps, temperature = head_settings(opt.diff_steps, opt.diff_temperature, c)
        t = opt.guidance(c.num_scales - 1, c.num_scales) if opt.head_cfg is None else opt.head_cfg
        if opt.last_scale_ratio == "previous" and t == 1.0:
            t = 0.0  # HART's DiffLoss.sample skips guidance when its cfg argument is exactly 1
        x = sample_residual(
            head, conds, unconds, cfg=t, steps=steps,
            temperature=temperature,
            scheduler=self.head_scheduler,
            noise=noise[0], sampler=c.head.sampler, step_noise=list(noise[1:]) or None,
            num_train_timesteps=c.head.train_steps, prediction=c.head.prediction,
        )  # (B*N, z); DDIM (eta 0) is deterministic given the start noise
        n = self.tokenizer.config.latent_size
        res = gen.from_target(x.float(), self.target_inverse).view(B, N, -1)  # target units -> latent units
        return res.transpose(1, 2).reshape(B, -1, n, n)
