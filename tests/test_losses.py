"""Loss terms: hue loss properties, SSIM against scikit-image, weighting, and that training lowers them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from model.network import FRLIE, FRLIEConfig
from training.losses import (
    WEIGHT_FEATURE,
    WEIGHT_HUE,
    WEIGHT_PIXEL,
    WEIGHT_SSIM,
    hue_degrees,
    hue_loss,
    reconstruction_loss,
    restoration_loss,
    ssim_index,
)


def _hsv_image(hue_deg: float) -> torch.Tensor:
    """A 1 x 3 x 8 x 8 image of one fully saturated colour with the given hue."""
    import colorsys

    rgb = colorsys.hsv_to_rgb(hue_deg / 360.0, 1.0, 1.0)
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, 8, 8).clone()


def test_hue_loss_of_identical_images_is_zero() -> None:
    image = torch.rand(2, 3, 16, 16)
    assert hue_loss(image, image).item() == 0.0


def test_hue_loss_is_circular_across_0_and_360() -> None:
    # 350 deg and 10 deg are 20 deg apart on the circle, not 340.
    near_wrap = hue_loss(_hsv_image(350), _hsv_image(10)).item()
    assert near_wrap == pytest.approx(20 / 180, abs=2e-3)
    # The largest possible distance is 180 deg -> loss 1.
    assert hue_loss(_hsv_image(0), _hsv_image(180)).item() == pytest.approx(1.0, abs=2e-3)
    assert hue_degrees(_hsv_image(120)).mean().item() == pytest.approx(120, abs=0.2)


def test_ssim_agrees_with_scikit_image() -> None:
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(1, 3, 48, 64, generator=generator)
    b = (a + 0.15 * torch.randn(a.shape, generator=generator)).clamp(0, 1)
    expected = structural_similarity(
        a[0].permute(1, 2, 0).numpy(),
        b[0].permute(1, 2, 0).numpy(),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        channel_axis=2,
    )
    assert ssim_index(a, b).item() == pytest.approx(expected, abs=1e-5)
    assert ssim_index(a, a).item() == pytest.approx(1.0, abs=1e-6)


def test_stage_losses_use_the_paper_weights() -> None:
    output, target = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    features, target_features = torch.rand(1, 8, 8, 8), torch.rand(1, 8, 8, 8)
    stage1 = reconstruction_loss(output, target)
    assert stage1.total.item() == pytest.approx(WEIGHT_PIXEL * stage1.parts["mse"], rel=1e-6)
    full = restoration_loss(output, target, features, target_features)
    p = full.parts
    expected = (
        WEIGHT_PIXEL * p["mse"]
        + WEIGHT_SSIM * (1 - p["ssim"])
        + WEIGHT_HUE * p["hue"]
        + WEIGHT_FEATURE * p["feature_l1"]
    )
    assert full.total.item() == pytest.approx(expected, rel=1e-5)
    assert (WEIGHT_PIXEL, WEIGHT_FEATURE, WEIGHT_SSIM, WEIGHT_HUE) == (100.0, 0.2, 0.5, 0.05)
    ablation = restoration_loss(output, target)
    assert "feature_l1" not in ablation.parts
    assert ablation.total.item() == pytest.approx(expected - WEIGHT_FEATURE * p["feature_l1"], rel=1e-5)


def test_a_few_optimisation_steps_reduce_the_loss() -> None:
    torch.manual_seed(0)
    model = FRLIE(FRLIEConfig(width=8, fr_blocks=1))
    low, high = torch.rand(4, 3, 32, 32) * 0.2, torch.rand(4, 3, 32, 32)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.5, 0.9))
    losses = []
    for _ in range(25):
        loss = restoration_loss(model(low), high).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:3])
