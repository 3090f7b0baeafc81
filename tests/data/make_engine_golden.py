import sys, torch
sys.path.insert(0, "tests")
from test_sampling import _models
from sampling import HARTPipeline
from safetensors.torch import save_file
torch.set_num_threads(1)
out = {}
for smooth in (False, True):
    tok, gen = _models(seed=0)
    pipe = HARTPipeline(tok, gen)
    s = pipe.sample([1, 4, 7], seed=11, cfg=2.5, top_k=20, top_p=0.9, smooth=smooth)
    tag = "smooth" if smooth else "hard"
    out[f"{tag}.ids"] = torch.cat(s.ids, 1)
    out[f"{tag}.images"] = s.images
    out[f"{tag}.residual"] = s.residual
save_file({k: v.contiguous() for k, v in out.items()}, sys.argv[1])
