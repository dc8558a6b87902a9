"""The ONNX file contract between `training export` (which writes it) and the service (which runs it).

Torch-free on purpose: the service imports it, and the serving install has no torch.
The graph takes ``image``, float32 N x 3 x H x W RGB in [0, 1] with H and W multiples of
``size_multiple``, and returns ``enhanced`` of the same shape in [0, 1]. The metadata keys below
carry what the service needs to tile exactly and to report what it runs.
"""

from __future__ import annotations

from pathlib import Path

INPUT_NAME = "image"
OUTPUT_NAME = "enhanced"

# Metadata properties of an exported file.
MODEL_VERSION = "model_version"
ARCHITECTURE = "architecture"
SIZE_MULTIPLE = "size_multiple"
RECEPTIVE_RADIUS = "receptive_radius"
INPUT_RANGE = "input_range"
PRECISION = "precision"
UNVERSIONED = "unversioned"

# The bundled model: what `ship` writes and what the service serves by default.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
ONNX_NAME = "frlie.onnx"
WEIGHTS_NAME = "frlie.pt"
TRAINING_RECORD_NAME = "training-config.json"
BUNDLED_MODEL_PATH = WEIGHTS_DIR / ONNX_NAME

# Quantized files sit beside their fp32 model as NAME-int8.onnx; their QUANTIZATION property (JSON)
# records the method and whether the int8 file met the quality gate against its fp32 model.
QUANTIZATION = "quantization"
INT8_SUFFIX = "-int8"
FP16_SUFFIX = "-fp16"  # for GPUs; its QUANTIZATION record carries its own quality gate
QUALITY_GATE = "quality_gate"
GATE_PASSED = "passed"

# The enhancement policy's calibrated constants (JSON, service.policy.PolicyConstants), written by
# `python -m training calibrate` into the model file and its quantized siblings.
POLICY = "policy"


def int8_path(model_path: Path) -> Path:
    """Where the int8 version of an fp32 model file lives."""
    return model_path.with_name(f"{model_path.stem}{INT8_SUFFIX}{model_path.suffix}")


def fp16_path(model_path: Path) -> Path:
    """Where the fp16 version of an fp32 model file lives."""
    return model_path.with_name(f"{model_path.stem}{FP16_SUFFIX}{model_path.suffix}")
