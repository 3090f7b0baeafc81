"""Probe: can any per-token residual head recover the hybrid FD gain? (issue 12)

The residual head draws each last-scale token's residual independently, given that token's
condition. This probe replaces the head by oracles that draw *true* residuals, taken from a
bank of training-set tokens, under the same independence, and decodes f_hat + the draw:

* ``same-id``: for each token, the true residual of a random bank token with the same
  last-scale code id (what a perfect head conditioned on the drawn code alone would draw);
* ``same-id-pos``: the same, restricted to bank tokens at the same grid position (falls back
  to same-id where the bank has none);
* ``shuffled``: the image's own true residual with its tokens permuted within the image (the
  exact marginal of this image, spatial arrangement lost);
* ``other-image``: the whole true residual map of another test image (coherent detail of
  the wrong image).

One line per decode: ``name psnr=X fd=X recovered=X``, recovered = (fd_discrete - fd) /
(fd_discrete - fd_hybrid), FD-EffNet against ``--ref-num`` train images, as
``hart eval-residual --fd`` and ``benchmarks/head_sweep.py`` report it. If per-token oracles
recover little, no per-token head can, and the gain lives in how tokens' residuals go
together: a head must draw them jointly (several passes, neighbours in the condition) or the
decoder must expect independent draws.

``--neighbours`` adds what a second pass could do: the tokens of one checkerboard colour
(i + j even) keep their true residual, and the other colour gets

* ``half-zero``: nothing;
* ``half-same-id``: a random bank residual with the same code id;
* ``half-neighbours``: the bank residual, among those with the same code id, whose four
  neighbours' residuals are nearest (L2; zeros off the grid) to this token's true
  neighbours, i.e. a draw conditioned on its neighbours' values.

``--errors`` adds how much error a draw may carry and keep the gain: the true residual plus
independent Gaussian noise per token and channel, with a variance of K times that channel's
residual variance (``noisy-K``; such a draw explains 1 - K of the residual's variance, the
``r2`` that ``hart eval-residual`` and ``benchmarks/head_sweep.py`` report), and the same
noise smoothed over the grid by a 3x3 box filter and rescaled to the same variance
(``smooth-K``: error that is coherent across neighbours, as a joint head's would be).

    python benchmarks/residual_oracle.py --num 2000 --bank 10000
    python benchmarks/residual_oracle.py --num 2000 --bank 10000 --neighbours
``--nearest`` adds whole residual maps of other images chosen by their codes: the true
residual map of the bank image whose f_hat is nearest (L2 over the whole n x n x z map) to the
query's f_hat (``nearest-1``), or of one drawn at random among the K nearest
(``nearest-K``): coherent detail, drawn given the codes of the whole image, as a sampler of
r given f_hat that returns real residual maps would draw it.

    python benchmarks/residual_oracle.py --num 2000 --bank 10000 --errors
    python benchmarks/residual_oracle.py --num 2000 --bank 60000 --nearest

``--structure`` asks which part of the true residual carries the gain: its means over K x K
blocks of the grid (``pool-K``, K = 8: one vector per image), the rest (``highpass-2``), its
projection onto the top K channel components per token (``cpca-K``), or of the whole map onto
the top K principal components of the bank's maps (``gpca-K``). A part that keeps the gain in
few numbers is what a head could draw jointly.

    python benchmarks/residual_oracle.py --num 2000 --bank 10000 --structure
"""
from __future__ import annotations

import argparse

import torch

from decode_scores import DecodeScores  # benchmarks/ is on the path when run as a script
from hart.common.data import make_dataset
from sampling.pipeline import model_folder
from tokenizer.model import HybridTokenizer

ORACLES = ("same-id", "same-id-pos", "shuffled", "other-image")
HALF = ("half-zero", "half-same-id", "half-neighbours")
ERRORS = ("noisy-0.25", "noisy-0.6", "noisy-1", "smooth-0.6")
NEAREST = (1, 8, 64)
STRUCTURE = ("pool-2", "pool-4", "pool-8", "highpass-2", "cpca-4", "cpca-8", "gpca-16", "gpca-64", "gpca-256")


