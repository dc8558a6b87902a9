"""The int8 file against fp32, measured: quality on val and CPU speed at photo sizes.

Shared by the release gate (training.int8_gate, run by `ship`) and the int8 benchmark (bench.int8,
which reports the same figures), so both judge with one measurement.

Speed: each (size, precision) case runs in a fresh process (``bench.isolate``), so its peak RSS is
its own; fp32 and int8 alternate size by size, so a change in background load hits both. Images go
through the service's exact tiling (``service.tiling``): sizes up to ``window_mp`` megapixels run as
one call, larger ones as windows of at most that size. Time per image is the median of the timed
runs after a warm-up call of the same input shape.

Quality: every val pair (never the training images the int8 file was calibrated on) through both
files as uint8 RGB -> uint8 RGB (``training.inference``), scored with the project's PSNR/SSIM.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench import images
from bench.images import Size
from bench.isolate import run_isolated
from bench.timing import measure
from service.memory import current_rss_bytes

log = logging.getLogger(__name__)

DEFAULT_WINDOW_MP = 4.0
# Issue 14's bar for shipping the int8 file.
TARGET_SPEEDUP = 1.8
TARGET_SPEEDUP_SIZES: tuple[Size, ...] = ((600, 400), (1920, 1080))
MAX_PSNR_LOSS_DB = 0.1
MAX_SSIM_LOSS = 0.005
CASE_TIMEOUT_S = 3600.0
PRECISIONS = ("fp32", "int8")


# --- speed (runs in a fresh process per case) -----------------------------------------------------


def time_case(
    model: str, width: int, height: int, threads: int, max_repeats: int, budget_s: float, window_mp: float
) -> dict[str, Any]:
    """Time one file on one synthetic dim photo through the service's tiling; called by ``bench.isolate``.

    Torch-free on purpose (nothing here imports it), so the peak RSS is what a service process needs.
    """
    import onnxruntime as ort

    from model.contract import RECEPTIVE_RADIUS, SIZE_MULTIPLE
    from service.tiling import extract_tile, plan_within_budget, stitch_tile

    rss_before = current_rss_bytes()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    input_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    plan = plan_within_budget(
        height,
        width,
        max_window_pixels=int(window_mp * 1e6),
        receptive_radius=int(metadata[RECEPTIVE_RADIUS]),
        multiple=int(metadata[SIZE_MULTIPLE]),
    )
    photo = images.dark_photo((width, height))
    window = np.empty((1, 3, *plan.window_shape), dtype=np.float32)
    output = np.empty((height, width, 3), dtype=np.uint8)

    def run_tile(tile: Any) -> None:
        extract_tile(photo, plan, tile, window[0])
        (result,) = session.run([output_name], {input_name: window})
        stitch_tile(output, tile, result[0])

    def run_image() -> None:
        for tile in plan.tiles:
            run_tile(tile)

    started = time.perf_counter()
    run_tile(plan.tiles[0])  # warm-up: first-call costs of this input shape (arena, kernels)
    warmup_s = time.perf_counter() - started
    timing = measure(run_image, warmup=0, max_repeats=max_repeats, budget_s=budget_s)
    return {
        "plan": plan.describe(),
        "windows": len(plan.tiles),
        "computed_megapixels": plan.computed_pixels / 1e6,
        "intra_op_threads": threads or "auto",
        "providers": session.get_providers(),
        "rss_before_session_bytes": rss_before,
        "warmup_call_s": warmup_s,
        "timing": timing.to_dict(),
    }


def speed(
    fp32: Path,
    int8: Path,
    sizes: tuple[Size, ...],
    *,
    threads: int,
    max_repeats: int,
    budget_s: float,
    window_mp: float,
) -> list[dict[str, Any]]:
    """One row per size: both precisions (each in its own process), the speed-up and the peak RSS."""
    rows = []
    for size in sizes:
        row: dict[str, Any] = {"size": images.label(size), "megapixels": images.megapixels(size)}
        for precision, path in zip(PRECISIONS, (fp32, int8), strict=True):
            log.info("speed %s %s", images.label(size), precision)
            kwargs = {
                "model": str(path),
                "width": size[0],
                "height": size[1],
                "threads": threads,
                "max_repeats": max_repeats,
                "budget_s": budget_s,
                "window_mp": window_mp,
            }
            row[precision] = run_isolated("training.int8_measure:time_case", kwargs, CASE_TIMEOUT_S)
        fp32_case, int8_case = row["fp32"], row["int8"]
        if "timing" in fp32_case and "timing" in int8_case:
            row["speedup"] = fp32_case["timing"]["median_s"] / int8_case["timing"]["median_s"]
        rows.append(row)
    return rows


# --- quality --------------------------------------------------------------------------------------


def _keeping(enhancer: Any, kept: list[np.ndarray]) -> Any:
    """The enhancer, also appending each output to ``kept`` (to compare the two files' outputs)."""

    def run(image: np.ndarray) -> np.ndarray:
        kept.append(enhancer(image))
        return kept[-1]

    return run


def photo_drops(row: dict[str, Any], label: str = "int8") -> dict[str, float]:
    """PSNR (dB) that each photo of a ``quality`` row loses with the ``label`` file against fp32."""
    return {image["name"]: image["fp32_psnr"] - image[f"{label}_psnr"] for image in row["images"]}


def quality(
    fp32: Path,
    int8: Path,
    data: Path,
    exposures: tuple[str, ...],
    label: str = "int8",
    split: str = "val",
    jpeg_quality: int | None = None,
) -> list[dict[str, Any]]:
    """Mean PSNR/SSIM vs the references for both files on the val pairs, and int8 vs fp32 PSNR.

    ``label`` names the second file in the keys (``fp16`` for the fp16 file's gate); ``split``
    "train" measures the training pairs instead (per-photo losses where there are more photos);
    ``jpeg_quality`` sends both files each input as a JPEG of that quality, as phones upload."""
    from training.data import EXPOSURE_VARIANTS, list_pairs
    from training.evaluate import evaluate_model, jpeg_uploads, resolve_pairs_dir
    from training.inference import load_enhancer
    from training.metrics import psnr

    pairs = list_pairs(resolve_pairs_dir(data, split))
    enhancers: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "fp32": load_enhancer(fp32),
        label: load_enhancer(int8),
    }
    if jpeg_quality is not None:
        enhancers = {name: jpeg_uploads(enhancer, jpeg_quality) for name, enhancer in enhancers.items()}
    upload = "PNG" if jpeg_quality is None else f"JPEG q{jpeg_quality}"
    rows = []
    for exposure in exposures:
        outputs: dict[str, list[np.ndarray]] = {}
        scores = {}
        for name, enhancer in enhancers.items():
            log.info("quality %s on %d %s pairs (%s, %s)", name, len(pairs), split, exposure, upload)
            kept = outputs[name] = []
            scores[name] = evaluate_model(
                _keeping(enhancer, kept),
                pairs,
                baselines=None,
                with_niqe=False,
                progress=False,
                exposure=EXPOSURE_VARIANTS[exposure],
            )
        versus = [psnr(i, f) for i, f in zip(outputs[label], outputs["fp32"], strict=True)]
        finite = [value for value in versus if math.isfinite(value)]
        rows.append(
            {
                "exposure": exposure,
                "upload": upload,
                "pairs": len(pairs),
                "data": str(resolve_pairs_dir(data, split)),
                **{
                    f"{name}_{metric}": scores[name]["mean"][metric]
                    for name in enhancers
                    for metric in ("psnr", "ssim")
                },
                "psnr_loss_db": scores["fp32"]["mean"]["psnr"] - scores[label]["mean"]["psnr"],
                "ssim_loss": scores["fp32"]["mean"]["ssim"] - scores[label]["mean"]["ssim"],
                f"{label}_vs_fp32_psnr_mean": statistics.fmean(finite) if finite else math.inf,
                f"{label}_vs_fp32_psnr_min": min(versus),
                "images": [
                    {
                        "name": a["name"],
                        "fp32_psnr": a["psnr"],
                        f"{label}_psnr": b["psnr"],
                        "fp32_ssim": a["ssim"],
                        f"{label}_ssim": b["ssim"],
                        f"{label}_vs_fp32_psnr": v,
                    }
                    for a, b, v in zip(scores["fp32"]["images"], scores[label]["images"], versus, strict=True)
                ],
            }
        )
    return rows
