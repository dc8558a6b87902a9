"""`python -m bench.gpu_check`: the one bounded check for a lent GPU machine (`make gpu-check`).

GPU machines are lent rarely and briefly (minutes of device time per session), so everything a GPU
can show is prepared here and runs in one call, in well under 8 minutes:

1. **Training on CUDA.** Stage 2 at the shipped recipe's shape (batch 16, 128 px crops) in bf16 and
   in fp16 (grad scaling), on synthetic pairs (speed does not depend on the pixels; lol-pairs is
   176 MB, more than one call can carry). Time per step comes from two runs of different lengths,
   so start-up and validation cancel out; the ETA of the whole 8000-step schedule follows.
2. **The network's GPU latency through torch** at 600x400 and 1920x1080 in fp32, bf16 and fp16,
   and how far the fp16 and bf16 answers are from fp32's (max abs and PSNR, on a dim test image).
3. **The service's GPU path** (ONNX Runtime's CUDA provider: bench's GPU set, `python -m bench model
   --device cuda --quick`) when onnxruntime-gpu is installed. The lent machines carry CPU
   onnxruntime only and onnxruntime-gpu's wheel (about 255 MB) is over what one call can carry
   (64 MiB), so there this part says it was skipped and why, instead of timing a CPU fallback.

Everything goes to OUT/gpu-check.json and a readable summary to stdout. ``--device cpu --quick``
runs the same code briefly without a GPU: that is how the test suite keeps it working.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import gpus
from model.contract import WEIGHTS_DIR, WEIGHTS_NAME
from training.config import read_preset
from training.metrics import psnr

BUNDLED_CHECKPOINT = WEIGHTS_DIR / WEIGHTS_NAME  # its encoder/decoder are the frozen stage-1 parts
RECIPE = "stage2-1.1"  # the shipped stage 2's preset: batch 16, 128 px crops, its schedule's length
LATENCY_SIZES = ((600, 400), (1920, 1080))
TRAIN_PRECISIONS = {"cuda": ("bf16", "fp16"), "cpu": ("bf16",)}
LATENCY_DTYPES = {"cuda": ("fp32", "bf16", "fp16"), "cpu": ("fp32", "bf16")}
EXIT_NO_DEVICE = 3


def _train_seconds(data: Path, out: Path, device: str, precision: str, steps: int, stage1: Path) -> float:
    """Wall seconds of one stage-2 run of ``steps`` steps through the training CLI."""
    command = [
        sys.executable,
        "-m",
        "training",
        "stage2",
        "--data",
        str(data),
        "--out",
        str(out),
        "--preset",
        RECIPE,
        "--stage1",
        str(stage1),
        "--device",
        device,
        "--precision",
        precision,
        "--steps",
        str(steps),
        "--val-every",
        "0",
        "--quiet",
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def training_speed(device: str, quick: bool, work: Path) -> list[dict[str, Any]]:
    """Seconds per stage-2 step at the recipe's shape, per autocast precision, and the schedule's ETA."""
    from training.synthetic import write_synthetic_pairs

    size = (160, 192) if quick else (400, 600)
    data = work / "pairs"
    write_synthetic_pairs(data / "train", 24, size=size, seed=1)
    write_synthetic_pairs(data / "val", 2, size=size, seed=2)
    short, long = (1, 3) if quick else (20, 220)
    schedule_steps = read_preset(RECIPE, "stage2")["steps"]
    rows = []
    for precision in TRAIN_PRECISIONS[device]:
        first = _train_seconds(data, work / f"{precision}-short", device, precision, short, BUNDLED_CHECKPOINT)
        second = _train_seconds(data, work / f"{precision}-long", device, precision, long, BUNDLED_CHECKPOINT)
        per_step = max(second - first, 1e-9) / (long - short)
        rows.append(
            {
                "precision": precision,
                "seconds_per_step": per_step,
                "schedule_steps": schedule_steps,
                "schedule_minutes": per_step * schedule_steps / 60,
            }
        )
    return rows


def _as_rgb_255(answer: np.ndarray) -> np.ndarray:
    """A 1 x 3 x H x W answer in [0, 1] as H x W x 3 on 0..255, the layout training.metrics scores."""
    return answer[0].transpose(1, 2, 0) * 255.0


def latency(device: str, quick: bool) -> list[dict[str, Any]]:
    """The network's time per image through torch, per size and dtype, and its distance from fp32."""
    import torch

    from model.checkpoint import load_weights

    model, _ = load_weights(BUNDLED_CHECKPOINT)
    model = model.to(device).eval()
    sizes = ((96, 64),) if quick else LATENCY_SIZES
    repeats = 2 if quick else 10
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    rows = []
    for width, height in sizes:
        generator = torch.Generator().manual_seed(0)
        image = (torch.rand(1, 3, height, width, generator=generator) * 0.15).to(device)
        answers: dict[str, np.ndarray] = {}
        for name in LATENCY_DTYPES[device]:
            dtype = dtypes[name]

            def run(image: torch.Tensor = image, dtype: torch.dtype = dtype) -> torch.Tensor:
                with torch.inference_mode(), torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
                    return model(image).float()

            run()  # warm-up: cuDNN picks its algorithms for this shape
            if device == "cuda":
                torch.cuda.synchronize()
            timings = []
            for _ in range(repeats):
                started = time.perf_counter()
                answer = run()
                if device == "cuda":
                    torch.cuda.synchronize()
                timings.append(time.perf_counter() - started)
            answers[name] = answer.clamp(0, 1).cpu().numpy()
            rows.append(
                {
                    "size": f"{width}x{height}",
                    "dtype": name,
                    "median_ms": float(np.median(timings) * 1000),
                    "max_abs_vs_fp32": float(np.abs(answers[name] - answers["fp32"]).max()),
                    "psnr_vs_fp32_db": psnr(_as_rgb_255(answers[name]), _as_rgb_255(answers["fp32"])),
                }
            )
    return rows


