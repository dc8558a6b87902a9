"""A non-LOL benchmark (issue 22): real colour photos, darkened as a camera captures a dark scene.

lol-pairs is indoor scenes whose lows carry a strong red cast (../shared/reference/colour-trial.md),
so it cannot show what the service does to the colours of other photos. This benchmark takes
well-exposed photos that ship inside packages the project installs (scikit-image's and matplotlib's
sample data, each with its licence recorded in ``PHOTOS``), darkens each with a physically based
low-light model (``darken``) and sends the dark version through the enhancer as PNG and as JPEG q90.
It scores the answer against the original photo: PSNR, and mean CIEDE2000 (the perceptual colour
difference; skimage.color). The anchor row is a tone curve that is *told* the original's mean
brightness (``tone_curve_oracle``): a per-pixel gamma keeps hue, so a network that changes colours
more than it does shows it here.

Photos are split once: ``held-out`` ones are never used to train or to choose a constant; only
their rows are the benchmark's result. ``fit`` ones may be used for either.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from training.camera import darken
from training.metrics import psnr

Enhance = Callable[[np.ndarray], np.ndarray]

HELD_OUT, FIT = "held-out", "fit"
EXPOSURE_DIVISORS = (8, 16)  # the scene gets 1/k of the light of the well-exposed original
JPEG_QUALITY = 90
SEED = 0


@dataclass(frozen=True)
class Photo:
    name: str
    package: str  # the installed distribution whose sample data holds it
    path: str  # inside that package
    licence: str
    split: str


PHOTOS = (
    Photo("astronaut", "skimage", "data/astronaut.png", "NASA; no known copyright restrictions, public domain", FIT),
    Photo("chelsea", "skimage", "data/chelsea.png", "CC0 by the photographer (Stefan van der Walt)", FIT),
    Photo("rocket", "skimage", "data/rocket.jpg", "SpaceX, released into the public domain (CC0)", FIT),
    Photo("coffee", "skimage", "data/coffee.png", "CC0 by the photographer (Rachel Michetti)", HELD_OUT),
    Photo(
        "grace_hopper",
        "matplotlib",
        "mpl-data/sample_data/grace_hopper.jpg",
        "US Navy photograph, public domain",
        HELD_OUT,
    ),
    # scikit-learn's two sample photos (its datasets/images/README.txt): outdoor colour that lol-pairs
    # lacks, a painted temple roof under daylight and a flower.
    Photo("china", "sklearn", "datasets/images/china.jpg", "CC BY 2.0, danielbuechele on Flickr", HELD_OUT),
    Photo("flower", "sklearn", "datasets/images/flower.jpg", "CC BY 2.0, vultilion on Flickr", HELD_OUT),
)
HELD_OUT_PHOTOS = tuple(photo for photo in PHOTOS if photo.split == HELD_OUT)


def load_photo(photo: Photo) -> np.ndarray:
    """The photo as H x W x 3 uint8, from the installed package's files."""
    import importlib

    module = importlib.import_module(photo.package)
    path = Path(module.__file__ or "").parent / photo.path
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def mean_luma(rgb: np.ndarray) -> float:
    return float((rgb.astype(np.float64) / 255.0 @ np.array([0.299, 0.587, 0.114])).mean())


def tone_curve_oracle(upload: np.ndarray, original: np.ndarray) -> np.ndarray:
    """``upload`` brightened by one gamma curve, applied to every channel, whose exponent makes its
    mean luma equal the original's (bisection): the best a hue-keeping tone curve can do when it is
    told the answer's brightness."""
    target, values = mean_luma(original), upload.astype(np.float64) / 255.0
    low, high = 0.05, 1.0  # exponents: 1.0 leaves the upload as it is, smaller ones brighten
    for _ in range(40):
        middle = (low + high) / 2
        if mean_luma(np.rint(values**middle * 255.0)) > target:
            low = middle
        else:
            high = middle
    return np.rint(values ** ((low + high) / 2) * 255.0).astype(np.uint8)


def mean_ciede2000(answer: np.ndarray, original: np.ndarray) -> float:
    """Mean CIEDE2000 colour difference between two uint8 sRGB images (D65 Lab)."""
    from skimage.color import deltaE_ciede2000, rgb2lab

    return float(deltaE_ciede2000(rgb2lab(answer), rgb2lab(original)).mean())


CHROMA_BLOCK = 8  # pixels: chromaticity is compared on block means, so removing noise is not a colour shift
CHROMA_MIN_LEVEL = 4.0 / 255.0  # blocks darker than this (mean of R, G, B) have no reliable colour


