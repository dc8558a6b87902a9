"""One interface over the two model formats: a PyTorch checkpoint or an exported ONNX file.

Evaluation and tests call an ``Enhancer`` on uint8 RGB images and need not care which runtime is
behind it, so the same numbers can be computed for a training checkpoint and for the ONNX file that
will actually be served.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import load_weights
from model.network import enhance, pad_to_multiple
from training.data import to_tensor, to_uint8

ONNX_SUFFIX = ".onnx"
# What evaluation and the figures call: uint8 RGB (H x W x 3) -> uint8 RGB of the same shape.
Enhance = Callable[[np.ndarray], np.ndarray]


class Enhancer:
    """A callable uint8 RGB (H x W x 3) -> uint8 RGB of the same shape, with where it came from.

    ``kind`` is "checkpoint" or "onnx"; ``description`` is a human-readable line for reports
    (path, architecture or execution providers actually in use).
    """

    def __init__(self, run: Enhance, kind: str, description: str) -> None:
        self._run = run
        self.kind = kind
        self.description = description

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            shape = getattr(image, "shape", None)
            raise ValueError(f"expected an H x W x 3 uint8 RGB array, got {type(image).__name__} {shape}")
        enhanced = self._run(image)
        if enhanced.shape != image.shape:  # a broken export must not yield silently misaligned metrics
            raise RuntimeError(f"{self.kind} model returned {enhanced.shape} for input {image.shape}")
        return enhanced

    def __repr__(self) -> str:
        return f"Enhancer(kind={self.kind!r}, description={self.description!r})"


def model_enhancer(
    model: torch.nn.Module, device: str | torch.device = "cpu", description: str = "in-memory model"
) -> Enhancer:
    """Wrap a network already in memory (e.g. during training); the caller puts it in eval mode."""

    def run(image: np.ndarray) -> np.ndarray:
        batch = to_tensor(image).unsqueeze(0).to(device)
        return to_uint8(enhance(model, batch)[0])

    return Enhancer(run, "checkpoint", description)


def pad_image(image: np.ndarray) -> np.ndarray:
    """Pad H x W x C bottom/right exactly as ``model.pad_to_multiple`` does, so ONNX and PyTorch see
    the same pixels (multiples of SIZE_MULTIPLE, at least MIN_SIDE per side)."""
    batch = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float()
    return pad_to_multiple(batch)[0].permute(1, 2, 0).numpy().astype(image.dtype)


_ONNX_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def _load_onnx(path: Path, device: str) -> Enhancer:
    import onnxruntime as ort  # imported lazily: checkpoint-only users need not load it

    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        providers.insert(0, "CUDAExecutionProvider")
    try:
        session = ort.InferenceSession(str(path), providers=providers)
    except Exception as exc:  # ORT raises its own exception types for unparsable/invalid graphs
        raise ValueError(f"{path} is not a loadable ONNX model: {exc}") from exc
    (model_input,) = session.get_inputs()
    output_name = session.get_outputs()[0].name
    input_dtype = _ONNX_FLOAT_TYPES.get(model_input.type)
    if input_dtype is None:
        raise ValueError(f"{path}: input {model_input.name!r} has type {model_input.type}, expected a float tensor")

    def run(image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        padded = pad_image(image).astype(np.float32) / 255.0
        batch = np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=input_dtype)
        (enhanced,) = session.run([output_name], {model_input.name: batch})
        enhanced = enhanced[0, :, :height, :width].astype(np.float32).transpose(1, 2, 0)
        return np.round(np.clip(enhanced, 0.0, 1.0) * 255.0).astype(np.uint8)

    # Report what really runs: a CUDA request silently falls back to CPU where no GPU is usable.
    description = f"onnx {path} (providers: {', '.join(session.get_providers())})"
    return Enhancer(run, "onnx", description)


def _load_checkpoint(path: Path, device: str) -> Enhancer:
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but this PyTorch build sees no CUDA device")
    try:
        model, payload = load_weights(path, map_location=device)
    except ValueError:
        raise
    except Exception as exc:  # unpickling errors, truncated files, mismatched state dicts
        raise ValueError(f"{path} is not a loadable FRLIE checkpoint: {exc}") from exc
    model.to(device)
    config = model.config
    details = f"width={config.width}, fr_blocks={config.fr_blocks}, upsample={config.upsample}"
    if "step" in payload:
        details += f", step {payload['step']}"
    return model_enhancer(model, device, f"checkpoint {path} ({details})")


def load_enhancer(path: str | Path, device: str = "cpu") -> Enhancer:
    """Open a ``.onnx`` file with ONNX Runtime, anything else as an FRLIE checkpoint.

    ``device`` is "cpu" or "cuda". Raises ValueError for a missing, unreadable or invalid file so
    that CLIs can print one clear line instead of a traceback.
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"model file {path} does not exist")
    if path.suffix.lower() == ONNX_SUFFIX:
        return _load_onnx(path, device)
    return _load_checkpoint(path, device)
