"""Embedding image sets and model samples into feature statistics (one rank or many under
torchrun), and the cache of reference statistics."""
from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path

from hart.common.errors import UserError
from sampling.eval.fid.sources import CleanImages, Source, image_set
from sampling.eval.fid.stats import KID_MAX, FeatureStats, require_samples


def _gather(stats: FeatureStats, skipped: int, dist) -> tuple[FeatureStats, int]:
    """Every rank's statistics merged (the same result on each rank)."""
    if dist is None or not dist.enabled:
        return stats, skipped
    import torch.distributed as tdist

    parts = [None] * dist.world_size
    tdist.all_gather_object(parts, (stats, skipped))
    return FeatureStats.combine([p[0] for p in parts]), sum(p[1] for p in parts)


def _rank_slice(n: int, dist) -> range:
    return range(dist.rank, n, dist.world_size) if dist is not None else range(n)


def _progress(total: int, desc: str, dist):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=dist is not None and not dist.is_main,
                dynamic_ncols=True, file=sys.stderr)


def unreadable_note(images: CleanImages) -> str:
    """`` (the first: PATH)`` when this process met an unreadable image, else ``""``."""
    return f" (the first: {images.first_unreadable})" if images.first_unreadable else ""


def stats_from_images(images: CleanImages, extractor, batch_size: int = 50, dist=None, workers: int = 0,
                      desc: str = "embedding") -> tuple[FeatureStats, int]:
    """Embed a :class:`CleanImages` set (this rank's slice) -> (merged stats, skipped count)."""
    import torch
    from torch.utils.data import DataLoader, Subset

    device = dist.device if dist is not None else "cpu"
    mine = _rank_slice(len(images), dist)
    kid_max = math.ceil(KID_MAX / (dist.world_size if dist is not None else 1))
    stats, skipped = FeatureStats(extractor.dim, kid_max=kid_max), 0
    loader = DataLoader(Subset(images, list(mine)), batch_size=batch_size, num_workers=workers)
    done = 0
    with _progress(len(mine), desc, dist) as bar, torch.inference_mode():
        for x, ok in loader:
            skipped += int((~ok).sum())
            if images.first_unreadable is None and not ok.all():
                images.first_unreadable = images.name(mine[done + int((~ok).nonzero()[0])])
            done += len(ok)
            if ok.any():
                stats.add(extractor(x[ok].to(device)))
            bar.update(len(ok))
    return _gather(stats, skipped, dist)


def stats_from_generator(pipe, num: int, extractor, num_classes: int, batch_size: int = 50, seed: int = 0,
                         dist=None, options=None, desc: str = "generating", prompts=None) -> FeatureStats:
    """Generate ``num`` class-balanced samples with ``pipe`` and embed them; nothing is kept.

    ``pipe`` is any callable ``pipe(class_ids=[...], seed=[...], **options) -> list of PIL
    images`` (a :class:`sampling.HARTPipeline`). Sample j has class ``j % num_classes`` (or,
    for a text model, the prompt ``prompts[j % len(prompts)]``, called with ``prompts=``) and
    seed ``seed + j``; under torchrun, rank r makes samples r, r + world, ...
    """
    import torch

    from sampling.eval.features import clean_batch

    device = dist.device if dist is not None else "cpu"
    mine = list(_rank_slice(num, dist))
    kid_max = math.ceil(KID_MAX / (dist.world_size if dist is not None else 1))
    stats = FeatureStats(extractor.dim, kid_max=kid_max)
    with _progress(len(mine), desc, dist) as bar, torch.inference_mode():
        for s in range(0, len(mine), batch_size):
            js = mine[s:s + batch_size]
            cond = ({"prompts": [prompts[j % len(prompts)] for j in js]} if prompts
                    else {"class_ids": [j % num_classes for j in js]})
            images = pipe(seed=[seed + j for j in js], **cond, **(options or {}))
            stats.add(extractor(clean_batch(images, extractor.input_size).to(device)))
            bar.update(len(js))
    return _gather(stats, 0, dist)[0]