def chromaticity_shift(answer: np.ndarray, upload: np.ndarray) -> float:
    """How far the answer's colours moved from the upload's: the mean distance in chromaticity
    (r, g) = (R, G) / (R + G + B) between ``CHROMA_BLOCK`` block means of two uint8 sRGB images, over
    blocks of the upload bright enough to have a colour. A tone curve moves it a little; a cast more."""
    height, width = (upload.shape[0] // CHROMA_BLOCK) * CHROMA_BLOCK, (upload.shape[1] // CHROMA_BLOCK) * CHROMA_BLOCK

    def blocks(image: np.ndarray) -> np.ndarray:
        cropped = image[:height, :width].astype(np.float64) / 255.0
        return cropped.reshape(height // CHROMA_BLOCK, CHROMA_BLOCK, width // CHROMA_BLOCK, CHROMA_BLOCK, 3).mean(
            axis=(1, 3)
        )

    a, u = blocks(answer), blocks(upload)
    usable = u.mean(axis=-1) >= CHROMA_MIN_LEVEL

    def chromaticity(blocks: np.ndarray) -> np.ndarray:
        return blocks[..., :2] / np.maximum(blocks.sum(axis=-1, keepdims=True), 1e-6)

    return float(np.linalg.norm(chromaticity(a) - chromaticity(u), axis=-1)[usable].mean()) if usable.any() else 0.0


def dark_capture(photo: Photo, original: np.ndarray, divisor: int) -> np.ndarray:
    """``original`` captured with 1/``divisor`` of its light: one seeded noise draw per photo and divisor,
    the same in every run and every module that asks (the benchmark, the figure)."""
    return darken(original, divisor, np.random.default_rng((SEED, PHOTOS.index(photo), divisor)))


def as_uploaded(rgb: np.ndarray, jpeg_quality: int | None) -> np.ndarray:
    """What the service decodes from ``rgb`` sent as PNG (None) or JPEG at ``jpeg_quality``."""
    with Image.open(io.BytesIO(upload_bytes(rgb, jpeg_quality))) as image:
        return np.asarray(image.convert("RGB"))


def upload_bytes(rgb: np.ndarray, jpeg_quality: int | None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG" if jpeg_quality is None else "JPEG", quality=jpeg_quality or 95)
    return buffer.getvalue()


@dataclass(frozen=True)
class Row:
    photo: str
    split: str
    divisor: int
    upload: str  # PNG or JPEG q90
    psnr: float
    ciede2000: float
    oracle_psnr: float
    oracle_ciede2000: float
    chroma_shift: float = 0.0  # chromaticity_shift(answer, upload)
    oracle_chroma_shift: float = 0.0  # the same for the tone curve


def benchmark(
    uploading: Callable[[int | None], Enhance],
    photos: Sequence[Photo] = PHOTOS,
    divisors: Sequence[int] = EXPOSURE_DIVISORS,
) -> list[Row]:
    """Every photo, darkened by each divisor (one seeded noise draw per photo and divisor), uploaded
    as PNG and as JPEG q90 through ``uploading(quality)`` (None: PNG), scored against the original."""
    rows = []
    for photo in photos:
        original = load_photo(photo)
        for divisor in divisors:
            dark = dark_capture(photo, original, divisor)
            for upload, quality in (("PNG", None), (f"JPEG q{JPEG_QUALITY}", JPEG_QUALITY)):
                sent = as_uploaded(dark, quality)
                answer = uploading(quality)(dark)
                oracle = tone_curve_oracle(sent, original)
                rows.append(
                    Row(
                        photo.name,
                        photo.split,
                        divisor,
                        upload,
                        psnr(answer, original),
                        mean_ciede2000(answer, original),
                        psnr(oracle, original),
                        mean_ciede2000(oracle, original),
                        chromaticity_shift(answer, sent),
                        chromaticity_shift(oracle, sent),
                    )
                )
    return rows


def format_rows(rows: Sequence[Row]) -> str:
    """The per-split means, PNG and JPEG rows, service against the oracle; then every row."""
    lines = [
        "| photos | upload | service PSNR dB | oracle PSNR dB | service CIEDE2000 | oracle CIEDE2000 "
        "| chroma shift, service / tone curve |",
        "|---|---|---|---|---|---|---|",
    ]
    for split in (HELD_OUT, FIT):
        for upload in sorted({row.upload for row in rows}, reverse=True):
            mine = [row for row in rows if row.split == split and row.upload == upload]
            if not mine:
                continue
            mean = _means(mine)
            count = len({row.photo for row in mine})
            lines.append(
                f"| {split} ({count} photos x {len(mine) // count} darkenings) | {upload} | {mean['psnr']:.2f} | "
                f"{mean['oracle_psnr']:.2f} | {mean['ciede2000']:.2f} | {mean['oracle_ciede2000']:.2f} | "
                f"{mean['chroma_shift'] / max(mean['oracle_chroma_shift'], 1e-9):.2f}x |"
            )
    lines.append("")
    for row in rows:
        lines.append(
            f"{row.photo} ({row.split}) /{row.divisor} {row.upload}: {row.psnr:.2f} dB, dE {row.ciede2000:.2f}; "
            f"oracle {row.oracle_psnr:.2f} dB, dE {row.oracle_ciede2000:.2f}; "
            f"chroma shift {row.chroma_shift:.3f} (tone curve {row.oracle_chroma_shift:.3f})"
        )
    return "\n".join(lines)


def done_when(rows: Sequence[Row]) -> dict[str, bool]:
    """Issue 22's bar on the held-out rows, per upload kind: CIEDE2000 at most the oracle's and PSNR at
    least the oracle's + 1 dB (means over the held-out photos and divisors)."""
    verdict = {}
    for upload in sorted({row.upload for row in rows}):
        held = [row for row in rows if row.split == HELD_OUT and row.upload == upload]
        if held:
            mean = _means(held)
            verdict[upload] = bool(
                mean["ciede2000"] <= mean["oracle_ciede2000"] and mean["psnr"] >= mean["oracle_psnr"] + 1.0
            )
    return verdict


SCORES = ("psnr", "ciede2000", "oracle_psnr", "oracle_ciede2000", "chroma_shift", "oracle_chroma_shift")


def _means(rows: Sequence[Row]) -> dict[str, float]:
    return {key: float(np.mean([getattr(row, key) for row in rows])) for key in SCORES}