def structure_part(res: torch.Tensor, bank_res: torch.Tensor, name: str, n: int) -> torch.Tensor:
    """The part of the true residuals (M, N, z) that ``name`` keeps: ``pool-K`` its means over
    K x K blocks of the grid (broadcast back), ``highpass-K`` the rest, ``cpca-K`` its
    projection per token onto the bank's top K channel components, ``gpca-K`` the projection
    of the whole n*n*z map onto the bank's top K principal components (both about the bank's mean)."""
    kind, k = name.rsplit("-", 1)
    k = int(k)
    M, N, z = res.shape
    if kind in ("pool", "highpass"):
        m = res.transpose(1, 2).reshape(M, z, n, n)
        low = torch.nn.functional.avg_pool2d(m, k).repeat_interleave(k, 2).repeat_interleave(k, 3)
        low = low.reshape(M, z, N).transpose(1, 2)
        return low if kind == "pool" else res - low
    flat_bank = bank_res.reshape(-1, z) if kind == "cpca" else bank_res.reshape(bank_res.shape[0], -1)
    q = res.reshape(-1, z) if kind == "cpca" else res.reshape(M, -1)
    mu = flat_bank.mean(0)
    c = flat_bank - mu
    _, vec = torch.linalg.eigh(c.T @ c / c.shape[0])  # ascending eigenvalues
    top = vec[:, -k:]
    return ((q - mu) @ top @ top.T + mu).reshape(M, N, z)


def nearest_maps(bank_fhat: torch.Tensor, fhat: torch.Tensor, k: int, g: torch.Generator,
                 chunk: int = 250) -> torch.Tensor:
    """(Q,) indices into the bank: for each query f_hat (Q, z, n, n), one of the ``k`` bank
    maps (T, z, n, n) nearest in L2, drawn uniformly."""
    b = bank_fhat.flatten(1)
    out = []
    for s in range(0, fhat.shape[0], chunk):
        d = torch.cdist(fhat[s:s + chunk].flatten(1), b)  # (q, T)
        top = d.topk(k, largest=False).indices  # (q, k)
        pick = (torch.rand(top.shape[0], generator=g) * k).long()
        out.append(top[torch.arange(top.shape[0]), pick])
    return torch.cat(out)


def error_draw(res: torch.Tensor, var: torch.Tensor, name: str, n: int, g: torch.Generator) -> torch.Tensor:
    """(M, N, z) true residuals + noise of ``K * var`` per channel (``var`` (z,)): ``noisy-K``
    independent per token, ``smooth-K`` box-filtered over the n x n grid, then rescaled."""
    kind, k = name.rsplit("-", 1)
    e = torch.randn(res.shape, generator=g)
    if kind == "smooth":
        M, N, z = res.shape
        m = e.transpose(1, 2).reshape(M, z, n, n)
        m = torch.nn.functional.avg_pool2d(m, 3, stride=1, padding=1, count_include_pad=False)
        e = m.reshape(M, z, N).transpose(1, 2)
        e = e / e.pow(2).mean((0, 1)).sqrt()
    return res + e * (float(k) * var).sqrt()


def second_colour(n: int) -> torch.Tensor:
    """(n*n,) bool, row-major: True on the checkerboard's second colour (i + j odd)."""
    i = torch.arange(n)
    return ((i.view(-1, 1) + i.view(1, -1)) % 2 == 1).reshape(-1)


def neighbour_features(res: torch.Tensor, n: int) -> torch.Tensor:
    """(M, n*n, z) row-major token residuals -> (M, n*n, 4z): the residuals of the four grid
    neighbours (up, down, left, right), zeros off the grid."""
    M, N, z = res.shape
    g = res.view(M, n, n, z)
    pad = torch.nn.functional.pad(g, (0, 0, 1, 1, 1, 1))  # (M, n+2, n+2, z)
    parts = [pad[:, :-2, 1:-1], pad[:, 2:, 1:-1], pad[:, 1:-1, :-2], pad[:, 1:-1, 2:]]
    return torch.cat(parts, -1).reshape(M, N, 4 * z)


