"""Probe: how much does a decoder's FD-EffNet move when its weights barely move?

    python benchmarks/decoder_jitter.py --tokenizer sampling/default_model/tokenizer --num 2000 --scales 0.01 --seeds 3

Every decoder stage since session 12 moved the hybrid FD by 2-4 points while PSNR and the
per-pixel statistics hardly changed. If FD-EffNet at this level is not a smooth function of the
decoder's weights, one run of a stage says little, and the shipped decoder, the best of many
runs, sits low partly by selection. This probe perturbs every weight of ``post_quant_conv`` and
the decoder by ``scale`` times that tensor's own standard deviation (Gaussian, one seed per
row; the encoder and codebook untouched, so the ids and latents stay) and scores the first
``--num`` test images' decodes (FD-EffNet against the train split's ``--ref-num`` images, as
``fd_sensitivity.py``). One line per row: ``name psnr=X fd=X mean=X`` (``mean``: FD's
mean term).
"""
from __future__ import annotations

import argparse
import copy

import torch
from tqdm import tqdm

from decode_scores import DecodeScores  # benchmarks/ is on the path when run as a script
from hart.common.data import make_dataset
from hart.common.images import to_uint8
from tokenizer import HybridTokenizer


def perturbed(tok: HybridTokenizer, scale: float, seed: int) -> HybridTokenizer:
    """A copy of ``tok`` whose decoder and post_quant_conv weights carry Gaussian noise of
    ``scale`` x each tensor's standard deviation (tensors of one element: of its magnitude)."""
    out = copy.deepcopy(tok)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in (out.post_quant_conv, out.decoder):
            for p in mod.parameters():
                s = p.float().std() if p.numel() > 1 else p.float().abs()
                p.add_((torch.randn(p.shape, generator=g) * s * scale).to(p.dtype))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True, help="a tokenizer folder (or a model folder's tokenizer/)")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--num", type=int, default=2000)
    p.add_argument("--ref-num", type=int, default=10000)
    p.add_argument("--decode", default="hybrid", choices=["hybrid", "discrete"])
    p.add_argument("--scales", type=float, nargs="+", default=[0.01])
    p.add_argument("--seeds", type=int, default=3, help="perturbed copies per scale")
    p.add_argument("--batch-size", type=int, default=100)
    a = p.parse_args(argv)

    tok = HybridTokenizer.from_pretrained(a.tokenizer).requires_grad_(False).eval()
    data = make_dataset(a.data, "test", tok.config.resolution, a.data_dir)
    num = min(a.num, len(data))
    rows = {"as shipped": tok}
    rows.update({f"scale {s:g} seed {i}": perturbed(tok, s, 1000 + i) for s in a.scales for i in range(a.seeds)})
    scores = DecodeScores(list(rows), a.data, tok.config.resolution, a.ref_num, a.data_dir)
    with torch.no_grad():
        for start in tqdm(range(0, num, a.batch_size), desc="decoder-jitter"):
            x = torch.stack([data[i][0] for i in range(start, min(num, start + a.batch_size))])
            code = tok.encode(x)  # the encoder is shared: the same latents for every row
            lat = code.f_hat + code.residual if a.decode == "hybrid" else code.f_hat
            for k, t in rows.items():
                u8 = to_uint8(t.decode_latent(lat).clamp(-1, 1))  # PSNR of what FD sees: the 8-bit image
                scores.add(k, torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 127.5 - 1, x)
    fd, mean = scores.fd(), scores.mean_term()
    print(f"{num} test images ({a.decode} decode) vs {scores.ref.n} train images, FD-EffNet")
    for k in rows:
        print(f"{k:20s} psnr={scores.psnr(k):.2f} fd={fd[k]:.3f} mean={mean[k]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
