"""Shared setup for the generator-training tests (and the DDP worker)."""

import torch

from hart.config import GeneratorConfig
from hart.common.dist import DistInfo
from hart.train import GeneratorTrainer, build_parser
from tokenizer import HybridTokenizer


def trainer_args(**kw):
    argv = ["--tokenizer", "x", "--data", "synthetic", "--out", "x"]
    args = build_parser().parse_args(argv)
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def make_trainer(tokdir, dist=None, diff_head=False, cond_drop=0.0, **cfg):
    """A tiny generator's trainer; ``diff_head`` False drops the preset's head."""
    tok = HybridTokenizer.from_pretrained(tokdir).requires_grad_(False)
    tc = tok.config
    config = GeneratorConfig.from_name("tiny", patch_nums=tc.patch_nums, codebook_size=tc.codebook_size,
                                       z_channels=tc.z_channels, num_classes=6,
                                       training=dict(cond_drop=cond_drop), **cfg)
    if not diff_head:
        config = config.replace(head=None)
    torch.manual_seed(0)
    return GeneratorTrainer(config, tok, trainer_args(), dist or DistInfo())


def batch_for(trainer, n, seed=0):
    """A fixed batch of synthetic images, encoded by the trainer's tokenizer."""
    from hart.data.datasets import make_dataset

    ds = make_dataset("synthetic", "train", trainer.objective.tokenizer.config.resolution)
    x = torch.stack([ds[seed + i][0] for i in range(n)])
    labels = torch.tensor([ds[seed + i][1] for i in range(n)])
    with torch.no_grad():
        code = trainer.objective.tokenizer.encode(x)
    return code.ids, code.residual, labels
