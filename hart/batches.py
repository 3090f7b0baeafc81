"""The batches a generator run trains on: token ids, residual and condition on the device, read
from a token cache (``hart extract-tokens``) or encoded on the fly from a dataset; and what the
data tells the model (its class names, or example captions). Used by :mod:`hart.train`.
"""
from __future__ import annotations

import torch

from hart.common.dist import DistInfo
from hart.common.errors import UserError
from hart.config import GeneratorConfig
from hart.data.datasets import infinite_batches, make_dataset
from hart.data.sources import is_captioned
from hart.tokens import TokenCache, cache_meta, split_scales


def train_data(args, tokenizer):
    """The training split of ``--data`` at the tokenizer's resolution, made once per run (kept on
    ``args``): a run reads it for its classes, its example prompts, what it trains on and its
    batches, and a folder is scanned (and its skipped files said) once, not four times."""
    key = (args.data, tokenizer.config.resolution, args.data_dir)
    made = getattr(args, "_train_data", None)
    if made is None or made[0] != key:
        args._train_data = (key, make_dataset(args.data, "train", *key[1:]))
    return args._train_data[1]


def _to(cond, dev):
    return [t.to(dev) for t in cond] if isinstance(cond, (list, tuple)) else cond.to(dev)


def _prompt_encoder(args, config: GeneratorConfig, dev, max_items: int = 200_000):
    """Captions -> [tokens (B, T, D), mask (B, T)] with the model's frozen text encoder."""
    from hart.text import PromptCache, text_encoder_for

    return PromptCache(text_encoder_for(config, args.text_encoder_path, dev), max_items)


def batch_source(args, tokenizer, dist: DistInfo, per_rank: int, start_step: int, config: GeneratorConfig,
                 encode: bool = True):
    """Yield (ids list, residual, condition) on the device, from a token cache or encoded on the
    fly; the condition is the labels (B,) or the encoded prompts [tokens (B, T, D), mask (B, T)].
    A token cache of captions has them encoded here, each batch's own (no memory kept between
    batches, so a resumed run gets the same numbers); ``encode=False`` leaves them as text, for
    the passes that read only the latents."""
    dev = dist.device
    g = torch.Generator().manual_seed(args.seed)
    pns = tokenizer.config.patch_nums
    if args.tokens:
        cache = TokenCache(args.tokens)
        cache.check_tokenizer(args.tokenizer)
        if cache.captioned:
            cache.check_text_encoder(config.text_encoder, config.context_tokens)
        prompts = None
        if cache.captions is not None and encode and config.is_text:
            prompts = _prompt_encoder(args, config, dev, max_items=0)
        for ids, res, y in infinite_batches(cache, per_rank, g, start_step, dist.rank, dist.world_size):
            if prompts is not None:
                y = prompts(list(y))
            if cache.captions is None or prompts is not None:
                y = _to(y, dev)
            yield [i.to(dev) for i in split_scales(ids, pns)], res.to(dev), y
    else:
        data = train_data(args, tokenizer)
        prompts = None
        if is_captioned(data) and config.is_text:
            prompts = _prompt_encoder(args, config, dev)
        for x, y in infinite_batches(data, per_rank, g, start_step, dist.rank, dist.world_size,
                                     getattr(args, "workers", 0)):
            with torch.no_grad():
                code = tokenizer.encode(x.to(dev))
            yield code.ids, code.residual, (_to(prompts(list(y)), dev) if prompts is not None else _to(y, dev))


def dataset_examples(args, tokenizer) -> tuple:
    """A text model's example prompts: :func:`hart.tokens.pick_examples` of the first 200
    captions (a token cache's, as it picked them)."""
    from hart.tokens import pick_examples

    if args.tokens:
        return tuple(pick_examples(cache_meta(args.tokens).get("examples", ())))
    data = train_data(args, tokenizer)
    return tuple(pick_examples(_captions(data, 200)))


def _captions(data, n: int) -> list:
    """The first ``n`` captions of a captioned dataset, without decoding its images where it
    can say them alone (a folder's list, the shapes scenes)."""
    items = getattr(data, "items", None)
    if items is not None:  # CaptionFiles: (path, caption); Emoji: (character, caption)
        return [c for _, c in items[:n]]
    if hasattr(data, "scene"):
        return [data.scene(i).phrasing for i in range(min(n, len(data)))]
    return [data[i][1] for i in range(min(n, len(data)))]


def data_identity(args, tokenizer) -> dict | None:
    """What a run trains on, whichever form it is read in: ``{"data": identity, "num": items}``
    of ``--data``, or of the data a ``--tokens`` cache was made from (the same batches either
    way; :meth:`hart.data.datasets.DataSpec.identity`). None for a cache that does not say."""
    from hart.data.datasets import parse_spec

    if args.tokens:
        meta = cache_meta(args.tokens)
        if not meta.get("data") or "num" not in meta:
            return None
        return {"data": parse_spec(meta["data"]).identity(meta.get("split") or "train"), "num": int(meta["num"])}
    return {"data": parse_spec(args.data).identity(), "num": len(train_data(args, tokenizer))}


def check_same_data(saved: dict | None, now: dict, out) -> None:
    """On --resume: one line when the run was trained on other data (a run saved before this was
    recorded is not checked)."""
    if not saved or not now or saved == now:
        return
    raise UserError(f"the run in {out} was trained on {saved['data']} ({saved['num']:,} items), not {now['data']} "
                    f"({now['num']:,} items); resume it with the same data (--data, or a token cache of it), or "
                    f"start a new run from its weights with --init {out}")


def dataset_classes(args, tokenizer) -> tuple | None:
    """The data's class names (empty for images without classes), or None for captioned data
    (a text model's); :func:`hart.run_config.resolve_config` says which model needs which."""
    if args.tokens:
        cache = TokenCache(args.tokens)
        if cache.captioned:
            return None
        classes = cache.classes
    else:
        data = train_data(args, tokenizer)
        if is_captioned(data):
            return None
        classes = data.classes
    return tuple(classes)
