"""Shared helpers for the service tests: a tiny exported model, a real server process, test images."""

from __future__ import annotations

import io
import math
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL_VERSION = "test-tiny"
STARTUP_TIMEOUT_S = 60.0
# uvicorn finishes its graceful shutdown, then re-raises the SIGTERM it caught.
GRACEFUL_EXIT_CODES = (0, -signal.SIGTERM)
_exported: dict[str, Path] = {}


def export_tiny_model(directory: Path) -> Path:
    """Export the width-8, 1-block network (receptive radius 51) once per test process.

    Weights are random but re-drawn with a gain that keeps activations alive, so the output
    depends on the input (including pixels ~50 px away) instead of being a flat grey.
    """
    if "tiny" not in _exported:
        import torch
        from torch import nn

        from model import FRLIE, FRLIEConfig
        from training.export import export_onnx

        torch.manual_seed(0)
        network = FRLIE(FRLIEConfig(width=8, fr_blocks=1)).eval()
        with torch.no_grad():
            for module in network.modules():
                if isinstance(module, nn.Conv2d):
                    module.weight.normal_(0.0, 1.2 / math.sqrt(module.weight[0].numel()))
                    module.bias.uniform_(-0.1, 0.1)
        path = directory / "tiny.onnx"
        export_onnx(network, path, metadata={"model_version": TINY_MODEL_VERSION})
        _exported["tiny"] = path
    return _exported["tiny"]


def reference_enhance(model_path: Path, rgb: np.ndarray) -> np.ndarray:
    """Independent whole-image reference: pad bottom/right (reflect) to a multiple of 4 and >= 20, run, crop, round."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    height, width = rgb.shape[:2]
    pad_h = max(20, -(-height // 4) * 4) - height
    pad_w = max(20, -(-width // 4) * 4) - width
    padded = np.pad(rgb.astype(np.float32) / 255.0, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect")
    (output,) = session.run(["enhanced"], {"image": padded.transpose(2, 0, 1)[None]})
    return np.rint(np.clip(output[0, :, :height, :width].transpose(1, 2, 0), 0, 1) * 255).astype(np.uint8)


# --- a real server ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """`python -m service serve` on a free loopback port with the given FRLIE_* settings."""

    def __init__(self, model_path: Path, log_path: Path, **settings: object) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FRLIE_")}
        env.update({f"FRLIE_{k.upper()}": str(v) for k, v in settings.items()})
        env.update(FRLIE_MODEL_PATH=str(model_path), FRLIE_INTRA_OP_THREADS=env.get("FRLIE_INTRA_OP_THREADS", "2"))
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--port", str(self.port)],
            cwd=REPO_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=self.url, timeout=60.0)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_path.read_text()}")
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {STARTUP_TIMEOUT_S} s:\n{self.log_path.read_text()}")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (graceful), then SIGKILL if it hangs; returns the exit code."""
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)
        self._log.close()
        return self.process.returncode

    def metric(self, name: str, **labels: str) -> float:
        """One sample from /metrics (0 if it has not been observed yet)."""
        return read_metric(self.client.get("/metrics").text, name, **labels)

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


def read_metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return 0.0


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
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(raw_rows))
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
