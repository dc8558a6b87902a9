"""Benchmark: the int8 model against fp32 on the CPU (issue 14), speed and quality in one run.

    python -m bench.int8 --fp32 model/weights/frlie.onnx --int8 PATH --data ../shared/data/lol-pairs

Speed: each (size, precision) case runs in a fresh process (``bench.isolate``), so its peak RSS is
its own; fp32 and int8 alternate size by size, so a change in background load hits both. Images go
through the service's exact tiling (``service.tiling``): sizes up to ``--window-mp`` megapixels run
as one call, larger ones (12 MP) as windows of at most that size, as the service would cut them.
Time per image is the median of the timed runs after a warm-up call of the same input shape.

Quality: every val pair (never the training images the int8 file was calibrated on) through both
files as uint8 RGB -> uint8 RGB (``training.inference``), scored with the project's PSNR/SSIM
against the references (``training.evaluate``), and the int8 output against the fp32 output.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from bench import images
from bench.images import Size
from bench.machine import Machine, describe
from bench.report import markdown_table, num, publish, section, timestamp
from training.evaluate import EXPOSURE_JPEG_QUALITY
from training.int8_measure import (
    DEFAULT_WINDOW_MP,
    MAX_PSNR_LOSS_DB,
    MAX_SSIM_LOSS,
    PRECISIONS,
    TARGET_SPEEDUP,
    TARGET_SPEEDUP_SIZES,
    photo_drops,
    quality,
    speed,
)

log = logging.getLogger("bench.int8")

DEFAULT_SIZES: tuple[Size, ...] = ((600, 400), (1920, 1080), (4000, 3000))
# --- report ---------------------------------------------------------------------------------------


def _mb(value: float | None) -> str:
    return num(None if value is None else value / 1e6)


def _case_cells(case: dict[str, Any], megapixels: float) -> list[str]:
    if "timing" not in case:
        return [f"failed: {case.get('error', '?')}", "–", "–"]
    seconds = case["timing"]["median_s"]
    return [num(seconds * 1000), num(megapixels / seconds), _mb(case.get("peak_rss_bytes"))]


def verdict(result: dict[str, Any]) -> list[str]:
    """Issue 14's conditions, each with the measured figure and pass/fail."""
    lines = []
    speedups = {row["size"]: row.get("speedup") for row in result["speed"]}
    for size in TARGET_SPEEDUP_SIZES:
        value = speedups.get(images.label(size))
        if value is not None:
            mark = "pass" if value >= TARGET_SPEEDUP else "FAIL"
            lines.append(
                f"{mark}: int8 {num(value)}x faster than fp32 at {images.label(size)} (target >= {TARGET_SPEEDUP}x)"
            )
    for row in result["quality"]:
        if row["exposure"] != "low":
            continue
        psnr_mark = "pass" if row["psnr_loss_db"] <= MAX_PSNR_LOSS_DB else "FAIL"
        ssim_mark = "pass" if row["ssim_loss"] <= MAX_SSIM_LOSS else "FAIL"
        split, upload = result["config"]["split"], row["upload"]
        lines.append(
            f"{psnr_mark}: {split} PSNR ({upload}) {-row['psnr_loss_db']:+.3f} dB against fp32 (a loss of at most "
            f"{MAX_PSNR_LOSS_DB} dB allowed)"
        )
        lines.append(
            f"{ssim_mark}: {split} SSIM ({upload}) {-row['ssim_loss']:+.4f} against fp32 (a loss of at most "
            f"{MAX_SSIM_LOSS} allowed)"
        )
    return lines


