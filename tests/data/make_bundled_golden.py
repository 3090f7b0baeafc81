"""Images of both bundled models for fixed seeds, as uint8, for the golden test."""
import sys
import torch
from safetensors.torch import save_file
from sampling import HARTPipeline
torch.set_num_threads(1)
out = {}
p = HARTPipeline.from_pretrained("default")
s = p.sample([0, 3, 7, 9], seed=[5, 6, 7, 8])
out["default.ids"] = torch.cat(s.ids, 1)
out["default.images"] = ((s.images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
out["default.residual"] = s.residual
p = HARTPipeline.from_pretrained("default-t2i")
s = p.sample(prompts=["a small red circle", "two large blue squares"], seed=[1, 2])
out["t2i.ids"] = torch.cat(s.ids, 1)
out["t2i.images"] = ((s.images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
out["t2i.residual"] = s.residual
save_file({k: v.contiguous() for k, v in out.items()}, sys.argv[1])
print({k: tuple(v.shape) for k, v in out.items()})
