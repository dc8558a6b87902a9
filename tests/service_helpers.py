"""Shared helpers for the service tests: a tiny exported model, a real server process, test images."""

from __future__ import annotations

import io
import math
import signal
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort
from PIL import Image

import bench.server
from bench.service_config import setting_env
from service.ensemble import passes_for
from service.policy import Policy, PolicyConstants
from service.settings import Settings

if TYPE_CHECKING:
    from model.network import FRLIE

TINY_MODEL_VERSION = "test-tiny"
STARTUP_TIMEOUT_S = 60.0
# uvicorn finishes its graceful shutdown, then re-raises the SIGTERM it caught.
GRACEFUL_EXIT_CODES = (0, -signal.SIGTERM)
_exported: dict[str, Path] = {}


def tiny_network() -> FRLIE:
    """The width-8, 1-block network (receptive radius 51) with random weights (seed 0), re-drawn with
    a gain that keeps activations alive, so the output depends on the input (including pixels ~50 px
    away) instead of being a flat grey. torch is imported here: service tests need none."""
    import torch
    from torch import nn

    from model.network import FRLIE, FRLIEConfig

    torch.manual_seed(0)
    network = FRLIE(FRLIEConfig(width=8, fr_blocks=1)).eval()
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.normal_(0.0, 1.2 / math.sqrt(module.weight[0].numel()))
                module.bias.uniform_(-0.1, 0.1)
    return network


def export_tiny_model(directory: Path) -> Path:
    """Export ``tiny_network`` once per test process."""
    if "tiny" not in _exported:
        from training.export import export_onnx

        network = tiny_network()
        path = directory / "tiny.onnx"
        export_onnx(network, path, metadata={"model_version": TINY_MODEL_VERSION})
        _exported["tiny"] = path
    return _exported["tiny"]


def reference_enhance(
    model_path: Path, rgb: np.ndarray, gain: float | None = None, passes: int | None = None
) -> np.ndarray:
    """Independent whole-image reference: pad bottom/right (reflect) to a multiple of 4 and >= 20, run, crop, round.

    ``gain`` is the exposure normalisation applied to the input first; None: what the policy stored
    in the model file gives this image as a lossless upload (test_service_policy checks that choice).
    ``passes`` is the self-ensemble: the mean over that many of the orientations in
    ``REFERENCE_ORIENTATIONS``, each run whole and turned back; None: what the service's default
    settings give an image of this size on the CPU.
    """
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    if gain is None:
        gain = model_policy(session).plan(rgb, lossy=False, grayscale=False, strength=1.0, passes=1).gain
    if passes is None:
        passes = default_ensemble_passes(*rgb.shape[:2])
    scaled = rgb.astype(np.float32) / np.float32(255.0)
    if gain != 1.0:  # the same two float32 steps as service.tiling.extract_tile, so the pixels are identical
        scaled *= np.float32(gain)
    answers = [
        np.ascontiguousarray(inverse(_run_whole(session, forward(scaled))))
        for forward, inverse in REFERENCE_ORIENTATIONS[:passes]
    ]
    total = answers[0].copy()
    for answer in answers[1:]:
        total += answer  # in pass order, as the service sums
    if passes > 1:
        total /= np.float32(passes)
        # The mean keeps the upright pass's tone: per-channel means scaled back to its own.
        upright, averaged = (image.reshape(-1, 3).mean(axis=0, dtype=np.float64) for image in (answers[0], total))
        total *= (upright / averaged).astype(np.float32)
    return np.rint(np.clip(total, 0, 1) * 255).astype(np.uint8)


def model_policy(session: ort.InferenceSession) -> Policy:
    """The policy a model file carries (the plain network where it carries none)."""
    return Policy(PolicyConstants.from_metadata(session.get_modelmeta().custom_metadata_map))


