"""One rank of the DDP gradient test (tests/test_train_generator.py starts two of these
with torchrun's environment variables). Not collected by pytest."""
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hart.common.dist import init_distributed  # noqa: E402
from tests.gen_common import batch_for, make_trainer  # noqa: E402


def main(out, tokdir):
    torch.set_num_threads(1)
    dist = init_distributed("cpu")
    trainer = make_trainer(tokdir, dist)
    ids, residual, labels = batch_for(trainer, 8)
    half = slice(4 * dist.rank, 4 * dist.rank + 4)  # this rank's shard of the global batch
    loss, _ = trainer.ddp([i[half] for i in ids], residual[half], labels[half], trainer.gen)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    save_file(grads, str(Path(out) / f"grads{dist.rank}.safetensors"))
    trainer.opt.step()
    params = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    save_file(params, str(Path(out) / f"params{dist.rank}.safetensors"))
    dist.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
