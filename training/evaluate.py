"""`python -m training evaluate`: score a model on paired images, beside classical baselines.

Reports plain PSNR / SSIM (the numbers comparable with papers), the GT-mean PSNR variant (labelled:
it uses the ground truth's brightness) and NIQE of each output; optionally writes the enhanced
images, a comparison sheet and a before/after figure for the README.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from model.network import FRLIE
from service.imageio import OutputFormat
from service.settings import Settings
from service.strength import AUTO, Strength, parse_strength
from training.baselines import BASELINES
from training.data import EXPOSURE_VARIANTS, ExposureVariant, ImagePair, PairedDataError, list_pairs, load_rgb
from training.figures import (
    Panel,
    compose,
    sheet_row,
    write_before_after,
    write_colour_figure,
    write_exposure_figure,
)
from training.inference import Enhance, load_enhancer, model_enhancer
from training.metrics import psnr, psnr_gt_mean, ssim
from training.niqe import niqe
from training.normalisation import ExposureNormalisation

METRIC_KEYS = ("psnr", "ssim", "psnr_gt_mean", "niqe")
METRIC_DIGITS = {"psnr": 2, "ssim": 4, "psnr_gt_mean": 2, "niqe": 3}
METRIC_HEADERS = {"psnr": "PSNR", "ssim": "SSIM", "psnr_gt_mean": "PSNR GT-mean", "niqe": "NIQE"}
IDENTICAL = "identical"  # how many outputs equal their reference exactly (left out of the PSNR means)
IDENTICAL_NOTE = (
    "identical: outputs equal to their reference (infinite PSNR, e.g. a photo auto strength returns "
    "unchanged); the PSNR columns are means over the other outputs only."
)
GT_MEAN_NOTE = (
    "PSNR GT-mean: output rescaled to the reference's mean gray level before PSNR (uses the ground "
    "truth; higher than plain PSNR by design). Quote it only beside plain PSNR."
)

COMPARISON_SHEET = "comparison.png"
EXPOSURE_JPEG_QUALITY = 90  # the exposure rows are also scored on JPEG uploads of this quality
ENHANCED_DIR = "enhanced"


# --------------------------------------------------------------------------- scoring


def score_image(output: np.ndarray, reference: np.ndarray, with_niqe: bool = True) -> dict[str, float | None]:
    """All metrics of one output; NIQE (no-reference) looks at the output only."""
    return {
        "psnr": psnr(output, reference),
        "ssim": ssim(output, reference),
        "psnr_gt_mean": psnr_gt_mean(output, reference),
        "niqe": float(niqe(output)) if with_niqe else None,
    }


def mean_scores(rows: Sequence[Mapping[str, float | None]]) -> dict[str, float | None]:
    """Per-metric mean over images; None where a metric was not computed.

    An output identical to its reference has an infinite PSNR (``auto`` strength returns an upload
    already as bright as its target unchanged): it is left out of the PSNR means, so they stay
    numbers (the mean over the images that changed, a lower bound of the real mean), and counted
    in ``identical``.
    """
    means: dict[str, float | None] = {}
    for key in METRIC_KEYS:
        values = [value for row in rows if (value := row.get(key)) is not None and math.isfinite(value)]
        means[key] = float(np.mean(values)) if values else None
    means[IDENTICAL] = float(sum(row.get("psnr") == math.inf for row in rows))
    return means


def evaluate_model(
    enhancer: Enhance,
    pairs: Sequence[ImagePair],
    *,
    baselines: Mapping[str, Enhance] | None = BASELINES,
    with_niqe: bool = True,
    save_dir: str | Path | None = None,
    progress: bool = True,
    exposure: ExposureVariant | None = None,
) -> dict[str, Any]:
    """Score ``enhancer`` (uint8 RGB -> uint8 RGB) on every pair, with each baseline on the same images.

    ``exposure`` (one of ``EXPOSURE_VARIANTS``) turns each (low, high) pair into the input; the
    reference is always the high image.

    Returns ``{"model", "count", "mean", "images": [{"name", metrics...}], "baselines": {name: mean}}``.
    ``save_dir`` receives ``enhanced/NAME.png`` and ``comparison.png``. Pass ``baselines=None`` (or
    ``{}``) and ``with_niqe=False`` for a quick validation during training.
    """
    if not pairs:
        raise PairedDataError("no image pairs to evaluate")
    baselines = dict(baselines or {})
    save_path = Path(save_dir) if save_dir is not None else None
    if save_path is not None:
        (save_path / ENHANCED_DIR).mkdir(parents=True, exist_ok=True)

    images: list[dict[str, Any]] = []
    baseline_rows: dict[str, list[dict[str, float | None]]] = {name: [] for name in baselines}
    sheet_rows: list[list[Panel]] = []
    for pair in tqdm(pairs, desc="evaluate", unit="image", disable=not progress, file=sys.stderr):
        low, high = load_rgb(pair.low), load_rgb(pair.high)
        if low.shape != high.shape:
            raise PairedDataError(f"{pair.name}: low {low.shape} and high {high.shape} differ in size")
        if exposure is not None:
            low = exposure(low, high)
        enhanced = enhancer(low)
        scores = score_image(enhanced, high, with_niqe)
        images.append({"name": pair.name, **scores})
        for name, method in baselines.items():
            baseline_rows[name].append(score_image(method(low), high, with_niqe))
        if save_path is not None:
            Image.fromarray(enhanced).save(save_path / ENHANCED_DIR / f"{Path(pair.name).stem}.png")
            sheet_rows.append(sheet_row(pair.name, low, enhanced, high, scores))
    if save_path is not None:
        compose(sheet_rows).save(save_path / COMPARISON_SHEET, optimize=True)

    return {
        "model": getattr(enhancer, "description", repr(enhancer)),
        "count": len(images),
        "mean": mean_scores(images),
        "images": images,
        "baselines": {name: mean_scores(rows) for name, rows in baseline_rows.items()},
    }


def evaluate_exposures(
    enhancer: Enhance,
    pairs: Sequence[ImagePair],
    names: Sequence[str] = tuple(EXPOSURE_VARIANTS),
    *,
    with_niqe: bool = False,
    progress: bool = True,
) -> dict[str, dict[str, float | None]]:
    """Mean scores of ``enhancer`` on each named exposure variant of ``pairs`` (see EXPOSURE_VARIANTS)."""
    unknown = [name for name in names if name not in EXPOSURE_VARIANTS]
    if unknown:
        raise ValueError(f"unknown exposure variant(s) {unknown}; choose from {list(EXPOSURE_VARIANTS)}")
    return {
        name: evaluate_model(
            enhancer, pairs, baselines=None, with_niqe=with_niqe, progress=progress, exposure=EXPOSURE_VARIANTS[name]
        )["mean"]
        for name in names
    }


def _measured(value: float | None) -> float:
    if value is None:  # only NIQE is ever left out
        raise ValueError("a metric that validation needs was not computed")
    return value


def validate_model(
    model: FRLIE,
    pairs: Sequence[ImagePair],
    stage: str,
    device: torch.device,
    exposures: bool = False,
    normalisation: ExposureNormalisation | None = None,
) -> dict[str, float]:
    """Mean PSNR / SSIM of whole 8-bit outputs over ``pairs`` (stage 1: reconstruction of high).

    What training validates and ``average`` measures: ``evaluate_model`` without baselines or NIQE.
    ``normalisation`` darkens bright inputs first, as the service does (stage 2 only).
    With ``exposures`` (not for stage 1) every variant of ``EXPOSURE_VARIANTS`` is scored too
    (``psnr_low_x2``...), and ``score`` (what selects the best checkpoint) is the mean PSNR over
    the variants instead of the plain low -> high PSNR.
    """
    model.eval()
    net: torch.nn.Module = model
    if stage == "stage1":  # FRLIE.reconstruct, D(E(x)), as a module
        net, pairs = (
            torch.nn.Sequential(model.encoder, model.decoder),
            [ImagePair(p.name, p.high, p.high) for p in pairs],
        )
    with torch.no_grad():
        enhancer: Enhance = model_enhancer(net, device)
        if normalisation is not None and stage != "stage1":
            enhancer = normalised(enhancer, normalisation)
        if not exposures or stage == "stage1":
            mean = evaluate_model(enhancer, pairs, baselines=None, with_niqe=False, progress=False)["mean"]
            return {"psnr": _measured(mean["psnr"]), "ssim": _measured(mean["ssim"]), "score": _measured(mean["psnr"])}
        rows = evaluate_exposures(enhancer, pairs, progress=False)
    result = {"psnr": _measured(rows["low"]["psnr"]), "ssim": _measured(rows["low"]["ssim"])}
    for name, scores in rows.items():
        if name != "low":
            result["psnr_" + name.replace(" ", "_")] = _measured(scores["psnr"])
    result["score"] = float(np.mean([_measured(scores["psnr"]) for scores in rows.values()]))
    return result


def format_exposures(rows: Mapping[str, Mapping[str, float | None]], count: int) -> str:
    """The exposure rows as one table: input variant, then the metrics against the high image."""
    header = [f"input (mean of {count}, vs high)", *(METRIC_HEADERS[key] for key in METRIC_KEYS), "identical"]
    cells = [[name, *_metric_cells(scores), f"{scores.get(IDENTICAL) or 0:.0f}"] for name, scores in rows.items()]
    table = _table(header, cells)
    if any(scores.get(IDENTICAL) for scores in rows.values()):
        table += "\n" + IDENTICAL_NOTE
    return table


def _enhance_darkened(enhancer: Enhance, image: np.ndarray, gain: float) -> np.ndarray:
    """``enhancer`` on ``image`` times ``gain``, rounded to 8 bits (training's validation of a model
    trained on normalised inputs; the service keeps the darkened copy in float)."""
    if gain == 1.0:
        return enhancer(image)
    return enhancer(np.rint(image.astype(np.float32) * np.float32(gain)).astype(np.uint8))


def normalised(enhancer: Enhance, normalisation: ExposureNormalisation) -> Enhance:
    """``enhancer`` on the input darkened by a training recipe's normalisation (``--exposure-*``)."""

    def run(image: np.ndarray) -> np.ndarray:
        return _enhance_darkened(enhancer, image, normalisation.read(image).gain)

    return run


