"""Classical, training-free enhancers scored beside the network so its numbers have context.

Every baseline maps an H x W x 3 uint8 RGB low-light image to an enhanced one of the same shape and
dtype, and sees only the low-light image: none of them peeks at the reference.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.optimize import brentq
from skimage import exposure
from skimage.color import hsv2rgb, rgb2hsv

Baseline = Callable[[np.ndarray], np.ndarray]

# Mean brightness (all RGB values, 0..1) the gamma baseline aims for: the mean of the normal-light
# images of lol-pairs train/ (0.403, measured). A data-set constant chosen on the training split,
# identical for every image, so the baseline never looks at the image's own reference.
GAMMA_TARGET_MEAN = 0.40
# Search range of the gamma exponent; an image that cannot reach the target within it (e.g. mostly
# black pixels, which no gamma lifts) gets the nearest bound.
GAMMA_RANGE = (1.0 / 20.0, 20.0)

_LEVELS = np.arange(256, dtype=np.float64) / 255.0


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] -> uint8, rounded (not truncated, which would darken by half a level)."""
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def _check_rgb(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected H x W x 3 uint8 RGB, got {image.dtype} {image.shape}")


def identity(image: np.ndarray) -> np.ndarray:
    """The low-light input itself: the floor every method must beat."""
    _check_rgb(image)
    return image.copy()


def choose_gamma(image: np.ndarray, target_mean: float = GAMMA_TARGET_MEAN) -> float:
    """The exponent g for which mean((x / 255) ** g) equals ``target_mean``.

    mean(x ** g) falls monotonically with g, so a bracketing root finder is exact and safe. It runs
    on the 256-bin histogram, so the cost does not depend on the image size.
    """
    counts = np.bincount(image.reshape(-1), minlength=256).astype(np.float64)
    weights = counts / counts.sum()

    def excess_brightness(log_gamma: float) -> float:
        return float(weights @ _LEVELS ** np.exp(log_gamma)) - target_mean

    low, high = np.log(GAMMA_RANGE[0]), np.log(GAMMA_RANGE[1])
    if excess_brightness(low) <= 0.0:  # too dark even at the strongest brightening
        return GAMMA_RANGE[0]
    if excess_brightness(high) >= 0.0:  # too bright even at the strongest darkening
        return GAMMA_RANGE[1]
    return float(np.exp(brentq(excess_brightness, low, high, xtol=1e-6)))


def gamma_correction(image: np.ndarray, target_mean: float = GAMMA_TARGET_MEAN) -> np.ndarray:
    """Global gamma curve, the same on all channels, with gamma chosen per image by ``choose_gamma``."""
    _check_rgb(image)
    lookup = _to_uint8(_LEVELS ** choose_gamma(image, target_mean))
    return lookup[image]


def _on_value_channel(image: np.ndarray, equalize: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Apply a gray-level operation to HSV value only, so hue and saturation survive it."""
    hsv = rgb2hsv(image)
    hsv[..., 2] = equalize(hsv[..., 2])
    return _to_uint8(hsv2rgb(hsv))


def histogram_equalization(image: np.ndarray) -> np.ndarray:
    """Global histogram equalization of the HSV value channel (scikit-image ``equalize_hist``)."""
    _check_rgb(image)
    return _on_value_channel(image, lambda value: exposure.equalize_hist(value, nbins=256))


def clahe(image: np.ndarray) -> np.ndarray:
    """Contrast-limited adaptive histogram equalization of the value channel (scikit-image
    ``equalize_adapthist`` with its defaults: tiles of 1/8 of the image, clip limit 0.01)."""
    _check_rgb(image)
    return _on_value_channel(image, exposure.equalize_adapthist)


# Name -> method, in the order tables list them. "input" must stay: it is the no-op reference row.
BASELINES: dict[str, Baseline] = {
    "input": identity,
    "gamma": gamma_correction,
    "hist_eq": histogram_equalization,
    "clahe": clahe,
}
