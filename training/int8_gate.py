"""Whether an int8 file may be the default on CPUs: its quality on val and its speed, against fp32.

`ship` (and `export --int8`) quantize the fp32 model, then measure here, on the machine that ships:
PSNR / SSIM on the val pairs for both files (the drop must stay within ``MAX_PSNR_DROP_DB`` and
``MAX_SSIM_DROP``) and time per call at photo sizes with the service's ORT options (the speed-up
must reach ``MIN_SPEEDUP``). The verdict and figures go into the int8 file's ``quantization``
metadata; the service's ``FRLIE_PRECISION=auto`` runs the int8 file only where it says ``passed``.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from model import contract
from service.engine import session_options
from service.settings import Settings
from training.data import list_pairs
from training.errors import TrainingError
from training.evaluate import evaluate_model
from training.inference import load_enhancer

log = logging.getLogger(__name__)

MAX_PSNR_DROP_DB = 0.1
MAX_SSIM_DROP = 0.005
MIN_SPEEDUP = 1.8
SPEED_SIZES = ((400, 600), (1080, 1920))  # height x width: a lol-pairs image and a 1080p photo
SPEED_REPEATS = 3


def quality_on_val(model_path: Path, val_root: Path) -> dict[str, float]:
    """Mean PSNR / SSIM of a model file on the val pairs (raw model output, full strength)."""
    result = evaluate_model(load_enhancer(model_path), list_pairs(val_root), baselines=None, with_niqe=False)
    return {"psnr": float(result["mean"]["psnr"]), "ssim": float(result["mean"]["ssim"])}


def seconds_per_call(model_path: Path, height: int, width: int, repeats: int = SPEED_REPEATS) -> float:
    """Median wall time of one whole-image call, with the ORT options the service uses on the CPU."""
    settings = Settings(model_path=model_path, providers=["CPUExecutionProvider"])
    session = ort.InferenceSession(str(model_path), session_options(settings), providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(0).random((1, 3, height, width), dtype=np.float32) * 0.3
    session.run([contract.OUTPUT_NAME], {contract.INPUT_NAME: batch})  # first call: one-off set-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run([contract.OUTPUT_NAME], {contract.INPUT_NAME: batch})
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(
    fp32_path: Path, int8_path: Path, val_root: Path, sizes: Sequence[tuple[int, int]] = SPEED_SIZES
) -> dict[str, Any]:
    """Quality and speed of the int8 file against its fp32 model, and the verdict."""
    fp32_quality, int8_quality = quality_on_val(fp32_path, val_root), quality_on_val(int8_path, val_root)
    speed: list[dict[str, Any]] = []
    for height, width in sizes:
        fp32_s, int8_s = seconds_per_call(fp32_path, height, width), seconds_per_call(int8_path, height, width)
        speed.append({"size": f"{width}x{height}", "fp32_s": fp32_s, "int8_s": int8_s, "speedup": fp32_s / int8_s})
    psnr_drop = fp32_quality["psnr"] - int8_quality["psnr"]
    ssim_drop = fp32_quality["ssim"] - int8_quality["ssim"]
    passed = (
        psnr_drop <= MAX_PSNR_DROP_DB
        and ssim_drop <= MAX_SSIM_DROP
        and all(row["speedup"] >= MIN_SPEEDUP for row in speed)
    )
    return {
        "val_pairs": len(list_pairs(val_root)),
        "fp32": fp32_quality,
        "int8": int8_quality,
        "psnr_drop_db": psnr_drop,
        "ssim_drop": ssim_drop,
        "speed": speed,
        "limits": {"max_psnr_drop_db": MAX_PSNR_DROP_DB, "max_ssim_drop": MAX_SSIM_DROP, "min_speedup": MIN_SPEEDUP},
        "passed": passed,
    }


def record_verdict(int8_path: Path, figures: dict[str, Any]) -> None:
    """Store the figures and ``quality_gate: passed|failed`` in the int8 file's quantization record."""
    proto = onnx.load(str(int8_path))
    props = {p.key: p.value for p in proto.metadata_props}
    record = json.loads(props.get(contract.QUANTIZATION, "{}"))
    record["gate"] = figures
    record[contract.QUALITY_GATE] = contract.GATE_PASSED if figures.get("passed") else "failed"
    props[contract.QUANTIZATION] = json.dumps(record)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    onnx.save_model(proto, str(int8_path), save_as_external_data=False)


def describe(figures: dict[str, Any]) -> str:
    """One paragraph for the terminal."""
    speed = ", ".join(f"{row['size']} {row['speedup']:.2f}x" for row in figures["speed"])
    verdict = "passed: the default CPU deployment runs it" if figures["passed"] else "failed: CPUs keep fp32"
    return (
        f"int8 on val ({figures['val_pairs']} pairs): PSNR {figures['int8']['psnr']:.3f} vs fp32 "
        f"{figures['fp32']['psnr']:.3f} dB (drop {figures['psnr_drop_db']:.3f}), SSIM {figures['int8']['ssim']:.4f} "
        f"vs {figures['fp32']['ssim']:.4f} (drop {figures['ssim_drop']:.4f}); speed-up {speed}; gate {verdict}"
    )


def build_and_gate(fp32_path: Path, data_root: Path, out_path: Path | None = None) -> dict[str, Any]:
    """Quantize ``fp32_path`` (calibrated on ``data_root``/train), measure it against fp32 on
    ``data_root``/val and on this machine's CPU, and record the verdict in the int8 file.

    The file goes to ``out_path`` (default: the sibling NAME-int8.onnx the service looks for).
    Returns the gate's figures plus ``path`` and the quantization report's ``check``.
    """
    from training.quantize import QuantizationError, quantize_int8

    int8_file = out_path or contract.int8_path(fp32_path)
    try:
        report = quantize_int8(fp32_path, int8_file, calibration_root=data_root / "train")
    except QuantizationError as error:
        raise TrainingError(f"cannot make the int8 file: {error}") from error
    figures = measure(fp32_path, int8_file, data_root / "val")
    record_verdict(int8_file, figures)
    log.info("%s", describe(figures))
    return {**figures, "path": str(int8_file), "check": report.check}