def encode_upload(image: np.ndarray, jpeg_quality: int | None = None) -> bytes:
    """``image`` as the bytes a client uploads: PNG, or a JPEG of ``jpeg_quality`` as phones send."""
    buffer = io.BytesIO()
    if jpeg_quality is None:
        Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    else:
        Image.fromarray(image).save(buffer, format="JPEG", quality=jpeg_quality)
    return buffer.getvalue()


def as_jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """``image`` after a JPEG round trip at ``quality``, as a phone or browser would upload it."""
    with Image.open(io.BytesIO(encode_upload(image, quality))) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.uint8).copy()


class ServedModel:
    """The service itself, in this process: ``service.pipeline.Pipeline`` over an ONNX file with the
    service's default settings, so every number is what ``POST /enhance`` answers (bit for bit: the
    answer is asked for as PNG). Use it as a context manager, or call ``close``."""

    def __init__(self, model: str | Path, strength: Strength = AUTO, jpeg_quality: int | None = None) -> None:
        from service.engine import Engine
        from service.metrics import Metrics
        from service.pipeline import Pipeline

        self.strength, self.jpeg_quality = strength, jpeg_quality
        self.settings = Settings(model_path=Path(model))
        self._runner = asyncio.Runner()
        engine = Engine(self.settings)
        engine.warm_up()

        async def start() -> Pipeline:  # the batcher belongs to the loop that runs it
            return Pipeline(engine, self.settings, Metrics())

        self.pipeline = self._runner.run(start())
        upload = "PNG" if jpeg_quality is None else f"JPEG q{jpeg_quality}"
        self.description = (
            f"service pipeline on {engine.model_file.name} ({engine.provider}), strength {strength}, {upload} uploads"
        )
        self.kind = "service"

    def uploading(self, jpeg_quality: int | None) -> Enhance:
        """The same service, sent PNG (None) or JPEG uploads of ``jpeg_quality``."""

        def run(image: np.ndarray) -> np.ndarray:
            return self.answer(encode_upload(image, jpeg_quality))[0]

        return run

    def answer(self, upload: bytes) -> tuple[np.ndarray, Any]:
        """The service's answer (H x W x 3 uint8) to ``upload``, and its ``EnhancedFile``."""
        result = self._runner.run(self.pipeline.process(upload, OutputFormat.png, strength=self.strength))
        with Image.open(io.BytesIO(result.data)) as decoded:
            return np.asarray(decoded.convert("RGB"), dtype=np.uint8).copy(), result

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.answer(encode_upload(image, self.jpeg_quality))[0]

    def close(self) -> None:
        if self._runner.get_loop().is_closed():
            return
        self._runner.run(self.pipeline.close())
        self._runner.close()

    def __enter__(self) -> ServedModel:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def jpeg_uploads(enhancer: Enhance, quality: int) -> Enhance:
    """``enhancer`` sent every input as a JPEG of ``quality`` (the service gets the JPEG bytes)."""
    if isinstance(enhancer, ServedModel):
        return enhancer.uploading(quality)
    return lambda image: enhancer(as_jpeg(image, quality))


