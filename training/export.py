"""ONNX export of the encoder -> FRNet -> decoder chain, with a self-check against PyTorch.

The file follows ``model.contract`` (names, metadata keys), which the service reads.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from model import contract
from model.checkpoint import load_weights
from model.network import FRLIE, SIZE_MULTIPLE
from training.errors import TrainingError
from training.fp16 import to_fp16

log = logging.getLogger(__name__)

OPSET = 18
# Shapes the self-check runs on (N, H, W): several sizes and a batch, all multiples of 4.
CHECK_SHAPES = ((1, 64, 64), (2, 48, 80), (1, 100, 132))
FP32_TOLERANCE = 1e-4


def _metadata(model: FRLIE, extra: dict[str, Any] | None) -> dict[str, str]:
    props = {
        contract.MODEL_VERSION: contract.UNVERSIONED,
        contract.ARCHITECTURE: json.dumps(model.config.to_dict()),
        contract.SIZE_MULTIPLE: str(SIZE_MULTIPLE),
        contract.RECEPTIVE_RADIUS: str(model.config.receptive_radius),
        contract.INPUT_RANGE: "RGB float32 in [0, 1], N x 3 x H x W",
    }
    for key, value in (extra or {}).items():
        props[key] = value if isinstance(value, str) else json.dumps(value)
    return props


def export_onnx(
    model: FRLIE,
    path: str | Path,
    *,
    fp16: bool = False,
    metadata: dict[str, Any] | None = None,
    verify: bool = True,
) -> dict[str, Any]:
    """Write one self-contained ONNX file and, by default, check it against PyTorch.

    Returns the check's report: ``max_abs_diff`` per shape (fp32), or ``psnr_drop_db`` (fp16,
    where bit-parity is not expected so the accuracy cost is reported instead).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    example = torch.rand(1, 3, 64, 64)
    # H and W are declared as 4 * k so the exporter knows the multiple-of-4 contract.
    dims = {0: torch.export.Dim("batch"), 2: 4 * torch.export.Dim("h4"), 3: 4 * torch.export.Dim("w4")}
    program = torch.onnx.export(
        model,
        (example,),
        input_names=[contract.INPUT_NAME],
        output_names=[contract.OUTPUT_NAME],
        dynamic_shapes={"image": dims},
        opset_version=OPSET,
        external_data=False,
        dynamo=True,
        verbose=False,
    )
    if program is None:  # only the legacy exporter (dynamo=False) returns nothing
        raise RuntimeError("torch.onnx.export returned no ONNX program")
    proto = program.model_proto
    props = _metadata(model, metadata)
    props[contract.PRECISION] = "fp32"
    onnx.helper.set_model_props(proto, props)
    if fp16:
        proto = to_fp16(proto)
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    return verify_export(model, path, fp16=fp16) if verify else {}


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(1.0 / mse))


def verify_export(model: FRLIE, path: str | Path, *, fp16: bool = False) -> dict[str, Any]:
    """Run ONNX Runtime and PyTorch on random inputs of several shapes and compare."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    report: dict[str, Any] = {"shapes": []}
    for n, h, w in CHECK_SHAPES:
        x = torch.rand(n, 3, h, w, generator=generator)
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = session.run([contract.OUTPUT_NAME], {contract.INPUT_NAME: x.numpy()})
        if got.shape != expected.shape:
            raise RuntimeError(f"ONNX output shape {got.shape} != PyTorch {expected.shape}")
        entry: dict[str, Any] = {"shape": [n, 3, h, w], "max_abs_diff": float(np.abs(got - expected).max())}
        if fp16:
            entry["psnr_vs_fp32_db"] = _psnr(got, expected)
        elif entry["max_abs_diff"] > FP32_TOLERANCE:
            raise RuntimeError(
                f"ONNX/PyTorch mismatch {entry['max_abs_diff']:.2e} > {FP32_TOLERANCE} at {entry['shape']}"
            )
        report["shapes"].append(entry)
    report["max_abs_diff"] = max(e["max_abs_diff"] for e in report["shapes"])
    if fp16:
        report["min_psnr_vs_fp32_db"] = min(e["psnr_vs_fp32_db"] for e in report["shapes"])
    return report


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export a checkpoint to one ONNX file and verify it")
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint (.pt) written by training")
    parser.add_argument("--out", required=True, type=Path, help="output .onnx path")
    parser.add_argument("--fp16", action="store_true", help="convert weights to fp16 (inputs/outputs stay fp32)")
    parser.add_argument("--model-version", default=None, help="version string stored in the metadata")
    parser.add_argument("--training-data", default="lol-pairs/train (247 pairs)", help="stored in the metadata")
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also write the siblings beside --out: NAME-int8.onnx (ONNX Runtime static quantization "
        "calibrated on --data's train/) and NAME-fp16.onnx, each with its quality gate against fp32 on val/",
    )
    parser.add_argument("--data", type=Path, help="lol-pairs root for --int8 (train/ and val/)")
    parser.set_defaults(func=run)


def checkpoint_metadata(payload: dict[str, Any], *, model_version: str | None, training_data: str) -> dict[str, Any]:
    """ONNX metadata for a training checkpoint: version (default: stage and step), data, val metrics."""
    metadata: dict[str, Any] = {"training_data": training_data}
    metadata[contract.MODEL_VERSION] = model_version or f"{payload.get('stage', 'model')}-step{payload.get('step', 0)}"
    if "metrics" in payload:
        metadata["validation_metrics"] = payload["metrics"]
    return metadata


def run(args: argparse.Namespace) -> int:
    if args.int8 and (args.data is None or args.fp16):
        raise TrainingError("--int8 needs --data (calibration on train/, gate on val/) and an fp32 export (no --fp16)")
    model, payload = load_weights(args.checkpoint)
    metadata = checkpoint_metadata(payload, model_version=args.model_version, training_data=args.training_data)
    report = export_onnx(model, args.out, fp16=args.fp16, metadata=metadata)
    size_mb = args.out.stat().st_size / 1e6
    print(f"wrote {args.out} ({size_mb:.1f} MB, {'fp16' if args.fp16 else 'fp32'})")
    for entry in report["shapes"]:
        line = f"  check {entry['shape']}: max |onnx - torch| = {entry['max_abs_diff']:.2e}"
        if args.fp16:
            line += f", PSNR vs fp32 = {entry['psnr_vs_fp32_db']:.2f} dB"
        print(line)
    if args.int8:
        from training.precision_gate import build_and_gate, build_fp16_and_gate, describe

        for figures in (build_and_gate(args.out, args.data), build_fp16_and_gate(args.out, args.data)):
            print(f"wrote {figures['path']}: {describe(figures)}")
    return 0