def draw_by_neighbours(bank_ids, bank_res, ids, res, n: int, second: torch.Tensor) -> torch.Tensor:
    """For the tokens where ``second`` (N,) is True: the bank residual with the same id whose
    neighbour features are nearest to the query's (from its true residual map)."""
    bf = neighbour_features(bank_res, n).reshape(-1, 4 * res.shape[-1])
    qf = neighbour_features(res, n)[:, second].reshape(-1, 4 * res.shape[-1])
    bid, qid = bank_ids.reshape(-1), ids[:, second].reshape(-1)
    flat = bank_res.reshape(-1, res.shape[-1])
    out = torch.zeros(qid.shape[0], res.shape[-1])
    for v in torch.unique(qid).tolist():
        q = (qid == v).nonzero().view(-1)
        b = (bid == v).nonzero().view(-1)
        if b.numel():
            out[q] = flat[b[torch.cdist(qf[q], bf[b]).argmin(1)]]
    return out.view(ids.shape[0], int(second.sum()), -1)


@torch.no_grad()
def encode_tokens(tok: HybridTokenizer, ds, num: int, batch: int):
    """(last-scale ids (M, N), residuals (M, N, z), f_hat (M, z, n, n), images) of the first num."""
    ids, res, fh, xs = [], [], [], []
    for s in range(0, num, batch):
        x = torch.stack([ds[i][0] for i in range(s, min(num, s + batch))])
        code = tok.encode(x)
        ids.append(code.ids[-1])
        res.append(code.residual.flatten(2).transpose(1, 2))  # (B, n*n, z), row-major as the ids
        fh.append(code.f_hat)
        xs.append(x)
    return torch.cat(ids), torch.cat(res), torch.cat(fh), torch.cat(xs)


def draw_by_key(bank_keys: torch.Tensor, bank_res: torch.Tensor, keys: torch.Tensor, g: torch.Generator):
    """For each query key, the residual of a uniformly drawn bank token with that key.
    bank_keys (T,), bank_res (T, z), keys (Q,) -> (residuals (Q, z), found (Q,) bool)."""
    order = torch.argsort(bank_keys)
    sorted_keys = bank_keys[order]
    lo = torch.searchsorted(sorted_keys, keys)
    cnt = torch.searchsorted(sorted_keys, keys, right=True) - lo
    pick = lo + (torch.rand(keys.shape, generator=g) * cnt).long().clamp(min=0)
    found = cnt > 0
    out = torch.zeros(keys.shape[0], bank_res.shape[-1])
    out[found] = bank_res[order[pick[found]]]
    return out, found


def draw_same(bank_ids, bank_res, ids, g, by_position: bool = False):
    """(M, N) query ids -> (M, N, z) bank residuals with the same id (and grid position);
    a position without such a bank token falls back to the id alone, an id the bank lacks to 0.
    Returns (draws, share of tokens that fell back)."""
    M, N = ids.shape
    res = bank_res.reshape(-1, bank_res.shape[-1])
    bid, qid = bank_ids.reshape(-1), ids.reshape(-1)
    out, found = draw_by_key(bid, res, qid, g)
    missed = 1.0 - found.float().mean().item()
    if by_position:
        bpos, qpos = torch.arange(N).repeat(bank_ids.shape[0]), torch.arange(N).repeat(M)
        at, found_at = draw_by_key(bid * N + bpos, res, qid * N + qpos, g)
        out = torch.where(found_at.view(-1, 1), at, out)
        missed = 1.0 - found_at.float().mean().item()
    return out.view(M, N, -1), missed