def _run_whole(session: ort.InferenceSession, image: np.ndarray) -> np.ndarray:
    """The model's float answer for an H x W x 3 float32 image, padded as the service pads and cropped."""
    height, width = image.shape[:2]
    pad_h = max(20, -(-height // 4) * 4) - height
    pad_w = max(20, -(-width // 4) * 4) - width
    padded = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect")
    (output,) = session.run(["enhanced"], {"image": np.ascontiguousarray(padded.transpose(2, 0, 1)[None])})
    result: np.ndarray = output[0, :, :height, :width].transpose(1, 2, 0)
    return result


def _turned(flip_rows: bool, flip_cols: bool, transpose: bool) -> tuple[Callable[..., np.ndarray], ...]:
    """(forward, inverse) for one orientation, written independently of service.ensemble."""

    def forward(image: np.ndarray) -> np.ndarray:
        image = np.flip(image, axis=0) if flip_rows else image
        image = np.flip(image, axis=1) if flip_cols else image
        return np.swapaxes(image, 0, 1) if transpose else image

    def inverse(image: np.ndarray) -> np.ndarray:
        image = np.swapaxes(image, 0, 1) if transpose else image
        image = np.flip(image, axis=1) if flip_cols else image
        return np.flip(image, axis=0) if flip_rows else image

    return forward, inverse


# The service's order (identity, left-right, up-down, both; then the same transposed): the float sum
# of the answers depends on it in its last bit.
REFERENCE_ORIENTATIONS = [
    _turned(rows, cols, transpose)
    for transpose in (False, True)
    for rows, cols in ((False, False), (False, True), (True, False), (True, True))
]


def default_ensemble_passes(height: int, width: int) -> int:
    """Self-ensemble passes the service's default settings give an image of this size on the CPU."""
    settings = Settings()
    return passes_for(height * width, settings.self_ensemble, settings.self_ensemble_budget(on_gpu=False))


# --- a real server ----------------------------------------------------------------------------


class ServerProcess(bench.server.ServerProcess):
    """The benchmark's server process, configured from keyword settings (``tile_size=64`` becomes
    ``FRLIE_TILE_SIZE=64``), with 2 ONNX Runtime threads unless told otherwise. Call ``start()``."""

    def __init__(self, model_path: Path, log_path: Path, **settings: object) -> None:
        env = setting_env(**({"intra_op_threads": 2} | settings), model_path=model_path)
        super().__init__(env, log_path, startup_timeout_s=STARTUP_TIMEOUT_S, client_timeout_s=60.0)

    def wait_for_metric(
        self, name: str, expected: float | Callable[[float], bool], timeout: float = 10.0, **labels: str
    ) -> None:
        """Poll /metrics until the sample equals ``expected`` (or satisfies it, if callable)."""
        accept = expected if callable(expected) else (lambda value: value == expected)
        deadline = time.monotonic() + timeout
        while not accept(self.metric(name, **labels)):
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}{labels} stayed at {self.metric(name, **labels)}, expected {expected}")
            time.sleep(0.02)


# --- test images ------------------------------------------------------------------------------


def dark_image(height: int, width: int, seed: int = 0, noise: float = 4.0) -> np.ndarray:
    """A dim RGB image: smooth waves plus noise (noise=0 gives a tiny PNG for large test uploads)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 30 + 20 * np.sin(xx / (7 + seed)) * np.cos(yy / 11)
    channels = [base + 10 * c + rng.normal(0, noise, (height, width)) for c in range(3)]
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


def encode_image(image: Image.Image | np.ndarray, fmt: str, **options: object) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def decode_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_from_header(width: int, height: int, bit_depth: int, colour_type: int, raw_rows: bytes) -> bytes:
    """A PNG written by hand: lets tests claim any size (bombs) or use 16-bit samples Pillow cannot write."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw_rows))
        + _png_chunk(b"IEND", b"")
    )


def png16(samples: np.ndarray) -> bytes:
    """16-bit PNG from H x W (gray) or H x W x 3 / 4 uint16 samples."""
    channels = 1 if samples.ndim == 2 else samples.shape[2]
    colour_type = {1: 0, 3: 2, 4: 6}[channels]
    rows = samples.reshape(samples.shape[0], -1).astype(">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    return png_from_header(samples.shape[1], samples.shape[0], 16, colour_type, raw)


def decompression_bomb_png() -> bytes:
    """Claims 100000 x 100000 RGB pixels (30 GB decoded) in a few dozen bytes."""
    return png_from_header(100_000, 100_000, 8, 2, b"\x00" * 64)


def exif_rotated_jpeg(rgb: np.ndarray, orientation: int = 6) -> bytes:
    """JPEG whose pixels are stored sideways, with the EXIF orientation that makes them upright."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode_image(rgb, "JPEG", quality=95, exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [Image.new("P", (32, 24), color) for color in (1, 2, 3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def srgb_icc_profile() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
