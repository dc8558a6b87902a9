"""Colour augmentation of stage-2 inputs (issue 22): dark captures without lol-pairs' red cast.

The lol-pairs lows carry a strong red cast that their normal-light images do not
(../shared/reference/colour-trial.md: grey-world r 0.57 against 0.35), so a network trained on them
alone learns to remove that one cast, and turns neutral photos (real cameras, the paper's own LOL
lows) cyan-green. ``ColourMix`` replaces the input of some training samples, the target staying the
normal-light image:

* a *recast* sample: the low with its own cast replaced by a random one near neutral (per-channel
  gains that keep the mean luma), so the network learns to remove whatever cast is there, or none;
* a *synthetic* sample: the normal-light image itself captured dark by ``training.camera`` (1/k of
  the light, shot and read noise of a random sensor), a colour-true low for the same target.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from service.exposure import LUMA_WEIGHTS
from training import camera

LUMA = torch.from_numpy(LUMA_WEIGHTS)  # the weights service.exposure measures brightness with
Augment = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _log_uniform(low: float, high: float) -> float:
    return math.exp(math.log(low) + float(torch.rand(())) * (math.log(high) - math.log(low)))


@dataclass(frozen=True)
class ColourMix:
    """Shares of recast and synthetic samples (the rest keep the plain low), and their ranges."""

    recast: float = 0.0
    synthetic: float = 0.0
    cast_sigma: float = 0.2  # std of the random per-channel log gains around neutral
    min_divisor: float = 4.0  # synthetic captures get 1/k of the light, k log-uniform in this range
    max_divisor: float = 64.0
    min_full_well: float = 1000.0  # electrons, log-uniform: brighter ISO settings to base ISO
    max_full_well: float = 16000.0
    max_read_noise: float = 6.0  # electrons, uniform from 1

    def __post_init__(self) -> None:
        if min(self.recast, self.synthetic) < 0 or self.recast + self.synthetic > 1:
            raise ValueError("colour shares must be >= 0 and recast + synthetic <= 1")
        if not 1 <= self.min_divisor <= self.max_divisor or not 0 < self.min_full_well <= self.max_full_well:
            raise ValueError("divisor and full-well ranges must be increasing and positive")

    @property
    def enabled(self) -> bool:
        return self.recast > 0 or self.synthetic > 0

    def draw(self) -> Augment | None:
        """One random choice, as a function of (low, high) float CHW tensors in [0, 1]; None keeps
        the low as it is."""
        draw = float(torch.rand(()))
        if draw < self.recast:
            target = torch.exp(torch.randn(3) * self.cast_sigma)
            return lambda low, high: recast(low, target)
        if draw < self.recast + self.synthetic:
            divisor = _log_uniform(self.min_divisor, self.max_divisor)
            full_well = _log_uniform(self.min_full_well, self.max_full_well)
            read_noise = 1.0 + float(torch.rand(())) * (self.max_read_noise - 1.0)
            seed = int(torch.randint(0, 2**31 - 1, ()))
            return lambda low, high: synthetic_low(high, divisor, full_well, read_noise, seed)
        return None


def recast(low: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``low`` (3 x H x W) with per-channel gains that move its grey-world colour (channel means) to
    the proportions of ``target`` (3 positive numbers), its mean luma kept; clipped to [0, 1]."""
    means = low.mean(dim=(-2, -1)).clamp_min(1e-4)
    gains = target / target.sum() / (means / means.sum())
    gains = gains * (LUMA @ means) / (LUMA @ (gains * means))
    return (low * gains[:, None, None]).clamp_(0.0, 1.0)


def synthetic_low(high: torch.Tensor, divisor: float, full_well: float, read_noise: float, seed: int) -> torch.Tensor:
    """``high`` (3 x H x W, sRGB in [0, 1]) captured with 1/``divisor`` of its light (training.camera)."""
    rng = np.random.default_rng(seed)
    dark = camera.capture(
        high.numpy().astype(np.float64), divisor, rng, full_well=full_well, read_noise=read_noise, channel_axis=0
    )
    return torch.from_numpy(dark.astype(np.float32))
