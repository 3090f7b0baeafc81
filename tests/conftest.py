import os
import sys

# Triton decides interpreter mode when it is first imported (its language functions are
# built then), so the CPU kernel-parity tests need this before any test module imports
# torch, diffusers or gradio, which may import triton. On a GPU box, run with
# TRITON_INTERPRET=0 to compile the kernels for real.
os.environ.setdefault("TRITON_INTERPRET", "1")
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# tiny configs: one thread is fastest, and two OpenMP threads on a busy 2-core machine
# can be 100x slower than one
torch.set_num_threads(1)


@pytest.fixture
def load_tool():
    """``load_tool("feature_net")`` -> the module of ``scripts/feature_net.py`` (scripts/ is not a package)."""
    import importlib.util

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load


@pytest.fixture
def tiny_tokenizer():
    from tokenizer import HybridTokenizer, TokenizerConfig

    torch.manual_seed(0)
    return HybridTokenizer(TokenizerConfig.from_name("tiny")).eval()


@pytest.fixture(scope="module")
def tokdir(tmp_path_factory):
    """A tiny tokenizer folder whose codebook has seen data (k-means init + EMA)."""
    from hart.data.datasets import make_dataset
    from tokenizer import HybridTokenizer, TokenizerConfig

    torch.manual_seed(0)
    tok = HybridTokenizer(TokenizerConfig.from_name("tiny")).train()
    ds = make_dataset("synthetic", "train", 16)
    for s in range(4):
        tok(torch.stack([ds[s * 32 + i][0] for i in range(32)]))
    d = tmp_path_factory.mktemp("tok")
    tok.eval().save_pretrained(d)
    return d


DEMO_CLASS_NAMES = ("shirt", "shoe", "bag")


@pytest.fixture(scope="module")
def demo_model_dir(tmp_path_factory):
    """A tiny random class model folder (3 named classes) for the demo tests."""
    from hart.config import GeneratorConfig
    from hart.model import HARTGenerator
    from tokenizer import HybridTokenizer, TokenizerConfig

    d = tmp_path_factory.mktemp("demo_model")
    torch.manual_seed(0)
    HybridTokenizer(TokenizerConfig.from_name("tiny")).save_pretrained(d / "tokenizer")
    HARTGenerator(GeneratorConfig.from_name("tiny", num_classes=3, display=dict(class_names=DEMO_CLASS_NAMES))).save_pretrained(
        d / "generator")
    return d