@torch.no_grad()
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--num", type=int, default=2000, help="test images decoded")
    p.add_argument("--bank", type=int, default=10000, help="train images whose tokens form the bank")
    p.add_argument("--ref-num", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--neighbours", action="store_true",
                   help="also the checkerboard rows: half true, half zero / same-id / nearest-neighbours draws")
    p.add_argument("--nearest", action="store_true",
                   help="also the rows of whole residual maps of the bank images nearest in f_hat")
    p.add_argument("--structure", action="store_true",
                   help="also the rows of parts of the true residual: block means, the rest, channel and whole-map PCA")
    p.add_argument("--rows", default=None,
                   help="comma-separated oracle rows to decode (default: all that the flags ask for)")
    p.add_argument("--errors", action="store_true",
                   help="also the true residual plus noise rows: independent (noisy-K) and smooth (smooth-K)")
    args = p.parse_args(argv)
    from tqdm import tqdm

    tok = HybridTokenizer.from_pretrained(model_folder(args.model) / "tokenizer").eval()
    n = tok.config.latent_size
    train = make_dataset(args.data, "train", tok.config.resolution, args.data_dir)
    test = make_dataset(args.data, "test", tok.config.resolution, args.data_dir)
    bank_ids, bank_res, bank_fhat, _ = encode_tokens(tok, train, min(args.bank, len(train)), args.batch_size)
    num = min(args.num, len(test))
    ids, res, f_hat, xs = encode_tokens(tok, test, num, args.batch_size)
    g = torch.Generator().manual_seed(args.seed)
    z = res.shape[-1]
    same, miss = draw_same(bank_ids, bank_res, ids, g)
    same_pos, miss_pos = draw_same(bank_ids, bank_res, ids, g, by_position=True)
    draws = {
        "same-id": same,
        "same-id-pos": same_pos,
        "shuffled": torch.stack([r[torch.randperm(r.shape[0], generator=g)] for r in res]),
        "other-image": res[torch.roll(torch.arange(num), 1)],
    }
    oracles = ORACLES
    if args.neighbours:  # after the other draws, so that their rows do not change
        second = second_colour(n)
        rand_same, _ = draw_same(bank_ids, bank_res, ids, g)
        for name in HALF:
            d = res.clone()
            if name == "half-zero":
                d[:, second] = 0
            elif name == "half-same-id":
                d[:, second] = rand_same[:, second]
            else:
                d[:, second] = draw_by_neighbours(bank_ids, bank_res, ids, res, n, second)
            draws[name] = d
        oracles = oracles + HALF
    if args.errors:  # after the other draws, so that their rows do not change
        var = bank_res.reshape(-1, z).pow(2).mean(0)  # (z,) per-channel second moment of the residual
        for name in ERRORS:
            draws[name] = error_draw(res, var, name, n, g)
        oracles = oracles + ERRORS
    if args.nearest:  # after the other draws, so that their rows do not change
        for k in NEAREST:
            draws[f"nearest-{k}"] = bank_res[nearest_maps(bank_fhat, f_hat, k, g)]
        oracles = oracles + tuple(f"nearest-{k}" for k in NEAREST)
    if args.structure:  # after the other draws, so that their rows do not change
        for name in STRUCTURE:
            draws[name] = structure_part(res, bank_res, name, n)
        oracles = oracles + STRUCTURE
    if args.rows:
        keep = args.rows.split(",")
        unknown = sorted(set(keep) - set(oracles))
        if unknown:
            p.error(f"--rows: unknown {', '.join(unknown)}; the flags given make {', '.join(oracles)}")
        oracles = tuple(k for k in oracles if k in keep)
    names = ["discrete", "hybrid", *oracles]
    scores = DecodeScores(names, args.data, tok.config.resolution, args.ref_num, args.data_dir)
    as_map = lambda r: r.transpose(1, 2).reshape(r.shape[0], z, n, n)  # noqa: E731
    for s in tqdm(range(0, num, args.batch_size), desc="decode"):
        sl = slice(s, min(num, s + args.batch_size))
        fh, x = f_hat[sl], xs[sl]
        inputs = {"discrete": fh, "hybrid": fh + as_map(res[sl]), **{k: fh + as_map(draws[k][sl]) for k in oracles}}
        for k, f in inputs.items():
            scores.add(k, tok.decode_latent(f), x)
    fd = scores.fd()
    gain = fd["discrete"] - fd["hybrid"]
    distinct = int(torch.unique(bank_ids).numel())
    print(f"num={num} bank={bank_ids.shape[0]} images ({bank_ids.numel()} tokens, {distinct} distinct ids); "
          f"test tokens whose id the bank lacks: {miss:.4f}, whose (id, position) it lacks: {miss_pos:.4f}")
    for k in names:
        rec = f" recovered={(fd['discrete'] - fd[k]) / gain:.3f}" if k in oracles else ""
        print(f"{k:>12} psnr={scores.psnr(k):.2f} fd={fd[k]:.3f}{rec}")
    return 0


if __name__ == "__main__":
    main()