# --------------------------------------------------------------------------- CLI


def resolve_pairs_dir(data: str | Path, split: str = "val") -> Path:
    """``data`` itself when it holds low/ and high/, else its ``split`` subfolder."""
    data = Path(data)
    if (data / "low").is_dir() and (data / "high").is_dir():
        return data
    if (data / split / "low").is_dir():
        return data / split
    raise PairedDataError(f"{data} has neither low/ and high/ nor a {split}/ split with them")


def find_pair(pairs: Sequence[ImagePair], name: str) -> ImagePair:
    """The pair called ``name``, with or without its extension (``101`` or ``101.png``)."""
    for pair in pairs:
        if name in (pair.name, Path(pair.name).stem):
            return pair
    shown = ", ".join(pair.name for pair in pairs[:8])
    raise ValueError(f"no image named {name!r}; available: {shown}{' ...' if len(pairs) > 8 else ''}")


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _metric_cells(scores: Mapping[str, float | None]) -> list[str]:
    return [_cell(scores[key], METRIC_DIGITS[key]) for key in METRIC_KEYS]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def join(cells: Sequence[str]) -> str:  # first column left-aligned (names), numbers right-aligned
        return "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        )

    lines = [join(line) for line in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_report(result: Mapping[str, Any]) -> str:
    """Per-image table with the mean, then the mean rows of the model and every baseline."""
    header = ["image", *(METRIC_HEADERS[key] for key in METRIC_KEYS)]
    rows = [[image["name"], *_metric_cells(image)] for image in result["images"]]
    rows.append(["mean", *_metric_cells(result["mean"])])
    parts = [f"model: {result['model']}", _table(header, rows)]
    comparison = [["model", *_metric_cells(result["mean"])]]
    comparison += [[name, *_metric_cells(scores)] for name, scores in result["baselines"].items()]
    if result["baselines"]:
        parts.append(_table([f"method (mean of {result['count']})", *header[1:]], comparison))
    parts.append(GT_MEAN_NOTE)
    return "\n\n".join(parts)


def _json_safe(value: Any) -> Any:
    """Strict JSON: a non-finite float (PSNR of identical images is inf) becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="PSNR / SSIM / GT-mean PSNR / NIQE of a model on paired images, beside baselines"
    )
    parser.add_argument("--model", required=True, type=Path, help="checkpoint (.pt) or exported .onnx file")
    parser.add_argument(
        "--data", required=True, type=Path, help="folder with low/ and high/, or a data root with SPLIT/"
    )
    parser.add_argument("--split", default="val", help="split subfolder used when --data is a data root (default: val)")
    parser.add_argument("--save-dir", type=Path, help="write enhanced/NAME.png and comparison.png here")
    parser.add_argument("--json", type=Path, help="write all numbers to this JSON file")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images (sorted by name)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--no-baselines", action="store_true", help="skip input / gamma / hist_eq / clahe")
    parser.add_argument("--no-niqe", action="store_true", help="skip NIQE (faster)")
    parser.add_argument(
        "--strength",
        default=None,
        metavar="auto|0-1",
        help="run the service's own pipeline (service.pipeline, default settings, the policy calibrated in "
        "the model file) at this strength, on uploads encoded as a client sends them ('auto': the service's "
        "default answer); default: the plain network on the raw input",
    )
    parser.add_argument(
        "--upload-jpeg",
        type=int,
        metavar="QUALITY",
        help="send every input as a JPEG of this quality (1-100), as phones do (default: PNG)",
    )
    parser.add_argument(
        "--exposures",
        action="store_true",
        help=f"also score exposure variants of the inputs ({', '.join(EXPOSURE_VARIANTS)}; 'high' against itself), "
        f"each uploaded as PNG and as JPEG q{EXPOSURE_JPEG_QUALITY}",
    )
    parser.add_argument(
        "--non-lol",
        action="store_true",
        help="also run the non-LOL benchmark (training.colour_bench): package-shipped colour photos darkened "
        "by a camera model, PNG and JPEG q90 uploads, PSNR and CIEDE2000 against the original and a tone-curve oracle",
    )
    parser.add_argument(
        "--colour-figure-out",
        type=Path,
        metavar="FILE.jpg",
        help="a JPEG of the non-LOL benchmark's held-out photos: dark upload | answer | tone curve | original",
    )
    parser.add_argument("--figure", metavar="NAME", help="image (e.g. 101 or 101.png) for a before/after JPEG")
    parser.add_argument("--figure-out", type=Path, metavar="FILE.jpg", help="where --figure writes (< 300 KB)")
    parser.add_argument(
        "--exposure-figure-out",
        type=Path,
        metavar="FILE.jpg",
        help="with --figure: also a JPEG of that image brightened x4 and its high image, in and out",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if (args.figure is None) != (args.figure_out is None):
        print("error: --figure and --figure-out go together", file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 1:
        print("error: --limit must be at least 1", file=sys.stderr)
        return 2
    if args.upload_jpeg is not None and not 1 <= args.upload_jpeg <= 100:
        print("error: --upload-jpeg needs a quality from 1 to 100", file=sys.stderr)
        return 2
    try:
        pairs_dir = resolve_pairs_dir(args.data, args.split)
        all_pairs = list_pairs(pairs_dir)
        figure_pair = find_pair(all_pairs, args.figure) if args.figure else None
        enhancer: Enhance
        if args.strength is not None:
            if args.model.suffix.lower() != ".onnx":
                raise ValueError("--strength runs the service's own pipeline, which needs an exported .onnx model")
            enhancer = ServedModel(args.model, parse_strength(args.strength))
        else:
            enhancer = load_enhancer(args.model, device=args.device)
        scored = enhancer if args.upload_jpeg is None else jpeg_uploads(enhancer, args.upload_jpeg)
        result = evaluate_model(
            scored,
            all_pairs[: args.limit],
            baselines=None if args.no_baselines else BASELINES,
            with_niqe=not args.no_niqe,
            save_dir=args.save_dir,
        )
        if args.upload_jpeg is not None:
            result["model"] += f", JPEG q{args.upload_jpeg} uploads"
        if args.exposures:
            result["exposures"] = {
                upload: evaluate_exposures(variant, all_pairs[: args.limit], with_niqe=not args.no_niqe)
                for upload, variant in (
                    ("PNG", enhancer),
                    (f"JPEG q{EXPOSURE_JPEG_QUALITY}", jpeg_uploads(enhancer, EXPOSURE_JPEG_QUALITY)),
                )
            }

        def uploading(quality: int | None) -> Enhance:
            if isinstance(enhancer, ServedModel):
                return enhancer.uploading(quality)
            return enhancer if quality is None else jpeg_uploads(enhancer, quality)

        if args.non_lol:
            from training import colour_bench

            result["non_lol"] = [vars(row) for row in colour_bench.benchmark(uploading)]
        if args.colour_figure_out is not None:
            path = write_colour_figure(uploading, args.colour_figure_out)
            print(f"wrote {path} ({path.stat().st_size / 1000:.0f} KB)")
    except (ValueError, argparse.ArgumentTypeError) as exc:  # includes PairedDataError and a bad --strength
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result["data"] = str(pairs_dir)
    print(format_report(result))
    for upload, rows in result.get("exposures", {}).items():
        print(f"\n{upload} uploads\n" + format_exposures(rows, result["count"]))
    if "non_lol" in result:
        from training import colour_bench

        rows = [colour_bench.Row(**row) for row in result["non_lol"]]
        print("\nnon-LOL benchmark (training.colour_bench)\n" + colour_bench.format_rows(rows))
        print(f"issue 22 bar on the held-out photos: {colour_bench.done_when(rows)}")
    if args.save_dir is not None:
        print(f"wrote {args.save_dir / ENHANCED_DIR}/ and {args.save_dir / COMPARISON_SHEET}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_json_safe(result), indent=2, allow_nan=False) + "\n")
        print(f"wrote {args.json}")
    if figure_pair is not None:
        path = write_before_after(enhancer, figure_pair, args.figure_out)
        print(f"wrote {path} ({path.stat().st_size / 1000:.0f} KB)")
        if args.exposure_figure_out is not None:
            path = write_exposure_figure(enhancer, figure_pair, args.exposure_figure_out)
            print(f"wrote {path} ({path.stat().st_size / 1000:.0f} KB)")
    if isinstance(enhancer, ServedModel):
        enhancer.close()
    return 0
