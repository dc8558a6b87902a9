"""Metrics and baselines on synthetic images (no data set needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from training.baselines import BASELINES, GAMMA_TARGET_MEAN, choose_gamma, gamma_correction
from training.metrics import mean_gray_level, psnr, psnr_gt_mean, ssim


@pytest.fixture
def reference() -> np.ndarray:
    """A textured RGB image with headroom on both ends, so +-offsets do not clip."""
    rng = np.random.default_rng(0)
    return rng.integers(20, 236, size=(48, 64, 3), dtype=np.uint8)


@pytest.fixture
def dark_image() -> np.ndarray:
    """A low-light-like image: smooth gradient plus noise, mean around 0.06."""
    rng = np.random.default_rng(1)
    ramp = np.linspace(0, 30, 80)[None, :, None] + np.linspace(0, 10, 60)[:, None, None]
    noisy = ramp + rng.normal(0, 2, size=(60, 80, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def test_psnr_of_identical_images_is_infinite(reference: np.ndarray) -> None:
    assert psnr(reference, reference) == math.inf


def test_psnr_of_constant_offset_matches_formula(reference: np.ndarray) -> None:
    # Every value off by 5: MSE = 25, PSNR = 10 log10(255^2 / 25) = 20 log10(51).
    shifted = reference + np.uint8(5)
    assert psnr(shifted, reference) == pytest.approx(20 * math.log10(51), abs=1e-9)
    assert psnr(reference, shifted) == pytest.approx(20 * math.log10(51), abs=1e-9)


def test_psnr_does_not_wrap_around_in_uint8() -> None:
    # 0 - 255 must be -255, not 1 (uint8 arithmetic): MSE = 255^2 -> 0 dB.
    black = np.zeros((8, 8, 3), np.uint8)
    white = np.full((8, 8, 3), 255, np.uint8)
    assert psnr(black, white) == pytest.approx(0.0)


def test_metrics_reject_mismatched_shapes(reference: np.ndarray) -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(reference[:-1], reference)
    with pytest.raises(ValueError, match="RGB"):
        ssim(reference[..., 0], reference[..., 0])


def test_ssim_is_one_for_identical_images(reference: np.ndarray) -> None:
    assert ssim(reference, reference) == pytest.approx(1.0)


def test_ssim_agrees_with_scikit_image_wang_settings(reference: np.ndarray) -> None:
    rng = np.random.default_rng(2)
    noisy = np.clip(reference + rng.normal(0, 12, reference.shape), 0, 255).astype(np.uint8)
    expected = structural_similarity(
        noisy,
        reference,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=255,
        channel_axis=2,
    )
    value = ssim(noisy, reference)
    assert value == pytest.approx(expected, abs=1e-12)
    assert 0.0 < value < 1.0


def test_gt_mean_psnr_forgives_a_global_brightness_error(reference: np.ndarray) -> None:
    darker = np.round(reference * 0.5).astype(np.uint8)
    plain, gt_mean = psnr(darker, reference), psnr_gt_mean(darker, reference)
    assert gt_mean >= plain
    assert gt_mean - plain > 10.0  # halving brightness costs ~10 dB; rescaling recovers most of it


def test_gt_mean_psnr_of_identical_images_is_infinite_and_black_output_is_finite(reference: np.ndarray) -> None:
    assert psnr_gt_mean(reference, reference) == math.inf
    black = np.zeros_like(reference)
    assert psnr_gt_mean(black, reference) == pytest.approx(psnr(black, reference))


def test_mean_gray_level_uses_bt601_weights() -> None:
    image = np.zeros((2, 2, 3), np.uint8)
    image[..., 1] = 100  # pure green
    assert mean_gray_level(image) == pytest.approx(58.7)


@pytest.mark.parametrize("name", list(BASELINES))
def test_baselines_keep_shape_and_dtype(name: str, dark_image: np.ndarray) -> None:
    enhanced = BASELINES[name](dark_image)
    assert enhanced.shape == dark_image.shape
    assert enhanced.dtype == np.uint8
    assert enhanced is not dark_image


def test_input_baseline_is_the_input(dark_image: np.ndarray) -> None:
    np.testing.assert_array_equal(BASELINES["input"](dark_image), dark_image)


@pytest.mark.parametrize("name", [name for name in BASELINES if name != "input"])
def test_baselines_brighten_a_dark_image(name: str, dark_image: np.ndarray) -> None:
    assert BASELINES[name](dark_image).mean() > 2 * dark_image.mean()


def test_gamma_reaches_the_target_mean(dark_image: np.ndarray) -> None:
    gamma = choose_gamma(dark_image)
    assert 0 < gamma < 1  # a dark image needs brightening
    assert gamma_correction(dark_image).mean() / 255 == pytest.approx(GAMMA_TARGET_MEAN, abs=0.01)


def test_gamma_handles_black_and_bright_images() -> None:
    black = np.zeros((16, 16, 3), np.uint8)
    np.testing.assert_array_equal(gamma_correction(black), black)
    bright = np.full((16, 16, 3), 230, np.uint8)
    assert gamma_correction(bright).mean() < bright.mean()  # gamma > 1 darkens toward the target


def test_baselines_reject_non_uint8_input(dark_image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        BASELINES["gamma"](dark_image.astype(np.float32))
