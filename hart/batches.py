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
from hart.tokens import TokenCache, split_scales


def _to(cond, dev):
    return [t.to(dev) for t in cond] if isinstance(cond, (list, tuple)) else cond.to(dev)


def _prompt_encoder(args, config: GeneratorConfig, dev, max_items: int = 200_000):
    """Captions -> [tokens (B, T, D), mask (B, T)] with the model's frozen text encoder."""
    from hart.text import PromptCache, text_encoder_for

    return PromptCache(text_encoder_for(config, args.text_encoder_path, dev), max_items)


def batch_source(args, tokenizer, dist: DistInfo, per_rank: int, start_step: int, config: GeneratorConfig | None = None,
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
        if cache.captioned and config is not None:
            cache.check_text_encoder(config.text_encoder, config.context_tokens)
        prompts = None
        if cache.captions is not None and encode and config is not None and config.is_text:
            prompts = _prompt_encoder(args, config, dev, max_items=0)
        for ids, res, y in infinite_batches(cache, per_rank, g, start_step, dist.rank, dist.world_size):
            if prompts is not None:
                y = prompts(list(y))
            if cache.captions is None or prompts is not None:
                y = _to(y, dev)
            yield [i.to(dev) for i in split_scales(ids, pns)], res.to(dev), y
    else:
        data = make_dataset(args.data, "train", tokenizer.config.resolution, args.data_dir)
        prompts = None
        if getattr(data, "captioned", False) and config is not None and config.is_text:
            prompts = _prompt_encoder(args, config, dev)
        for x, y in infinite_batches(data, per_rank, g, start_step, dist.rank, dist.world_size,
                                     getattr(args, "workers", 0)):
            with torch.no_grad():
                code = tokenizer.encode(x.to(dev))
            yield code.ids, code.residual, (_to(prompts(list(y)), dev) if prompts is not None else _to(y, dev))


def dataset_examples(args, tokenizer) -> tuple:
    """Up to ``EXAMPLES`` distinct captions of captioned data (a text model's example prompts)."""
    from hart.tokens import EXAMPLES

    if args.tokens:
        return tuple(TokenCache(args.tokens).meta.get("examples", ()))[:EXAMPLES]
    data = make_dataset(args.data, "train", tokenizer.config.resolution, args.data_dir)
    out = []
    for i in range(min(len(data), 200)):
        caption = data[i][1]
        if caption not in out:
            out.append(caption)
        if len(out) == EXAMPLES:
            break
    return tuple(out)


def dataset_classes(args, tokenizer) -> tuple | None:
    """The data's class names, or None for captioned data (a text model's)."""
    if args.tokens:
        cache = TokenCache(args.tokens)
        if cache.captioned:
            return None
        classes = cache.classes
    else:
        data = make_dataset(args.data, "train", tokenizer.config.resolution, args.data_dir)
        if getattr(data, "captioned", False):
            return None
        classes = data.classes
    if not classes:
        raise UserError("the data has no class names; a class-conditional model needs them")
    return tuple(classes)