# ----------------------------------------------------------------------------- reference statistics

def default_cache_dir() -> Path:
    root = os.environ.get("HART_CACHE")
    return (Path(root).expanduser() if root else Path("~/.cache/hart").expanduser()) / "fid"


def folder_fingerprint(root) -> str:
    """8 hex digits that change when any file under ``root`` is added, removed, resized or
    rewritten (names, sizes and modification times; nothing is read)."""
    import hashlib

    h = hashlib.sha256()
    root = Path(root)
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for fn in sorted(files):
            st = os.stat(os.path.join(dirpath, fn))
            rel = os.path.relpath(os.path.join(dirpath, fn), root)
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:8]


def cache_path(cache_dir, source: Source, resolution: int, extractor_name: str, num) -> Path:
    """Where a dataset's statistics are cached: named by spec, split, resolution, extractor and
    count; a folder's (``folder:``, ``captions:``) also by :func:`folder_fingerprint`, so that
    statistics of files since changed are never read back."""
    slug = re.sub(r"[^A-Za-z0-9.-]+", "_", source.spec)
    kind, _, path = source.spec.partition(":")
    if kind in ("folder", "captions", "images") and path:
        slug += f"-{folder_fingerprint(path)}"
    return Path(cache_dir) / f"{slug}-{source.split}-{resolution}px-{extractor_name}-{num or 'all'}.npz"


def reference_stats(source: Source, extractor, resolution, num=None, batch_size: int = 50, dist=None,
                    cache_dir=None, data_dir=None, workers: int = 0, min_samples: int = 2):
    """Statistics of ``--ref``: loaded (.npz), read from the cache, or computed (and cached).

    Returns (stats, info dict for the result JSON). Under torchrun every rank gets the stats.
    """
    is_main = dist is None or dist.is_main
    info = {"source": source.label}
    if source.kind == "stats":
        ref = FeatureStats.load(source.path)
        info.update(n=ref.n, file=source.path)
        return ref, info
    cached = None
    if source.kind == "dataset" and cache_dir:
        cached = cache_path(cache_dir, source, resolution, extractor.name, num)
        info["cache"] = str(cached)
        exists = cached.is_file()
        if dist is not None and dist.enabled:  # rank 0 decides, so all ranks take the same branch
            import torch.distributed as tdist

            flag = [exists]
            tdist.broadcast_object_list(flag, src=0)
            exists = flag[0]
        if exists:  # every rank loads it, so every rank can check it and fail the same way
            ref = FeatureStats.load(cached)
            require_samples(ref.n, min_samples, f"reference {source.label}", extractor.metric, extractor.dim)
            info.update(n=ref.n, cached=True, skipped=ref.meta.get("skipped", 0))
            return ref, info
    images = image_set(source, resolution, num, extractor.input_size, data_dir)
    require_samples(len(images), min_samples, f"reference {source.label}", extractor.metric, extractor.dim)
    ref, skipped = stats_from_images(images, extractor, batch_size, dist, workers, desc="reference")
    if skipped and is_main:
        print(f"warning: skipped {skipped} unreadable image(s) in {source.label}{unreadable_note(images)}",
              file=sys.stderr)
    if ref.n == 0:
        raise UserError(f"no readable images in {source.label} ({skipped} unreadable)")
    require_samples(ref.n, min_samples, f"reference {source.label}", extractor.metric, extractor.dim)
    ref.meta = {"extractor": extractor.name, "source": source.label, "resolution": resolution, "num": ref.n,
                "skipped": skipped}
    if cached is not None and is_main:
        cached.parent.mkdir(parents=True, exist_ok=True)
        ref.save(cached)
    info.update(n=ref.n, skipped=skipped, cached=False)
    return ref, info
