"""The release-time quality gate of the reduced-precision files: int8 (for CPUs) and fp16 (for GPUs).

`ship` (and `export --int8 / --fp16`) writes each sibling of the fp32 model, then measures it
against fp32 on val with the int8 benchmark's own quality measurement (``training.int8_measure``:
val PSNR / SSIM of both files through ONNX Runtime's CPU provider) against fixed limits: at most
0.1 dB PSNR and 0.005 SSIM lost on average, and at most 0.1 dB on any one image, for PNG uploads and
again for the same photos uploaded as JPEG q90. The verdict and
figures go into the file's ``quantization`` record; the service never runs a file that failed,
unless asked for it by name.

Speed is not part of the gate: whether a file is faster depends on the host (the same int8 file is
1.97x fp32 on a Xeon with VNNI and AMX, 0.99x on an AVX2 machine without), so the service races the
files that passed at start-up (``service.precision``). The fp16 file's quality is measured on the
CPU provider, which computes fp16 nodes in float16 as CUDA does (CUDA's accumulation order differs,
so GPU answers differ from the measured ones in the last bits, not in their mean quality).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import onnx

from model import contract
from training.errors import TrainingError
from training.evaluate import EXPOSURE_JPEG_QUALITY
from training.fp16 import to_fp16
from training.int8_measure import MAX_PSNR_LOSS_DB, MAX_SSIM_LOSS, photo_drops, quality
from training.onnx_metadata import read_metadata, update_metadata

log = logging.getLogger(__name__)

FP16_METHOD = "onnxconverter-common float16, inputs and outputs kept float32 (keep_io_types)"


# The service promises that its answer never scores below the plain fp32 network's minus 0.2 dB, on
# any photo (tests/test_do_no_harm.py); a reduced-precision file may spend at most half of that on
# any one val image. A mean can hide one photo that an int8 range clips (val 302: -0.29 dB).
MAX_IMAGE_PSNR_LOSS_DB = 0.1


def _verdict(low: dict[str, Any], precision: str) -> dict[str, Any]:
    """One upload format's figures against the limits."""
    drops = photo_drops(low, precision)
    worst = max(drops, key=lambda name: drops[name])
    passed = (
        low["psnr_loss_db"] <= MAX_PSNR_LOSS_DB
        and low["ssim_loss"] <= MAX_SSIM_LOSS
        and drops[worst] <= MAX_IMAGE_PSNR_LOSS_DB
    )
    return {
        "upload": low["upload"],
        "fp32": {"psnr": low["fp32_psnr"], "ssim": low["fp32_ssim"]},
        precision: {"psnr": low[f"{precision}_psnr"], "ssim": low[f"{precision}_ssim"]},
        "psnr_drop_db": low["psnr_loss_db"],
        "ssim_drop": low["ssim_loss"],
        "vs_fp32_psnr_db": low[f"{precision}_vs_fp32_psnr_mean"],
        "worst_image": {"name": worst, "psnr_drop_db": drops[worst]},
        "passed": passed,
    }


def measure(fp32_path: Path, sibling: Path, data_root: Path, precision: str) -> dict[str, Any]:
    """Quality on ``data_root``/val of ``sibling`` against its fp32 model, sent as PNG and as JPEG
    q90 (what phones and browsers upload), and the verdict: both must pass.

    The PNG figures are the record's top level; the JPEG ones are under ``jpeg``."""
    (png,) = quality(fp32_path, sibling, data_root, ("low",), label=precision)
    (jpeg,) = quality(fp32_path, sibling, data_root, ("low",), label=precision, jpeg_quality=EXPOSURE_JPEG_QUALITY)
    figures, jpeg_figures = _verdict(png, precision), _verdict(jpeg, precision)
    return {
        "precision": precision,
        "val_pairs": png["pairs"],
        **figures,
        "jpeg": jpeg_figures,
        "limits": {
            "max_psnr_drop_db": MAX_PSNR_LOSS_DB,
            "max_ssim_drop": MAX_SSIM_LOSS,
            "max_image_psnr_drop_db": MAX_IMAGE_PSNR_LOSS_DB,
        },
        "passed": figures["passed"] and jpeg_figures["passed"],
    }


def record_verdict(path: Path, figures: dict[str, Any]) -> None:
    """Store the figures and ``quality_gate: passed|failed`` in the file's quantization record."""
    record = json.loads(read_metadata(path).get(contract.QUANTIZATION, "{}"))
    record["gate"] = figures
    record[contract.QUALITY_GATE] = contract.GATE_PASSED if figures.get("passed") else "failed"
    update_metadata(path, {contract.QUANTIZATION: json.dumps(record)})


def describe(figures: dict[str, Any]) -> str:
    """One paragraph for the terminal."""
    precision = figures.get("precision", "int8")
    verdict = "passed: `FRLIE_PRECISION=auto` races it" if figures["passed"] else "failed: never run by `auto`"
    parts = [
        f"{upload['upload']}: PSNR {upload[precision]['psnr']:.3f} vs fp32 {upload['fp32']['psnr']:.3f} dB "
        f"(drop {upload['psnr_drop_db']:.3f}), SSIM {upload[precision]['ssim']:.4f} vs {upload['fp32']['ssim']:.4f} "
        f"(drop {upload['ssim_drop']:.4f}), worst image {upload['worst_image']['name']} "
        f"-{upload['worst_image']['psnr_drop_db']:.3f} dB"
        for upload in (figures, figures["jpeg"])
    ]
    return f"{precision} on val ({figures['val_pairs']} pairs): " + "; ".join(parts) + f"; gate {verdict}"


def build_and_gate(fp32_path: Path, data_root: Path, out_path: Path | None = None) -> dict[str, Any]:
    """Quantize ``fp32_path`` (calibrated on ``data_root``/train), measure it against fp32 on
    ``data_root``/val, and record the verdict in the int8 file.

    The file goes to ``out_path`` (default: the sibling NAME-int8.onnx the service looks for).
    Returns the gate's figures plus ``path`` and the quantization report's ``check``.
    """
    from training.quantize import QuantizationError, quantize_int8

    int8_file = out_path or contract.int8_path(fp32_path)
    try:
        report = quantize_int8(fp32_path, int8_file, calibration_root=data_root / "train")
    except QuantizationError as error:
        raise TrainingError(f"cannot make the int8 file: {error}") from error
    figures = measure(fp32_path, int8_file, data_root, "int8")
    record_verdict(int8_file, figures)
    log.info("%s", describe(figures))
    return {**figures, "path": str(int8_file), "check": report.check}


def build_fp16_and_gate(fp32_path: Path, data_root: Path, out_path: Path | None = None) -> dict[str, Any]:
    """Convert ``fp32_path`` to fp16 (NAME-fp16.onnx beside it unless ``out_path``), measure it
    against fp32 on ``data_root``/val, and record the verdict in the fp16 file."""
    fp16_file = out_path or contract.fp16_path(fp32_path)
    converted = to_fp16(onnx.load(str(fp32_path)))
    record = {"tool": FP16_METHOD, "weights": "float16", "activations": "float16"}
    onnx.helper.set_model_props(
        converted,
        {**{p.key: p.value for p in converted.metadata_props}, contract.QUANTIZATION: json.dumps(record)},
    )
    onnx.save(converted, str(fp16_file))
    figures = measure(fp32_path, fp16_file, data_root, "fp16")
    record_verdict(fp16_file, figures)
    log.info("%s", describe(figures))
    return {**figures, "path": str(fp16_file)}
