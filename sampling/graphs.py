"""A whole sampling run as one CUDA graph, captured once per batch size and options, replayed.

At batch 1 a next-scale sampler is bound by kernel launches, not by arithmetic: each scale
runs every block's dozen kernels, then guidance, filtering and the draw, the f_hat update
and the next input, and the last scale the residual head's steps. Captured into one CUDA
graph (gpt-fast's recipe, carried from the per-token step to the whole scale loop), a run is
one launch. What makes it capturable (:meth:`sampling.engine.SamplingEngine.run`):

* randomness is drawn before the run (:meth:`~sampling.engine.SamplingEngine.draw_noise`,
  per image from its own generator) and copied into the graph's static inputs, so a replay
  draws exactly what an eager run draws: the same ids for the same seeds;
* no host sync inside the run (the draw is branch-free, the guidance ratios, top-k and the
  head's timesteps are Python numbers fixed by the options, so they are part of the graph);
* the static KV cache has fixed addresses; each graph keeps the cache it was captured with
  and puts it back on the generator before a replay.

A graph is keyed by everything that shapes it: rows, the conditions' shapes, options,
dtype and kernels. The first run of a key runs eagerly on the runner's own stream (it warms
the kernels and libraries there and is this call's result), then captures on that stream;
later runs of the key replay. At most :data:`MAX_GRAPHS` graphs are kept (each holds its
cache and memory pool); a new key beyond them drops them all at once, never one alone: the
graphs of one capture stream share cuBLAS's workspace, which destroying any one of them
releases (https://github.com/pytorch/pytorch/issues/193402). :meth:`GraphRunner.clear` drops them too (after the
model's weights change or move). Where a run cannot be captured (no GPU, previews, logits or
a per-scale callback asked for, or the capture fails) the engine samples eagerly and this
module says why in one line, once per reason.
"""
from __future__ import annotations

import collections
import dataclasses
import sys

import torch

MAX_GRAPHS = 4


@dataclasses.dataclass
class _Graph:
    graph: object  # torch.cuda.CUDAGraph
    rows: object  # static condition inputs: (2B,) ids or ((2B, T, D) tokens, (2B, T) mask)
    noise: list  # static noise tensors (RunNoise.tensors order)
    caches: list  # the blocks' (K, V) cache tensors it was captured with
    out: tuple  # static outputs: (ids list, residual or None, f_hat)
    keep: object  # other tensors the graph reads (the head's metric inverse), kept alive


def _clone_inputs(x):
    """A tensor, or a tuple / list of them, cloned (static graph inputs)."""
    return type(x)(t.clone() for t in x) if isinstance(x, (tuple, list)) else x.clone()


def _copy_inputs(dst, src) -> None:
    if isinstance(dst, (tuple, list)):
        for d, s in zip(dst, src):
            d.copy_(s)
    else:
        dst.copy_(src)


class GraphRunner:
    """Captures and replays an engine's sampling runs (see the module doc)."""

    def __init__(self, engine):
        self.engine = engine
        self.graphs: collections.OrderedDict = collections.OrderedDict()
        self.failed: dict = {}  # key -> why its capture failed (sampled eagerly from then on)
        self.said: set = set()
        self.replays = 0  # runs served by a replay (for tests and benchmarks)
        self.captures = 0
        self.stream = None  # the runner's own stream: warm-ups and captures (made on first use)

    def clear(self) -> None:
        """Drop every graph (all at once; see the module doc)."""
        self.graphs.clear()

    def say(self, why: str) -> None:
        """One line on stderr per reason."""
        if why not in self.said:
            self.said.add(why)
            print(f"note: sampling eagerly, not as one CUDA graph: {why}", file=sys.stderr)

    def key(self, rows, opt, B: int):
        e = self.engine
        shapes = tuple(tuple(t.shape) for t in rows) if isinstance(rows, (tuple, list)) else (tuple(rows.shape),)
        return (B, shapes, repr(opt), e.dtype, e.kernels, str(e.device))

    def run(self, rows, draw_noise, opt, B: int, eager_only=()):
        """(ids, residual, f_hat) from a graph, or None: the caller samples eagerly.
        ``draw_noise()`` gives the run's :class:`~sampling.engine.RunNoise`, all drawn ahead."""
        e = self.engine
        if e.device.type != "cuda":
            return self.say("CUDA graphs need a CUDA device")
        if eager_only:
            return self.say(f"{', '.join(eager_only)} asked for")
        key = self.key(rows, opt, B)
        if key in self.failed:
            return self.say(self.failed[key])
        noise = draw_noise()
        with torch.cuda.device(e.device):
            g = self.graphs.get(key)
            if g is None:
                return self.capture(key, rows, noise, opt, B)
            return self.replay(g, rows, noise)

    def replay(self, g: _Graph, rows, noise):
        e = self.engine
        _copy_inputs(g.rows, rows)
        for d, s in zip(g.noise, noise.tensors()):
            d.copy_(s)
        for blk, c in zip(e.generator.blocks, g.caches):
            blk.attn.cache = c
        e.generator.kernel_backend = e.kernels
        g.graph.replay()
        self.replays += 1
        ids, residual, f_hat = g.out
        return [t.clone() for t in ids], None if residual is None else residual.clone(), f_hat.clone()

    def capture(self, key, rows, noise, opt, B: int):
        """Warm up and capture a new key; returns the warm-up's (eager) result."""
        e = self.engine
        if len(self.graphs) >= MAX_GRAPHS:
            self.clear()
        if self.stream is None:
            self.stream = torch.cuda.Stream(device=e.device)
        static_rows = _clone_inputs(rows)
        static_noise = type(noise)(**{f.name: _clone_inputs(getattr(noise, f.name))
                                      for f in dataclasses.fields(noise) if getattr(noise, f.name) is not None})
        flat = static_noise.tensors()
        # a cache of this graph's own: the generator's may belong to another graph
        for blk in e.generator.blocks:
            blk.attn.cache = None
        e.setup_caches(static_rows, opt)

        def body():
            return e.run(static_rows, static_noise, opt, B, autocast_cache=False)[:3]

        current, side = torch.cuda.current_stream(), self.stream
        side.wait_stream(current)
        with torch.cuda.stream(side):  # warm-up: kernels compiled, libraries initialised on this stream
            warm = body()
        current.wait_stream(side)
        ids, residual, f_hat = warm  # cloned on the current stream, which owns the clones
        result = ([t.clone() for t in ids], None if residual is None else residual.clone(), f_hat.clone())
        del warm, ids, residual, f_hat
        graph = torch.cuda.CUDAGraph()
        try:
            # the outer stream context restores the current stream even when capture_end raises
            with torch.cuda.stream(side), torch.cuda.graph(graph, stream=side):
                out = body()
        except Exception as err:  # noqa: BLE001 - any capture fault: eager from now on, said once
            root = err.__context__ or err  # capture_end's error hides the op that broke the capture
            text = str(root).splitlines()[0] if str(root) else ""
            self.failed[key] = f"capture failed ({type(root).__name__}: {text})"
            self.say(self.failed[key])
            torch.cuda.synchronize()
            self.clear()  # a failed capture may have reset the stream's shared workspace
            self.stream = None  # and later captures start on a fresh stream
            return result
        self.captures += 1
        self.graphs[key] = _Graph(graph, static_rows, flat, [blk.attn.cache for blk in e.generator.blocks], out,
                                  keep=e.target_inverse)
        return result
