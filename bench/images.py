"""Benchmark inputs: image sizes and synthetic dim photos, deterministic so runs are comparable.

Speed does not depend on pixel values, except for the codecs: the synthetic image has smooth
structure plus sensor-like noise, so JPEG sizes and decode/encode times resemble real photos.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

Size = tuple[int, int]  # width, height, the way people write image sizes
JPEG_QUALITY = 90


def parse_size(text: str) -> Size:
    """'600x400' -> (600, 400)."""
    width, sep, height = text.strip().lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or int(width) < 1 or int(height) < 1:
        raise ValueError(f"expected WIDTHxHEIGHT, got {text!r}")
    return int(width), int(height)


def parse_sizes(text: str) -> tuple[Size, ...]:
    return tuple(parse_size(part) for part in text.split(",") if part.strip())


def label(size: Size) -> str:
    return f"{size[0]}x{size[1]}"


def megapixels(size: Size) -> float:
    return size[0] * size[1] / 1e6


def model_input(size: Size, multiple: int, batch: int = 1, seed: int = 0) -> np.ndarray:
    """N x 3 x H x W float32 in [0, 1], H and W rounded up to the network's size multiple."""
    width, height = (-(-side // multiple) * multiple for side in size)
    return np.random.default_rng(seed).random((batch, 3, height, width), dtype=np.float32)


def dark_photo(size: Size, seed: int = 0) -> np.ndarray:
    """H x W x 3 uint8: a dim scene (smooth gradients and waves) with noise, like a low-light shot."""
    width, height = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    scene = 25 + 15 * np.sin(xx / 37.0) * np.cos(yy / 23.0) + 10 * (xx / width)
    noise = rng.normal(0.0, 3.0, (height, width, 3)).astype(np.float32)
    tint = np.array([1.0, 0.9, 1.2], dtype=np.float32)
    return np.clip(scene[..., None] * tint + noise, 0, 255).astype(np.uint8)


def jpeg(pixels: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
