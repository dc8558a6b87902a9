"""training.colour_mix: the colour-diverse stage-2 inputs of issue 22 (recast and synthetic lows)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training import camera
from training.colour_mix import LUMA, ColourMix, recast, synthetic_low


def _red_cast_low() -> torch.Tensor:
    """A dark, textured crop with lol-pairs' kind of red cast (R about 2.5 x G)."""
    generator = torch.Generator().manual_seed(0)
    texture = torch.rand(1, 64, 64, generator=generator) * 0.1 + 0.02
    return texture * torch.tensor([2.5, 1.0, 0.9])[:, None, None] * 0.5


def test_recast_moves_the_grey_world_colour_to_the_target_and_keeps_the_brightness() -> None:
    low = _red_cast_low()
    target = torch.tensor([1.0, 1.0, 1.0])
    neutral = recast(low, target)
    means = neutral.mean(dim=(-2, -1))
    np.testing.assert_allclose((means / means.sum()).numpy(), [1 / 3] * 3, atol=1e-3)
    assert float(LUMA @ means) == pytest.approx(float(LUMA @ low.mean(dim=(-2, -1))), rel=1e-3)
    # Gains per channel only: the texture (relative structure within a channel) is unchanged.
    ratio = neutral[1] / low[1]
    assert float(ratio.std()) < 1e-4 and low.min() >= 0 and neutral.max() <= 1


def test_a_synthetic_low_is_the_normal_image_with_a_kth_of_its_light_and_drawn_noise() -> None:
    high = torch.full((3, 64, 64), 0.6) * torch.tensor([1.0, 0.8, 0.5])[:, None, None]
    dark = synthetic_low(high, 16.0, 4000.0, 4.0, seed=1)
    light = camera.srgb_to_linear(high.numpy().astype(np.float64)).mean(axis=(1, 2))
    captured = camera.srgb_to_linear(dark.numpy().astype(np.float64)).mean(axis=(1, 2))
    np.testing.assert_allclose(captured, light / 16.0, rtol=0.05)  # every channel: no cast added
    assert float(dark.std(dim=(-2, -1)).min()) > 0.005  # shot and read noise are drawn
    assert torch.equal(dark, synthetic_low(high, 16.0, 4000.0, 4.0, seed=1))  # seeded
    assert dark.dtype == torch.float32 and dark.shape == high.shape


def test_the_mix_draws_each_kind_at_its_share() -> None:
    torch.manual_seed(0)
    mix = ColourMix(recast=0.3, synthetic=0.2)
    low, high = _red_cast_low(), torch.full((3, 64, 64), 0.5)
    kinds = {"plain": 0, "recast": 0, "synthetic": 0}
    for _ in range(400):
        augment = mix.draw()
        if augment is None:
            kinds["plain"] += 1
            continue
        out = augment(low, high)
        # A recast keeps the low's brightness; a synthetic capture of the flat gray high is near-flat.
        kinds["recast" if float(LUMA @ (out - low).mean(dim=(-2, -1))) ** 2 < 1e-6 else "synthetic"] += 1
    assert abs(kinds["recast"] / 400 - 0.3) < 0.07 and abs(kinds["synthetic"] / 400 - 0.2) < 0.07
    assert not ColourMix().enabled and ColourMix(synthetic=0.1).enabled


@pytest.mark.parametrize("shares", [(-0.1, 0.0), (0.6, 0.5)])
def test_bad_shares_are_refused(shares: tuple[float, float]) -> None:
    with pytest.raises(ValueError, match="colour shares"):
        ColourMix(recast=shares[0], synthetic=shares[1])
