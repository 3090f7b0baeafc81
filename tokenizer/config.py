"""Tokenizer configuration and presets."""
from __future__ import annotations

from dataclasses import dataclass

from hart.common.errors import UserError
from hart.common.io import ConfigBase

# VAR's published scale schedules by resolution (10 scales at 256 and 512; HART's 1024px one)
PATCH_NUMS = {
    256: (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
    512: (1, 2, 3, 4, 6, 9, 13, 18, 24, 32),
    1024: (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64),
}
VAR_PATCH_NUMS = PATCH_NUMS[256]


@dataclass
class TokenizerConfig(ConfigBase):
    """Hybrid tokenizer: VQGAN-style CNN + multi-scale residual VQ + continuous residual.

    ``resolution // 2 ** (len(ch_mult) - 1)`` is the latent side and must equal
    ``patch_nums[-1]``. ``phi_last`` applies the Phi conv at the last scale (VAR does, HART
    does not).
    """

    KIND = "tokenizer"

    resolution: int = 256
    in_channels: int = 3
    ch: int = 160
    ch_mult: tuple = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 32
    codebook_size: int = 4096
    patch_nums: tuple = VAR_PATCH_NUMS
    phi_ratio: float = 0.5  # Phi(h) = (1 - r) h + r conv3x3(h)
    num_phi: int = 4  # shared Phi convs
    phi_last: bool = True
    beta: float = 0.25  # commitment weight of the VQ loss
    codebook_decay: float = 0.99  # EMA decay of the codebook (vector-quantize-pytorch)
    dead_code_threshold: float = 2.0  # EMA cluster size below which a code is re-seeded
    dropout: float = 0.0
    using_sa: bool = True  # attention at the lowest resolution
    using_mid_sa: bool = True
    # the data has no colour (every image R = G = B): the decoder's output is the mean of its
    # channels. Measured on the training data when ``hart train-tokenizer`` starts (a new run
    # or an --init stage), so it travels with the weights.
    grayscale: bool = False

    PRESETS = {
        # the official VAR tokenizer (vae_ch160v4096z32.pth)
        "var-256": dict(),
        # the same network as HART uses it: no Phi at the last scale
        "hart-256": dict(phi_last=False),
        # default 32x32 model (Fashion-MNIST): 8x8 latent, 7 scales, 130 tokens
        "fm-32": dict(resolution=32, ch=64, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=16,
                      codebook_size=512, patch_nums=(1, 2, 3, 4, 5, 6, 8), phi_last=False),
        # the default model's tokenizer: two res blocks per level, a 32-channel latent that
        # carries detail past the codebook, 1024 codes
        "fm-32-h": dict(resolution=32, ch=64, ch_mult=(1, 2, 2), num_res_blocks=2, z_channels=32,
                        codebook_size=1024, patch_nums=(1, 2, 3, 4, 5, 6, 8), phi_last=False),
        # tests
        "tiny": dict(resolution=16, ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, z_channels=8,
                     codebook_size=64, patch_nums=(1, 2, 3, 4), phi_last=False),
    }

    def __post_init__(self):
        self.ch_mult = tuple(self.ch_mult)
        self.patch_nums = tuple(self.patch_nums)
        down = self.downsample
        if self.resolution % down:
            raise UserError(
                f"resolution {self.resolution} is not divisible by the downsampling factor {down} "
                f"(ch_mult {self.ch_mult}); use a multiple of {down}"
            )
        if self.patch_nums[-1] != self.resolution // down:
            raise UserError(
                f"the last patch_num {self.patch_nums[-1]} must equal the latent side "
                f"{self.resolution // down} (resolution {self.resolution} / {down})"
            )
        if self.patch_nums[0] != 1 or list(self.patch_nums) != sorted(set(self.patch_nums)):
            raise UserError(f"patch_nums {self.patch_nums} must start at 1 and increase strictly")
        if self.ch % 32:
            raise UserError(f"ch {self.ch} must be a multiple of 32 (GroupNorm with 32 groups)")
        if self.z_channels < 1:
            raise UserError(f"z_channels must be at least 1, got {self.z_channels}")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def latent_size(self) -> int:
        return self.resolution // self.downsample

    @property
    def num_tokens(self) -> int:
        return sum(p * p for p in self.patch_nums)