SPEED_HEADERS = [
    "size", "MP", "plan", "fp32 ms", "fp32 MP/s", "fp32 peak RSS MB", "int8 ms", "int8 MP/s", "int8 peak RSS MB",
    "speed-up", "runs fp32/int8",
]  # fmt: skip
QUALITY_HEADERS = [
    "input", "upload", "pairs", "fp32 PSNR", "int8 PSNR", "Δ PSNR dB", "fp32 SSIM", "int8 SSIM", "Δ SSIM",
    "int8 vs fp32 PSNR (mean)", "(min)", "photos losing > 0.1 / > 0.2 dB", "worst photo",
]  # fmt: skip
QUALITY_NOTES = [
    "PSNR/SSIM of the 8-bit outputs against the normal-light references (training.metrics); the last "
    "two columns compare the int8 output with the fp32 output, image by image.",
    "Input 'low' is the benchmark task; other rows are exposure variants of the same pairs "
    "(training.data.EXPOSURE_VARIANTS), scored against the same references.",
    "Upload: the input as it is (PNG), or after a JPEG q90 round trip, as phones and browsers send it; "
    "both files get the same JPEG.",
]


def photo_losses(row: dict[str, Any]) -> dict[str, Any]:
    """Per-photo PSNR lost by int8 against fp32: how many lose more than 0.1 / 0.2 dB, and the worst."""
    drops = photo_drops(row)
    worst = max(drops, key=lambda name: drops[name])
    return {
        "over_0.1_db": sum(drop > 0.1 for drop in drops.values()),
        "over_0.2_db": sum(drop > 0.2 for drop in drops.values()),
        "worst": {"name": worst, "psnr_drop_db": drops[worst]},
    }


def _speed_notes(config: dict[str, Any]) -> list[str]:
    threads = config["threads"] or "auto (ORT default)"
    return [
        f"ONNX Runtime CPU provider, intra-op threads: {threads}; each case in a fresh process (peak RSS = "
        "that process's high-water mark, Python and ORT included); fp32 and int8 alternate size by size.",
        "Time per image: median of the timed runs after one warm-up call; images larger than "
        f"{config['window_mp']} MP run as exact tiles (service.tiling): their time includes the halos.",
    ]


def _speed_row(row: dict[str, Any]) -> list[str]:
    runs = "/".join(str(row[p].get("timing", {}).get("repeats", 0)) for p in PRECISIONS)
    plan = row["int8"].get("plan", row["fp32"].get("plan", "–"))
    cells = [*_case_cells(row["fp32"], row["megapixels"]), *_case_cells(row["int8"], row["megapixels"])]
    return [row["size"], num(row["megapixels"]), plan, *cells, num(row.get("speedup")), runs]


def _quality_row(row: dict[str, Any]) -> list[str]:
    losses = photo_losses(row)
    return [
        row["exposure"], row["upload"], str(row["pairs"]), num(row["fp32_psnr"], 4),
        num(row["int8_psnr"], 4), f"{-row['psnr_loss_db']:+.3f}", num(row["fp32_ssim"], 4),
        num(row["int8_ssim"], 4), f"{-row['ssim_loss']:+.4f}", num(row["int8_vs_fp32_psnr_mean"], 4),
        num(row["int8_vs_fp32_psnr_min"], 4), f"{losses['over_0.1_db']} / {losses['over_0.2_db']}",
        f"{losses['worst']['name']}: -{losses['worst']['psnr_drop_db']:.2f} dB",
    ]  # fmt: skip


def markdown(result: dict[str, Any], caption: str) -> str:
    """The speed and quality tables (with the machine caption) and the verdict lines."""
    out = []
    if result["speed"]:
        table = markdown_table(SPEED_HEADERS, [_speed_row(row) for row in result["speed"]])
        out.append(section("int8 vs fp32 on the CPU: speed", caption, table, _speed_notes(result["config"])))
    if result["quality"]:
        table = markdown_table(QUALITY_HEADERS, [_quality_row(row) for row in result["quality"]])
        out.append(section(f"int8 vs fp32: quality on {result['config']['split']}", caption, table, QUALITY_NOTES))
    out.append("\n".join(f"- {line}" for line in verdict(result)) + "\n")
    return "\n".join(out)