def onnxruntime_cuda(out: Path) -> dict[str, Any]:
    """bench's GPU set on ONNX Runtime's CUDA provider, or why it cannot run here."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        return {
            "ran": False,
            "reason": f"onnxruntime {ort.__version__} has no CUDA provider here (providers: {available}); "
            "install onnxruntime-gpu to check the service's GPU path",
        }
    command = [sys.executable, "-m", "bench", "model", "--device", "cuda", "--quick", "--out", str(out)]
    result = subprocess.run(command, check=False)
    return {"ran": True, "exit_code": result.returncode, "results": sorted(p.name for p in out.glob("*.json"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and step counts: checks the code, not speed")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-check")))
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"no CUDA device visible to torch {torch.__version__} (nvidia-smi: {gpus() or 'none'})", file=sys.stderr)
        return EXIT_NO_DEVICE
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "gpus": gpus(),
        "quick": args.quick,
    }
    with tempfile.TemporaryDirectory() as scratch:
        report["training"] = training_speed(args.device, args.quick, Path(scratch))
    report["latency"] = latency(args.device, args.quick)
    report["onnxruntime_cuda"] = onnxruntime_cuda(args.out) if args.device == "cuda" else {"ran": False}
    (args.out / "gpu-check.json").write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    print(f"{report['device']}, torch {report['torch']}")
    for row in report["training"]:
        print(
            f"stage 2, {row['precision']}: {row['seconds_per_step']:.3f} s/step "
            f"-> {row['schedule_minutes']:.1f} min for {row['schedule_steps']} steps"
        )
    for row in report["latency"]:
        print(
            f"{row['size']} {row['dtype']}: {row['median_ms']:.1f} ms, vs fp32 max abs {row['max_abs_vs_fp32']:.4f} "
            f"({row['psnr_vs_fp32_db']:.1f} dB)"
        )
    print(f"onnxruntime CUDA provider: {report['onnxruntime_cuda']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
