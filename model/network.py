"""The FRLIE network: encoder E, feature restoration net FRNet, decoder D.

Layer layout follows the paper (Yang, Zhang, Guo, ICASSP 2022) and the details it omits, as
model/MODEL_CARD.md records them ("Architecture"). Everything is convolutional and local (no pooling, no attention),
which is what makes exact tiling possible in the service.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

# Spatial downsampling of the encoder: inputs must be a multiple of this.
SIZE_MULTIPLE = 4
# Dilations of the four parallel branches of a context block.
CONTEXT_DILATIONS = (1, 2, 3, 4)
RESIDUAL_BLOCKS_PER_FR_BLOCK = 2


@dataclass(frozen=True)
class FRLIEConfig:
    """Architecture hyper-parameters; stored in every checkpoint so a file rebuilds its network."""

    width: int = 32
    fr_blocks: int = 4
    upsample: Literal["pixelshuffle", "bilinear"] = "pixelshuffle"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FRLIEConfig:
        return cls(**{k: data[k] for k in ("width", "fr_blocks", "upsample") if k in data})

    @property
    def feature_channels(self) -> int:
        return 4 * self.width

    @property
    def receptive_radius(self) -> int:
        """Pixels of context, at full resolution, that one output pixel depends on (each side).

        Encoder: 5x5 at scale 1 (2), 3x3/s2 (1), 3x3 at scale 2 (2), 3x3/s2 at scale 2 (2).
        FR block at scale 4: dilated 3x3 up to dilation 4 (16) + four plain 3x3 convs (16).
        Decoder: 3x3 at scale 4 (4), 3x3 at scale 2 twice (4), final 3x3 at scale 1 (1).
        Plus up to SIZE_MULTIPLE - 1 pixels from the stride phase: an output pixel that is not
        aligned to the 1/4 grid reaches further on one side (measured: 147 px for 4 blocks).
        """
        phase = SIZE_MULTIPLE - 1
        encoder = 2 + 1 + 2 + 2
        fr_block = SIZE_MULTIPLE * (max(CONTEXT_DILATIONS) + 2 * RESIDUAL_BLOCKS_PER_FR_BLOCK)
        decoder = 4 + 2 + 2 + 1
        return phase + encoder + self.fr_blocks * fr_block + decoder


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """Convolution with reflection padding that keeps the size (divided by the stride)."""
    pad = dilation * (kernel - 1) // 2
    layers: list[nn.Module] = []
    if pad:
        layers.append(nn.ReflectionPad2d(pad))
    layers.append(nn.Conv2d(in_ch, out_ch, kernel, stride=stride, dilation=dilation))
    return nn.Sequential(*layers)


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(_conv(in_ch, out_ch, 3, stride), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class Encoder(nn.Module):
    """RGB image -> 4C feature map at 1/4 resolution."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv(3, width, 5),
            _conv_bn_relu(width, 2 * width, stride=2),
            _conv_bn_relu(2 * width, 2 * width),
            _conv_bn_relu(2 * width, 4 * width, stride=2),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.body(image)


class ContextBlock(nn.Module):
    """Parallel dilated convolutions widen the receptive field cheaply; residual."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(channels, width, 1)
        self.branches = nn.ModuleList(
            nn.Sequential(_conv(width, width, 3, dilation=d), nn.LeakyReLU(0.2, inplace=True))
            for d in CONTEXT_DILATIONS
        )
        self.fuse = nn.Conv2d(width * len(CONTEXT_DILATIONS), channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeezed = self.squeeze(x)
        return x + self.fuse(torch.cat([branch(squeezed) for branch in self.branches], dim=1))


class ResidualBlock(nn.Module):
    """conv3x3 -> LeakyReLU(0.2) -> conv3x3, plus the input; no normalization."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv(channels, channels, 3), nn.LeakyReLU(0.2, inplace=True), _conv(channels, channels, 3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class FRNet(nn.Module):
    """Maps dark features to bright ones by predicting a residual correction."""

    def __init__(self, channels: int, width: int, blocks: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(blocks):
            layers.append(ContextBlock(channels, width))
            layers.extend(ResidualBlock(channels) for _ in range(RESIDUAL_BLOCKS_PER_FR_BLOCK))
        self.body = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features + self.body(features)


class _Upsample2x(nn.Module):
    """x2 upsampling: conv to 4x/4 channels + PixelShuffle (paper), or bilinear + conv (authors' code)."""

    def __init__(self, in_ch: int, out_ch: int, mode: str) -> None:
        super().__init__()
        if mode == "pixelshuffle":
            self.body = nn.Sequential(_conv(in_ch, out_ch * 4, 3), nn.PixelShuffle(2))
        elif mode == "bilinear":
            self.body = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), _conv(in_ch, out_ch, 3)
            )
        else:
            raise ValueError(f"unknown upsample mode {mode!r}")
        self.post = nn.Sequential(nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(self.body(x))


class Decoder(nn.Module):
    """4C features at 1/4 resolution -> RGB image in [0, 1]."""

    def __init__(self, width: int, upsample: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _Upsample2x(4 * width, 2 * width, upsample),
            _conv_bn_relu(2 * width, 2 * width),
            _Upsample2x(2 * width, width, upsample),
            _conv(width, 3, 3),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(self.body(features)) + 1.0) / 2.0


class FRLIE(nn.Module):
    """The full enhancer. ``forward`` expects H and W to be multiples of 4; use ``enhance`` otherwise."""

    def __init__(self, config: FRLIEConfig | None = None) -> None:
        super().__init__()
        self.config = config or FRLIEConfig()
        c = self.config
        self.encoder = Encoder(c.width)
        self.frnet = FRNet(c.feature_channels, c.width, c.fr_blocks)
        self.decoder = Decoder(c.width, c.upsample)

    def reconstruct(self, image: torch.Tensor) -> torch.Tensor:
        """Stage-1 path D(E(x)): no feature restoration."""
        return self.decoder(self.encoder(image))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.frnet(self.encoder(image)))


def _pad_mode(pad: int, size: int) -> str:
    return "reflect" if pad < size else "replicate"


# The smallest side the network accepts: at 1/4 scale the dilation-4 reflection pad needs > 4 pixels.
MIN_SIDE = SIZE_MULTIPLE * (max(CONTEXT_DILATIONS) + 1)


def pad_to_multiple(image: torch.Tensor, multiple: int = SIZE_MULTIPLE, min_side: int = MIN_SIDE) -> torch.Tensor:
    """Pad bottom/right (reflection where possible) so H and W are multiples of ``multiple`` and >= min_side."""
    height, width = image.shape[-2:]
    target_h = max(min_side, -(-height // multiple) * multiple)
    target_w = max(min_side, -(-width // multiple) * multiple)
    pad_h, pad_w = target_h - height, target_w - width
    if pad_w:
        image = F.pad(image, (0, pad_w, 0, 0), mode=_pad_mode(pad_w, width))
    if pad_h:
        image = F.pad(image, (0, 0, 0, pad_h), mode=_pad_mode(pad_h, height))
    return image


@torch.no_grad()
def enhance(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Enhance a batch N x 3 x H x W in [0, 1] of any H x W; pads, runs, crops back."""
    height, width = images.shape[-2:]
    padded = pad_to_multiple(images)
    return model(padded)[..., :height, :width].clamp(0.0, 1.0)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
