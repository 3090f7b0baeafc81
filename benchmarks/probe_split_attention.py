"""Probe: the block-causal attention of a teacher-forced step as one SDPA call per scale.

A query of scale k sees exactly the keys of scales 0..k, a prefix of the sequence, so the
masked (L, L) attention equals, per scale, an unmasked SDPA of that scale's queries over the
prefix of keys (no mask: on a GPU this is what flash attention takes). Prints the largest
difference and the forward + backward time of both on var-d8's shapes (batch 8, fp32).

    python benchmarks/probe_split_attention.py
"""
import statistics
import time

import torch
import torch.nn.functional as F

from hart.config import GeneratorConfig
from hart.model import HARTGenerator


def segments(allowed: torch.Tensor) -> list:
    """(L, L) bool 'query may see key', prefix-shaped per row -> [(first row, end row, keys)]."""
    ends = allowed.sum(1)
    assert all(bool(allowed[i, :ends[i]].all()) for i in range(len(ends))), "not block-causal"
    out, s = [], 0
    for i in range(1, len(ends) + 1):
        if i == len(ends) or ends[i] != ends[s]:
            out.append((s, i, int(ends[s])))
            s = i
    return out


def main():
    torch.manual_seed(0)
    c = GeneratorConfig.from_name("var-d8")
    bias = HARTGenerator(c).causal_bias(c.seq_len)[0, 0]
    segs = segments(bias == 0)
    B, H, hd, L = 8, c.heads, c.width // c.heads, c.seq_len

    def dense(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)

    def split(q, k, v):
        return torch.cat([F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, :e], v[:, :, :e]) for a, b, e in segs], 2)

    q, k, v = [torch.randn(B, H, L, hd, requires_grad=True) for _ in range(3)]
    print(f"{len(segs)} segments; max difference {(dense(q, k, v) - split(q, k, v)).abs().max().item():.2e}")
    times = {"dense": [], "split": []}
    for rep in range(7):
        for name, f in (("dense", dense), ("split", split)):
            t = time.perf_counter()
            f(q, k, v).sum().backward()
            if rep >= 2:
                times[name].append(time.perf_counter() - t)
    med = {n: statistics.median(t) for n, t in times.items()}
    print(f"forward + backward ms: dense {1000 * med['dense']:.1f}, split {1000 * med['split']:.1f}, "
          f"dense / split {med['dense'] / med['split']:.2f}x; threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
