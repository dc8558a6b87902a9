"""Whether an int8 file may be the default on CPUs: its quality on val and its speed, against fp32.

`ship` (and `export --int8`) quantize the fp32 model, then measure it with the int8 benchmark's
own measurements (``training.int8_measure``: val PSNR / SSIM for both files, and time per call at photo sizes
in fresh processes, with ORT's default threads as the service uses them) on the machine that
ships, against that benchmark's limits. The verdict and figures go into the int8 file's
``quantization`` metadata; the service's ``FRLIE_PRECISION=auto`` runs the int8 file only where it
says ``passed``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from model import contract
from training.errors import TrainingError
from training.int8_measure import MAX_PSNR_LOSS_DB, MAX_SSIM_LOSS, TARGET_SPEEDUP, quality, speed
from training.onnx_metadata import read_metadata, update_metadata

log = logging.getLogger(__name__)

SPEED_SIZES = ((600, 400), (1920, 1080))  # width x height: a lol-pairs image and a 1080p photo
SPEED_REPEATS = 3
SPEED_BUDGET_S = 20.0
WHOLE_IMAGE_MP = 4.0  # both sizes run whole, as the service runs them at its default memory budget


def measure(fp32_path: Path, int8_path: Path, data_root: Path) -> dict[str, Any]:
    """Quality on ``data_root``/val and CPU speed of the int8 file against its fp32 model, and the verdict."""
    (low,) = quality(fp32_path, int8_path, data_root, ("low",))
    rows = speed(
        fp32_path,
        int8_path,
        SPEED_SIZES,
        threads=0,
        max_repeats=SPEED_REPEATS,
        budget_s=SPEED_BUDGET_S,
        window_mp=WHOLE_IMAGE_MP,
    )
    speeds = [
        {
            "size": row["size"],
            "fp32_s": row["fp32"].get("timing", {}).get("median_s"),
            "int8_s": row["int8"].get("timing", {}).get("median_s"),
            "speedup": row.get("speedup", 0.0),
        }
        for row in rows
    ]
    passed = (
        low["psnr_loss_db"] <= MAX_PSNR_LOSS_DB
        and low["ssim_loss"] <= MAX_SSIM_LOSS
        and all(row["speedup"] >= TARGET_SPEEDUP for row in speeds)
    )
    return {
        "val_pairs": low["pairs"],
        "fp32": {"psnr": low["fp32_psnr"], "ssim": low["fp32_ssim"]},
        "int8": {"psnr": low["int8_psnr"], "ssim": low["int8_ssim"]},
        "psnr_drop_db": low["psnr_loss_db"],
        "ssim_drop": low["ssim_loss"],
        "int8_vs_fp32_psnr_db": low["int8_vs_fp32_psnr_mean"],
        "speed": speeds,
        "limits": {"max_psnr_drop_db": MAX_PSNR_LOSS_DB, "max_ssim_drop": MAX_SSIM_LOSS, "min_speedup": TARGET_SPEEDUP},
        "passed": passed,
    }


def record_verdict(int8_path: Path, figures: dict[str, Any]) -> None:
    """Store the figures and ``quality_gate: passed|failed`` in the int8 file's quantization record."""
    record = json.loads(read_metadata(int8_path).get(contract.QUANTIZATION, "{}"))
    record["gate"] = figures
    record[contract.QUALITY_GATE] = contract.GATE_PASSED if figures.get("passed") else "failed"
    update_metadata(int8_path, {contract.QUANTIZATION: json.dumps(record)})


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
    figures = measure(fp32_path, int8_file, data_root)
    record_verdict(int8_file, figures)
    log.info("%s", describe(figures))
    return {**figures, "path": str(int8_file), "check": report.check}
