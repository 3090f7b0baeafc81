"""Dataset specs shared by every command (``--data`` of the trainers and evaluators,
``--images`` / ``--ref`` of ``hart fid``): one grammar, one meaning everywhere.

    fashion-mnist[:split]  IDX files of Debian's dataset-fashion-mnist (or under --data-dir)
    synthetic[:split]      procedural coloured shapes with class labels (tests)
    folder:PATH            one subfolder per class, any image Pillow reads
    images:PATH            every image file under PATH (recursively), no classes
    shapes[:split]         captioned procedural scenes (hart.data.shapes); splits train,
                           test and heldout (held-out colour x shape and relation combinations);
                           train has 1,000,000 scenes (made on the fly: cache as many as you train on);
                           captions worded by the training phrasing templates, drawn per scene
    emoji[:split]          Noto Color Emoji glyphs (Debian's fonts-noto-color-emoji), each
                           captioned with its lowercased Unicode name
    captions:PATH          images under PATH with a same-name .txt caption beside each, or a
                           PATH/captions.jsonl manifest of {"file": ..., "text": ...} lines

A split is train or test (heldout: shapes only). The datasets themselves are
:mod:`hart.data.sources` (named) and :mod:`hart.data.files` (a user's folders); here: the
grammar, :func:`make_dataset`, and the batches (:func:`infinite_batches`, resumable and
shardable). Bottom layer (hart.data): imports nothing
of the project but :mod:`hart.common` and its own package.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import default_collate

from hart.common.errors import UserError
from hart.data.files import CaptionFiles, ImageFiles, ImageFolder
from hart.data.sources import ALL_SPLITS, Emoji, FashionMNIST, Shapes, Synthetic, check_split, splits_of

# ----------------------------------------------------------------------------- specs

DATASETS = {"fashion-mnist": FashionMNIST, "synthetic": Synthetic, "shapes": Shapes,
            "emoji": Emoji}  # named sets with train/test splits (shapes: heldout too)
PATH_KINDS = ("folder", "images", "captions")
SPEC_HELP = ("dataset: fashion-mnist, synthetic, shapes or emoji (NAME:test for the test split, "
             "shapes:heldout for held-out combinations), folder:PATH (one subfolder per class), "
             "images:PATH (all images under PATH, no classes) or captions:PATH (images with "
             "captions: same-name .txt files or captions.jsonl)")


@dataclass(frozen=True)
class DataSpec:
    """A parsed spec: ``kind`` is ``dataset`` (a named set), ``folder``, ``images`` or
    ``captions``; ``name`` is the dataset name or the path; ``split`` is the one named in the
    spec, or None."""

    kind: str
    name: str
    split: str | None = None

    @property
    def label(self) -> str:
        if self.kind == "dataset":
            return f"{self.name}:{self.split or 'train'}"
        return f"{self.kind}:{self.name}"

    def identity(self, split: str = "train") -> str:
        """The same string for the same data however it is written: ``NAME:SPLIT``, or the
        kind and the folder's own name (a relative or absolute path, a moved folder, another
        working directory: the same)."""
        if self.kind == "dataset":
            return f"{self.name}:{self.split or split}"
        from pathlib import PurePath

        return f"{self.kind}:{PurePath(self.name.rstrip('/') or '/').name}"


def parse_spec(text: str) -> DataSpec:
    """The one grammar of data specs (module doc); a bad spec is one clear line."""
    for kind in PATH_KINDS:
        if text.startswith(kind + ":"):
            path = text[len(kind) + 1:]
            if not path:
                raise UserError(f"{kind}: needs a path, e.g. {kind}:/data/my_images")
            return DataSpec(kind, path)
    name, split = text, None
    if ":" in text:
        name, split = text.split(":", 1)
    if name not in DATASETS:
        import difflib

        known = list(DATASETS) + ([f"{k}:" for k in PATH_KINDS] if split is not None else [])  # a path after ':'
        close = difflib.get_close_matches(name + (":" if split is not None else ""), known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}{'PATH' if close[0].endswith(':') else ''}? " if close else ""
        raise UserError(f"unknown dataset {name!r} in {text!r}; {hint}{SPEC_HELP}")
    if split is not None:
        if split not in ALL_SPLITS:
            raise UserError(f"unknown split {split!r} in {text!r}; choose one of: {', '.join(splits_of(name))}")
        check_split(name, split)
    return DataSpec("dataset", name, split)


def add_data_arguments(parser, split_default: str | None = None) -> None:
    """``--data`` / ``--data-dir`` (and ``--split`` when ``split_default`` is given) for a CLI."""
    parser.add_argument("--data", required=True, help=SPEC_HELP)
    parser.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files (default: Debian's)")
    if split_default is not None:
        parser.add_argument("--split", default=None, choices=list(ALL_SPLITS),
                            help=f"the split to read (default {split_default}, or the one in --data NAME:SPLIT; "
                                 "heldout: shapes only)")
        parser.set_defaults(split_default=split_default)


def data_split(args) -> str:
    """The split a command of :func:`add_data_arguments` reads: the one named in ``--data``
    (``NAME:SPLIT``), else ``--split``, else the command's default; one line when the two name
    different splits."""
    named = parse_spec(args.data).split
    if named and args.split and named != args.split:
        raise UserError(f"--data {args.data} names the {named} split and --split says {args.split}; give one of them")
    return named or args.split or args.split_default


def add_workers_argument(parser) -> None:
    """``--workers N`` for a training CLI (see :func:`infinite_batches`)."""
    parser.add_argument("--workers", type=int, default=0,
                        help="processes that load (render, decode) the images in the background, the same "
                             "batches in the same order (default 0: in the training process)")


def make_dataset(spec: str, split: str = "train", resolution: int = 32, data_dir=None):
    """Build the dataset named by ``spec`` (see :func:`parse_spec`). ``split`` (train or test;
    heldout for shapes) applies to named datasets, unless the spec names its own."""
    if split not in ALL_SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of: {', '.join(ALL_SPLITS)}")
    d = parse_spec(spec)
    if d.kind == "folder":
        return ImageFolder(d.name, resolution)
    if d.kind == "images":
        return ImageFiles(d.name, resolution)
    if d.kind == "captions":
        return CaptionFiles(d.name, resolution)
    split = d.split or split
    check_split(d.name, split)
    if d.name == "fashion-mnist":
        return FashionMNIST(split, resolution, data_dir)
    return DATASETS[d.name](split, resolution)


def labelled_batch(dataset, idx) -> tuple[torch.Tensor, torch.Tensor]:
    """The items ``idx`` of a labelled dataset -> images (B, C, H, W) and labels (B,) long."""
    items = [dataset[i] for i in idx]
    return torch.stack([it[0] for it in items]), torch.tensor([int(it[1]) for it in items])


def _index_batches(n: int, batch_size: int, generator: torch.Generator, start_step: int,
                   rank: int, world_size: int):
    """The index lists :func:`infinite_batches` loads, forever (see there)."""
    per_epoch = max(1, n // (batch_size * world_size))
    epoch, i = divmod(start_step, per_epoch)
    while True:
        g = torch.Generator().manual_seed(int(generator.initial_seed()) + epoch)
        perm = torch.randperm(n, generator=g)
        while i < per_epoch:
            yield perm[(i * world_size + rank) * batch_size:(i * world_size + rank + 1) * batch_size].tolist()
            i += 1
        epoch, i = epoch + 1, 0


def infinite_batches(dataset, batch_size: int, generator: torch.Generator, start_step: int = 0,
                     rank: int = 0, world_size: int = 1, workers: int = 0):
    """Yield collated batches (e.g. [images, labels]) forever, reshuffled each epoch by ``generator``.

    Resumable: the order depends only on the generator's seed state and ``start_step``
    (the batches before ``start_step`` are skipped without loading). With ``world_size``
    > 1 each rank reads its own shard of every epoch's permutation. ``workers`` > 0 loads
    the same batches, in the same order, in that many background processes (a
    :class:`torch.utils.data.DataLoader`): for data made on the fly (``shapes``) or decoded
    from files, when the accelerator would otherwise wait for it.
    """
    if workers < 0:
        raise UserError(f"--workers must be 0 or more, not {workers}")
    batches = _index_batches(len(dataset), batch_size, generator, start_step, rank, world_size)
    if workers == 0:
        for idx in batches:
            yield default_collate([dataset[j] for j in idx])
        return
    # its own generator: the loader draws its workers' base seed from it, not from the global
    # RNG, whose stream the training (and an exact resume) owns
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                                         collate_fn=default_collate, prefetch_factor=4,
                                         generator=torch.Generator().manual_seed(int(generator.initial_seed())))
    yield from loader