# --- command line ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.int8", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fp32", type=Path, required=True, help="the fp32 ONNX file")
    parser.add_argument("--int8", type=Path, required=True, help="its int8 version (training/quantize.py)")
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="lol-pairs root (its val/ split is used) or a val folder with low/ and high/; "
        "without it, quality is skipped",
    )
    parser.add_argument(
        "--sizes",
        type=images.parse_sizes,
        default=DEFAULT_SIZES,
        help="WIDTHxHEIGHT,... (default: 600x400,1920x1080,4000x3000)",
    )
    parser.add_argument("--skip-large", action="store_true", help="leave out sizes above --window-mp (the 12 MP case)")
    parser.add_argument(
        "--window-mp",
        type=float,
        default=DEFAULT_WINDOW_MP,
        help="largest model call in megapixels; larger images run as exact tiles (default: 4)",
    )
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (default 0: ORT's choice)")
    parser.add_argument("--repeats", type=int, default=5, help="most timed runs per case (default 5)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=20.0,
        help="stop adding timed runs to a case after about this long (default 20 s; >= 1 run)",
    )
    parser.add_argument(
        "--exposures",
        default="low",
        help="comma-separated val input variants: low, 'low x2', 'low x4', high (default: low)",
    )
    parser.add_argument(
        "--split",
        choices=("val", "train"),
        default="val",
        help="pairs whose quality is measured (default val; train: per-photo losses on 247 more photos)",
    )
    parser.add_argument("--no-speed", action="store_true", help="quality only")
    parser.add_argument("--json", type=Path, default=None, help="write every figure to this JSON file")
    return parser


def _check_inputs(args: argparse.Namespace) -> None:
    from training.data import EXPOSURE_VARIANTS

    for path in (args.fp32, args.int8):
        if not path.is_file():
            raise SystemExit(f"error: no model at {path}")
    unknown = [name for name in args.exposures if name not in EXPOSURE_VARIANTS]
    if unknown:
        raise SystemExit(f"error: unknown exposure(s) {unknown}; choose among {sorted(EXPOSURE_VARIANTS)}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run, print the tables and the verdict, write --json; returns the JSON document."""
    args = build_parser().parse_args(argv)
    args.exposures = tuple(name.strip() for name in args.exposures.split(",") if name.strip())
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    _check_inputs(args)
    sizes = tuple(s for s in args.sizes if not (args.skip_large and images.megapixels(s) > args.window_mp))
    machine: Machine = describe()
    started = time.perf_counter()
    from training.onnx_metadata import read_metadata
    from training.quantize import read_quantization

    result: dict[str, Any] = {
        "benchmark": "int8",
        "created": timestamp(),
        "command": sys.argv if argv is None else ["python", "-m", "bench.int8", *argv],
        "machine": machine.to_dict(),
        "config": {
            "fp32": str(args.fp32),
            "int8": str(args.int8),
            "sizes": [images.label(s) for s in sizes],
            "threads": args.threads,
            "repeats": args.repeats,
            "budget_s": args.budget_s,
            "window_mp": args.window_mp,
            "exposures": list(args.exposures),
            "split": args.split,
        },
        "fp32_metadata": {k: v for k, v in read_metadata(args.fp32).items() if k in ("model_version", "precision")},
        "int8_quantization": read_quantization(args.int8),
        "speed": []
        if args.no_speed
        else speed(
            args.fp32,
            args.int8,
            sizes,
            threads=args.threads,
            max_repeats=args.repeats,
            budget_s=args.budget_s,
            window_mp=args.window_mp,
        ),
        "quality": []
        if args.data is None
        else [
            row
            for jpeg_quality in (None, EXPOSURE_JPEG_QUALITY)
            for row in quality(
                args.fp32, args.int8, args.data, args.exposures, split=args.split, jpeg_quality=jpeg_quality
            )
        ],
    }
    result["elapsed_s"] = time.perf_counter() - started
    result["verdict"] = verdict(result)
    publish(result, markdown, machine, args.json)
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
