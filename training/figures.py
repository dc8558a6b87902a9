"""Figures: the comparison sheet and README JPEGs of `evaluate`, and the validation curves of `curves`."""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from training.data import EXPOSURE_VARIANTS, ImagePair, load_rgb
from training.inference import Enhance
from training.runs import read_val_log

SHEET_TILE_WIDTH = 200  # px per panel: 3 panels per row keeps the sheet ~620 px wide
COLOUR_PANEL_WIDTH = 240  # px per panel of the non-LOL colour figure: 4 panels per row, ~980 px
FIGURE_MAX_BYTES = 300_000  # README figures must stay small
FIGURE_QUALITIES = (92, 88, 84, 80, 75, 70, 60, 50)
GAP = 4
Panel = tuple[np.ndarray, str]  # an image and its label


def _thumbnail(image: np.ndarray, width: int) -> np.ndarray:
    """Downscale to ``width`` px wide (never upscale), keeping the aspect ratio."""
    height, current = image.shape[:2]
    if current <= width:
        return image
    size = (width, max(1, round(height * width / current)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def _label(canvas: Image.Image, xy: tuple[int, int], text: str) -> None:
    """Small white text on a dark box, readable on dark and bright images alike."""
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=12)
    left, top, right, bottom = draw.textbbox((xy[0] + 4, xy[1] + 3), text, font=font)
    draw.rectangle((left - 3, top - 2, right + 3, bottom + 2), fill=(0, 0, 0))
    draw.text((xy[0] + 4, xy[1] + 3), text, font=font, fill=(255, 255, 255))


def compose(rows: Sequence[Sequence[Panel]]) -> Image.Image:
    """Grid of labelled panels, one row per entry, separated by white gaps."""
    row_heights = [max(panel.shape[0] for panel, _ in row) for row in rows]
    width = max(sum(panel.shape[1] for panel, _ in row) + GAP * (len(row) + 1) for row in rows)
    height = sum(row_heights) + GAP * (len(rows) + 1)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    top = GAP
    for row, row_height in zip(rows, row_heights, strict=True):
        left = GAP
        for panel, text in row:
            canvas.paste(Image.fromarray(panel), (left, top))
            _label(canvas, (left, top), text)
            left += panel.shape[1] + GAP
        top += row_height + GAP
    return canvas


def sheet_row(
    name: str, low: np.ndarray, enhanced: np.ndarray, high: np.ndarray, scores: Mapping[str, float | None]
) -> list[Panel]:
    """One row of the comparison sheet: low | enhanced (with its PSNR) | reference, as thumbnails."""
    return [
        (_thumbnail(low, SHEET_TILE_WIDTH), f"low  {name}"),
        (_thumbnail(enhanced, SHEET_TILE_WIDTH), f"enhanced  {scores['psnr']:.2f} dB"),
        (_thumbnail(high, SHEET_TILE_WIDTH), "reference"),
    ]


def _jpeg_under(image: Image.Image, max_bytes: int) -> bytes:
    """Highest listed JPEG quality that fits ``max_bytes``; halves the size if none does."""
    while True:
        for quality in FIGURE_QUALITIES:
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=quality, optimize=True, progressive=True)
            if buffer.tell() <= max_bytes:
                return buffer.getvalue()
        image = image.resize((max(1, image.width // 2), max(1, image.height // 2)), Image.Resampling.LANCZOS)


def _write_jpeg(rows: Sequence[Sequence[Panel]], out_path: str | Path, max_bytes: int) -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(_jpeg_under(compose(rows), max_bytes))
    return out_path


def write_before_after(
    enhancer: Enhance, pair: ImagePair, out_path: str | Path, max_bytes: int = FIGURE_MAX_BYTES
) -> Path:
    """One JPEG, low-light input | enhanced output, for the README; kept under ``max_bytes``."""
    low = load_rgb(pair.low)
    return _write_jpeg([[(low, f"input (low light)  {pair.name}"), (enhancer(low), "FRLIE")]], out_path, max_bytes)


def write_colour_figure(
    uploading: Callable[[int | None], Enhance],
    out_path: str | Path,
    divisor: int = 16,
    max_bytes: int = FIGURE_MAX_BYTES,
) -> Path:
    """One JPEG, a row per held-out photo of the non-LOL benchmark (training.colour_bench): the photo
    captured with 1/``divisor`` of its light and sent as JPEG q90 (what phones send), the answer, the
    hue-keeping tone curve told the original's brightness, and the original."""
    from training import colour_bench

    quality = colour_bench.JPEG_QUALITY
    rows = []
    for photo in colour_bench.HELD_OUT_PHOTOS:
        original = colour_bench.load_photo(photo)
        dark = colour_bench.dark_capture(photo, original, divisor)
        sent = colour_bench.as_uploaded(dark, quality)
        panels = [
            (f"upload: 1/{divisor} of the light, JPEG q{quality}", sent),
            ("FRLIE answer", uploading(quality)(dark)),
            ("tone curve, told the brightness", colour_bench.tone_curve_oracle(sent, original)),
            (f"original  {photo.name}", original),
        ]
        rows.append([(_thumbnail(image, COLOUR_PANEL_WIDTH), label) for label, image in panels])
    return _write_jpeg(rows, out_path, max_bytes)


def write_exposure_figure(
    enhancer: Enhance,
    pair: ImagePair,
    out_path: str | Path,
    variants: Sequence[str] = ("low x4", "high"),
    max_bytes: int = FIGURE_MAX_BYTES,
) -> Path:
    """One JPEG with a row per exposure variant of ``pair`` (input | output): how the model treats a
    moderately dark photo and one that is already well exposed."""
    low, high = load_rgb(pair.low), load_rgb(pair.high)
    rows = []
    for name in variants:
        shown = EXPOSURE_VARIANTS[name](low, high)
        label = "well-exposed input" if name == "high" else f"moderately dark input ({name})"
        rows.append([(shown, f"{label}  {pair.name}"), (enhancer(shown), "FRLIE")])
    return _write_jpeg(rows, out_path, max_bytes)


def plot_curves(runs: dict[str, Path], out: Path, reference_db: float | None = None) -> None:
    """Validation PSNR over steps of each run folder (its ``val.csv``) as a PNG, with an optional target line."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for label, run_dir in runs.items():
        rows = read_val_log(run_dir)
        steps, psnr = [row["step"] for row in rows], [row["psnr"] for row in rows]
        ax.plot(steps, psnr, marker="o", markersize=3, label=f"{label} (best {max(psnr):.2f} dB)")
    if reference_db is not None:
        ax.axhline(reference_db, color="gray", linestyle="--", linewidth=1, label=f"target {reference_db} dB")
    ax.set_xlabel("training step")
    ax.set_ylabel("validation PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
