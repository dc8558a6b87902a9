"""MATLAB-compatible NIQE (Mittal, Soundararajan, Bovik, "Making a completely blind image quality
analyzer", IEEE SPL 2013). Lower is better.

Written from the published algorithm so that scores line up with the numbers papers report
(they come from the MATLAB release): Y channel of MATLAB ``rgb2ycbcr`` rounded to 8 bits, 96x96
blocks, two scales with MATLAB ``imresize`` bicubic downscaling, MSCN coefficients, (A)GGD fits by
moment matching on MATLAB's 0.2:0.001:10 shape grid, and the pristine model shipped beside this
module (``data/niqe_pris_params.npz``, see ``data/NIQE-NOTICE.md``). Whole image, no border crop.

numpy + scipy only, so evaluation can score ONNX outputs without torch.
"""

from __future__ import annotations

import argparse
import math
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.special import gamma

PRISTINE_PARAMS_PATH = Path(__file__).parent / "data" / "niqe_pris_params.npz"
BLOCK_SIZE = 96
NUM_SCALES = 2
FEATURES_PER_SCALE = 18
# Neighbour offsets (rows, cols) of the four pairwise products: horizontal, vertical, two diagonals.
PAIR_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))

# MATLAB's shape grid 0.2:0.001:10 and the AGGD moment ratio for each shape on it.
SHAPE_GRID = np.linspace(0.2, 10.0, 9801)
SHAPE_MOMENT_RATIO = gamma(2.0 / SHAPE_GRID) ** 2 / (gamma(1.0 / SHAPE_GRID) * gamma(3.0 / SHAPE_GRID))
# Rows of samples fitted at once: bounds the (rows x 9801) lookup table to ~20 MB for huge images.
FIT_CHUNK_ROWS = 256


