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
from service import ensemble
from service.exposure import ExposureNormalisation
from service.settings import Settings
from service.strength import (
    AUTO,
    Strength,
    apply_strength,
    matched_gain,
    parse_strength,
    resolve_strength,
)
from training.baselines import BASELINES
from training.data import EXPOSURE_VARIANTS, ExposureVariant, ImagePair, PairedDataError, list_pairs, load_rgb
from training.figures import Panel, compose, sheet_row, write_before_after, write_exposure_figure
from training.inference import Enhance, Enhancer, load_enhancer, model_enhancer
from training.metrics import psnr, psnr_gt_mean, ssim
from training.niqe import niqe

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
    """``enhancer`` on ``image`` times ``gain``, rounded to 8 bits (the service keeps the darkened
    copy in float, so results match it within rounding)."""
    if gain == 1.0:
        return enhancer(image)
    return enhancer(np.rint(image.astype(np.float32) * np.float32(gain)).astype(np.uint8))


def normalised(enhancer: Enhance, normalisation: ExposureNormalisation) -> Enhance:
    """``enhancer`` on the upload darkened as service.exposure does."""

    def run(image: np.ndarray) -> np.ndarray:
        return _enhance_darkened(enhancer, image, normalisation.read(image).gain)

    return run


def as_jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """``image`` after a JPEG round trip at ``quality``, as a phone or browser would upload it."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.uint8).copy()


def self_ensembled(enhancer: Enhance, settings: Settings) -> Enhance:
    """``enhancer`` averaged over the orientations the service gives an image of each size on the CPU
    under ``settings`` (service.ensemble). It averages the enhancer's rounded outputs where the service
    averages unrounded ones, so results match it within rounding."""
    budget = settings.self_ensemble_budget(on_gpu=False)

    def run(image: np.ndarray) -> np.ndarray:
        passes = ensemble.passes_for(image.shape[0] * image.shape[1], settings.self_ensemble, budget)
        used = ensemble.orientations(passes)
        if passes == 1:
            return enhancer(image)
        answers = [enhancer(np.ascontiguousarray(o.forward(image))).astype(np.float32) / 255.0 for o in used]
        return ensemble.average(answers, used)

    return run


def with_strength(enhancer: Enhance, strength: Strength, jpeg_quality: int | None = None) -> Enhancer:
    """``enhancer`` wrapped as the service runs it: the upload darkened by the default exposure
    normalisation (service.exposure), then the strength blend with the upload (service.strength);
    ``auto`` aims at the service's default brightness targets (matching the input gain to them on a
    thumbnail for noisy uploads, as the service does), and the full-size run gets the self-ensemble
    that the service's CPU defaults give its size. With ``jpeg_quality`` the input is uploaded as a
    JPEG of that quality: round-tripped, and judged by the lossy rule."""
    settings = Settings()
    full_size = self_ensembled(enhancer, settings)
    auto = settings.auto_strength
    normalisation = settings.exposure_normalisation if jpeg_quality is None else settings.lossy_exposure_normalisation

    async def model_output(image: np.ndarray, gain: float) -> np.ndarray:
        return _enhance_darkened(enhancer, image, gain)

    def run(image: np.ndarray) -> np.ndarray:
        if jpeg_quality is not None:
            image = as_jpeg(image, jpeg_quality)
        reading = normalisation.read(image)
        if resolve_strength(strength, reading, auto) <= 0:  # for auto, an upper bound
            return image.copy()
        gain = asyncio.run(matched_gain(auto, reading, image, model_output)) if strength == AUTO else reading.gain
        enhanced = _enhance_darkened(full_size, image, gain)
        apply_strength(enhanced, image, strength, reading, auto)
        return enhanced

    kind = getattr(enhancer, "kind", "function")
    upload = "" if jpeg_quality is None else f", JPEG q{jpeg_quality} uploads"
    return Enhancer(run, kind, f"{getattr(enhancer, 'description', enhancer)}, strength {strength}{upload}")


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
        help="run the model as the service does: inputs darkened by its exposure normalisation "
        "(FRLIE_EXPOSURE_* defaults), output blended with the input at this strength (FRLIE_AUTO_STRENGTH_* "
        "defaults for 'auto'; 1: the model's full effect); default: the raw model on the raw input",
    )
    parser.add_argument(
        "--upload-jpeg",
        type=int,
        metavar="QUALITY",
        help="with --strength: send every input as a JPEG of this quality (1-100), as phones do; "
        "the service then judges it by its lossy rule (FRLIE_EXPOSURE_LOSSY_*)",
    )
    parser.add_argument(
        "--exposures",
        action="store_true",
        help=f"also score exposure variants of the inputs ({', '.join(EXPOSURE_VARIANTS)}; 'high' against itself)",
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
    if args.upload_jpeg is not None and (args.strength is None or not 1 <= args.upload_jpeg <= 100):
        print("error: --upload-jpeg needs --strength and a quality from 1 to 100", file=sys.stderr)
        return 2
    try:
        pairs_dir = resolve_pairs_dir(args.data, args.split)
        all_pairs = list_pairs(pairs_dir)
        figure_pair = find_pair(all_pairs, args.figure) if args.figure else None
        enhancer = load_enhancer(args.model, device=args.device)
        if args.strength is not None:
            enhancer = with_strength(enhancer, parse_strength(args.strength), args.upload_jpeg)
        result = evaluate_model(
            enhancer,
            all_pairs[: args.limit],
            baselines=None if args.no_baselines else BASELINES,
            with_niqe=not args.no_niqe,
            save_dir=args.save_dir,
        )
        if args.exposures:
            result["exposures"] = evaluate_exposures(enhancer, all_pairs[: args.limit], with_niqe=not args.no_niqe)
    except (ValueError, argparse.ArgumentTypeError) as exc:  # includes PairedDataError and a bad --strength
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result["data"] = str(pairs_dir)
    print(format_report(result))
    if "exposures" in result:
        print("\n" + format_exposures(result["exposures"], result["count"]))
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
    return 0
