"""Full-reference image quality metrics on 8-bit RGB images, as the papers report them.

All functions take H x W x 3 uint8 RGB arrays (output first, reference second) and compute on the
8-bit scale (data range 255), so numbers are comparable with published LOL-style tables.
"""

from __future__ import annotations

import math

import numpy as np
from skimage.metrics import structural_similarity

DATA_RANGE = 255.0
# ITU-R BT.601 luma weights: the "gray level" of OpenCV's RGB->GRAY, which GT-mean implementations use.
GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114])


def _check_pair(output: np.ndarray, reference: np.ndarray) -> None:
    """Fail loudly on mismatched inputs: a silently broadcast metric is a wrong number in a table."""
    for label, image in (("output", output), ("reference", reference)):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"{label} must be H x W x 3 RGB, got shape {image.shape}")
    if output.shape != reference.shape:
        raise ValueError(f"output {output.shape} and reference {reference.shape} differ in shape")


def _psnr_of_floats(output: np.ndarray, reference: np.ndarray) -> float:
    """PSNR of two arrays on the 0..255 scale; ``inf`` when they are identical (MSE = 0)."""
    mse = float(np.mean((output.astype(np.float64) - reference.astype(np.float64)) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(DATA_RANGE**2 / mse)


def psnr(output: np.ndarray, reference: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over all RGB values, data range 255.

    Identical images give ``math.inf`` (the MSE is zero); callers that average or write JSON must
    handle it explicitly rather than get a ZeroDivisionError here.
    """
    _check_pair(output, reference)
    return _psnr_of_floats(output, reference)


def ssim(output: np.ndarray, reference: np.ndarray) -> float:
    """SSIM as defined by Wang et al. 2004: 11x11 Gaussian window (sigma 1.5), population
    covariance, data range 255, computed per RGB channel and averaged.

    Delegates to scikit-image so the number matches what other projects compute with the same
    settings; the arguments below are exactly the paper's choices.
    """
    _check_pair(output, reference)
    return float(
        structural_similarity(
            output,
            reference,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=DATA_RANGE,
            channel_axis=2,
        )
    )


def mean_gray_level(image: np.ndarray) -> float:
    """Mean BT.601 luma of an RGB image on the 0..255 scale."""
    return float(image.reshape(-1, 3).astype(np.float64).mean(axis=0) @ GRAY_WEIGHTS)


def psnr_gt_mean(output: np.ndarray, reference: np.ndarray) -> float:
    """The "GT-mean" PSNR variant reported by recent low-light papers (e.g. LLFlow, Retinexformer).

    The output is multiplied by one scalar so that its mean gray level equals the reference's,
    clipped to 0..255 (kept in floating point, not re-quantized), then scored with plain PSNR. It
    forgives a global exposure error and so reads 2-4 dB higher than plain PSNR: it uses the
    ground truth, so it is NOT a measure of a deployable method and must be reported beside plain
    PSNR, labelled. An all-black output cannot be rescaled and is scored unchanged.
    """
    _check_pair(output, reference)
    output_gray = mean_gray_level(output)
    if output_gray == 0.0:
        return _psnr_of_floats(output, reference)
    scale = mean_gray_level(reference) / output_gray
    rescaled = np.clip(output.astype(np.float64) * scale, 0.0, DATA_RANGE)
    return _psnr_of_floats(rescaled, reference)