@lru_cache(maxsize=1)
def pristine_model() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mu 36, cov 36x36, 7x7 Gaussian window) of the pristine model, loaded once, read-only."""
    with np.load(PRISTINE_PARAMS_PATH) as params:
        mean = np.asarray(params["mu_pris_param"], dtype=np.float64).reshape(-1)
        covariance = np.asarray(params["cov_pris_param"], dtype=np.float64)
        window = np.asarray(params["gaussian_window"], dtype=np.float64)
    for array in (mean, covariance, window):
        array.setflags(write=False)
    return mean, covariance, window


def luma(image: np.ndarray) -> np.ndarray:
    """Y of MATLAB ``rgb2ycbcr`` on an 8-bit image (offset 16, range 16..235), rounded as MATLAB
    rounds its uint8 output. Gray input is treated as R = G = B, i.e. the gray image repeated to
    three channels, so a gray file and its RGB copy score the same."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        red = green = blue = array
    elif array.ndim == 3 and array.shape[2] == 3:
        red, green, blue = (array[..., channel] for channel in range(3))
    else:
        raise ValueError(f"expected an H x W gray or H x W x 3 RGB image, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"expected an integer or float image, got dtype {array.dtype}")
    if array.size and not np.isfinite(array).all():
        raise ValueError("image contains NaN or infinite values")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(
            f"image values must lie in [0, 255] (got {array.min()}..{array.max()}); scale [0, 1] images by 255"
        )
    y = (
        16.0
        + (65.481 * red.astype(np.float64) + 128.553 * green.astype(np.float64) + 24.966 * blue.astype(np.float64))
        / 255.0
    )
    # MATLAB rounds half away from zero; y is positive, so floor(y + 0.5).
    return np.floor(y + 0.5)


def _cubic(distance: np.ndarray) -> np.ndarray:
    """Keys cubic kernel with a = -0.5, the one MATLAB ``imresize`` calls 'bicubic'."""
    x = np.abs(distance)
    x2, x3 = x * x, x * x * x
    near = (1.5 * x3 - 2.5 * x2 + 1.0) * (x <= 1)
    far = (-0.5 * x3 + 2.5 * x2 - 4.0 * x + 2.0) * ((x > 1) & (x <= 2))
    return near + far


def _resize_taps(in_length: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights (out_length x taps) of MATLAB ``imresize`` bicubic along one axis:
    antialiased when shrinking (kernel stretched by 1/scale), weights normalised per output sample,
    out-of-range taps mirrored (MATLAB's symmetric padding)."""
    out_length = math.ceil(in_length * scale)
    antialias = scale < 1
    kernel_width = 4.0 / scale if antialias else 4.0
    # 1-based output coordinates mapped to 1-based input coordinates, as MATLAB does.
    centers = np.arange(1, out_length + 1, dtype=np.float64) / scale + 0.5 * (1.0 - 1.0 / scale)
    first = np.floor(centers - kernel_width / 2.0)
    num_taps = math.ceil(kernel_width) + 2
    indices = first[:, None] + np.arange(num_taps, dtype=np.float64)[None, :]
    distance = centers[:, None] - indices
    weights = scale * _cubic(scale * distance) if antialias else _cubic(distance)
    weights /= weights.sum(axis=1, keepdims=True)
    mirrored = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])
    source = mirrored[np.mod(indices.astype(np.int64) - 1, 2 * in_length)]
    return source, weights


def imresize(image: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB ``imresize(image, scale)`` (bicubic, antialiasing on) for a 2-D float image, no
    clipping (MATLAB does not clip doubles). Rows first, then columns, as MATLAB orders equal scales.

    Each output is written as its centre tap plus the weighted differences to it, which equals the
    plain weighted sum (the weights sum to 1) but keeps a flat area exactly flat, as exact
    arithmetic would: see ``mscn`` for why that matters."""
    result = np.asarray(image, dtype=np.float64)
    for axis in (0, 1):
        source, weights = _resize_taps(result.shape[axis], scale)
        moved = np.moveaxis(result, axis, 0)
        anchor = moved[source[:, source.shape[1] // 2]]
        offset = np.zeros_like(anchor)
        for tap in range(source.shape[1]):
            offset += weights[:, tap, None] * (moved[source[:, tap]] - anchor)
        result = np.moveaxis(anchor + offset, 0, axis)
    return result


def mscn(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients, (I - mu) / (sigma + 1), with the Gaussian
    window and MATLAB ``imfilter(..., 'replicate')`` borders (scipy's 'nearest').

    Where the whole window is flat the coefficient is exactly 0 in exact arithmetic, but the
    stored window sums to 1 - 1e-16, so floating point leaves tiny same-sign values there; the
    AGGD fit counts them as positive samples, which moves scores of images with clipped or flat
    areas by up to ~0.03. Setting flat neighbourhoods to 0 restores the exact result."""
    local_mean = ndimage.correlate(image, window, mode="nearest")
    local_var = ndimage.correlate(image * image, window, mode="nearest") - local_mean * local_mean
    coefficients = (image - local_mean) / (np.sqrt(np.abs(local_var)) + 1.0)
    size = window.shape
    flat = ndimage.maximum_filter(image, size=size, mode="nearest") == ndimage.minimum_filter(
        image, size=size, mode="nearest"
    )
    coefficients[flat] = 0.0
    return coefficients


def fit_aggd(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric generalised Gaussian fit per row of ``samples`` by moment matching, the NIQE way:
    returns (shape, left scale, right scale). A row without negative or positive values (e.g. a flat
    block) yields NaN scales and, like MATLAB's ``min`` over all-NaN values, the first grid shape."""
    negative, positive = samples < 0, samples > 0
    squares = samples * samples
    with np.errstate(invalid="ignore", divide="ignore"):
        left_std = np.sqrt((squares * negative).sum(axis=1) / negative.sum(axis=1))
        right_std = np.sqrt((squares * positive).sum(axis=1) / positive.sum(axis=1))
        skew_ratio = left_std / right_std
        moment_ratio = np.abs(samples).mean(axis=1) ** 2 / squares.mean(axis=1)
        normalised_ratio = moment_ratio * (skew_ratio**3 + 1) * (skew_ratio + 1) / (skew_ratio**2 + 1) ** 2
    best = np.empty(samples.shape[0], dtype=np.int64)
    for start in range(0, samples.shape[0], FIT_CHUNK_ROWS):
        chunk = normalised_ratio[start : start + FIT_CHUNK_ROWS, None]
        # argmin returns the first NaN's index (0) for a NaN row, matching MATLAB's min.
        best[start : start + FIT_CHUNK_ROWS] = np.argmin((SHAPE_MOMENT_RATIO[None, :] - chunk) ** 2, axis=1)
    shape = SHAPE_GRID[best]
    scale_factor = np.sqrt(gamma(1.0 / shape) / gamma(3.0 / shape))
    return shape, left_std * scale_factor, right_std * scale_factor


def _split_blocks(image: np.ndarray, block_size: int) -> np.ndarray:
    """(num_blocks, block_size * block_size) view of non-overlapping blocks of a cropped image."""
    rows, cols = image.shape[0] // block_size, image.shape[1] // block_size
    blocks = image.reshape(rows, block_size, cols, block_size).swapaxes(1, 2)
    return blocks.reshape(rows * cols, block_size, block_size)


def block_features(coefficients: np.ndarray, block_size: int) -> np.ndarray:
    """The 18 NIQE features of every block: AGGD (shape, mean scale) of the MSCN coefficients, then
    (shape, mean, left scale, right scale) of their products with each of four neighbours; the
    neighbour wraps around inside the block, as MATLAB ``circshift`` in ``blkproc`` does."""
    blocks = _split_blocks(coefficients, block_size)
    num_blocks = blocks.shape[0]
    features = np.empty((num_blocks, FEATURES_PER_SCALE), dtype=np.float64)
    shape, left, right = fit_aggd(blocks.reshape(num_blocks, -1))
    features[:, 0], features[:, 1] = shape, (left + right) / 2.0
    for pair_index, shift in enumerate(PAIR_SHIFTS):
        products = blocks * np.roll(blocks, shift, axis=(1, 2))
        shape, left, right = fit_aggd(products.reshape(num_blocks, -1))
        mean = (right - left) * gamma(2.0 / shape) / gamma(1.0 / shape)
        column = 2 + 4 * pair_index
        features[:, column : column + 4] = np.stack([shape, mean, left, right], axis=1)
    return features


def niqe_of_luma(intensity: np.ndarray) -> float:
    """NIQE of a 2-D intensity image in [0, 255] (already the Y channel)."""
    intensity = np.asarray(intensity, dtype=np.float64)
    height, width = intensity.shape
    block_rows, block_cols = height // BLOCK_SIZE, width // BLOCK_SIZE
    if block_rows * block_cols < 2:
        raise ValueError(
            f"image of {height}x{width} px is too small for NIQE: it needs at least two "
            f"{BLOCK_SIZE}x{BLOCK_SIZE} blocks (e.g. 192x96 or 96x192 px) to estimate a covariance"
        )
    pristine_mean, pristine_cov, window = pristine_model()
    # MATLAB crops to whole blocks before anything else.
    image = intensity[: block_rows * BLOCK_SIZE, : block_cols * BLOCK_SIZE]
    per_scale = []
    for scale in range(1, NUM_SCALES + 1):
        per_scale.append(block_features(mscn(image, window), BLOCK_SIZE // scale))
        if scale < NUM_SCALES:
            image = imresize(image, 0.5)
    features = np.concatenate(per_scale, axis=1)

    # MATLAB nanmean (per column) and nancov (complete rows only).
    complete = features[~np.isnan(features).any(axis=1)]
    if complete.shape[0] < 2:
        raise ValueError("NIQE is undefined: fewer than two blocks have texture (flat image?)")
    with np.errstate(invalid="ignore"):
        image_mean = np.nanmean(features, axis=0)
    image_cov = np.cov(complete, rowvar=False)
    difference = pristine_mean - image_mean
    distance_sq = difference @ np.linalg.pinv((pristine_cov + image_cov) / 2.0) @ difference
    return float(np.sqrt(distance_sq))


def niqe(image: np.ndarray) -> float:
    """NIQE score (lower is better) of an H x W x 3 RGB or H x W gray image, uint8 or float in
    [0, 255]. Float input is rounded to 8-bit Y like MATLAB's uint8 pipeline, so it scores the same
    as its uint8 version."""
    return niqe_of_luma(luma(image))


def load_image(path: str | Path) -> np.ndarray:
    """Pixels of an image file: gray stays single-channel (8-bit, or 16-bit scaled to [0, 255]),
    anything else becomes RGB (palette and alpha dropped)."""
    with Image.open(path) as picture:
        picture.load()
        if picture.mode in ("1", "L", "LA", "La"):
            return np.asarray(picture.convert("L"))
        if picture.mode.startswith("I;16"):
            return np.asarray(picture, dtype=np.float64) / 257.0
        if picture.mode in ("I", "F"):
            raise ValueError(f"unsupported image mode {picture.mode!r} (32-bit single channel)")
        return np.asarray(picture.convert("RGB"))


def niqe_file(path: str | Path) -> float:
    """NIQE score of an image file."""
    return niqe(load_image(path))


def run(args: argparse.Namespace) -> int:
    """Score each image, one ``PATH<TAB>SCORE`` line each; report bad files and keep going."""
    failures = 0
    for path in args.images:
        try:
            score = niqe_file(path)
        except (OSError, ValueError) as error:  # Pillow's UnidentifiedImageError is an OSError
            print(f"niqe: error: {path}: {error}", file=sys.stderr, flush=True)
            failures += 1
            continue
        print(f"{path}\t{score:.6f}", flush=True)
    if failures:
        print(f"niqe: {failures} of {len(args.images)} image(s) could not be scored", file=sys.stderr)
    return 1 if failures else 0


def add_parser(subparsers: Any) -> None:
    """Register ``niqe IMAGE [IMAGE ...]`` on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "niqe",
        help="MATLAB-compatible NIQE of image files (lower is better)",
        description="Print PATH<TAB>NIQE for each image (Y channel, 96x96 blocks, no border crop, "
        "MATLAB-compatible). Exits non-zero if any image could not be scored.",
    )
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files to score")
    parser.set_defaults(func=run)
