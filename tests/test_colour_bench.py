"""training.colour_bench, the non-LOL benchmark: its photos, its camera model of a dark capture, its
tone-curve oracle and its scores, on the real package-shipped photos (no model needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training import camera
from training import colour_bench as bench


def test_every_photo_ships_with_its_package_and_a_licence_and_some_are_held_out() -> None:
    for photo in bench.PHOTOS:
        rgb = bench.load_photo(photo)
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and min(rgb.shape[:2]) >= 256, photo.name
        assert bench.mean_luma(rgb) > 0.2 and photo.licence  # a normal exposure, and usable
    splits = [photo.split for photo in bench.PHOTOS]
    assert splits.count(bench.HELD_OUT) >= 2 and splits.count(bench.FIT) >= 2


def test_srgb_transfer_functions_invert_each_other() -> None:
    values = np.linspace(0.0, 1.0, 1001)
    np.testing.assert_allclose(camera.linear_to_srgb(camera.srgb_to_linear(values)), values, atol=1e-9)
    assert camera.srgb_to_linear(np.array([0.5]))[0] == pytest.approx(0.2140, abs=1e-4)


@pytest.mark.parametrize("divisor", [8, 16])
def test_a_dark_capture_has_a_kth_of_the_light_and_shot_noise(divisor: int) -> None:
    original = bench.load_photo(bench.PHOTOS[3])
    dark = camera.darken(original, divisor, np.random.default_rng(0))
    light = camera.srgb_to_linear(original / 255.0).mean()
    captured = camera.srgb_to_linear(dark / 255.0).mean()
    assert captured == pytest.approx(light / divisor, rel=0.05)
    again = camera.darken(original, divisor, np.random.default_rng(1))
    assert np.abs(again.astype(int) - dark).mean() > 0.5  # the noise is drawn, not fixed


def test_the_oracle_reaches_the_original_brightness_and_keeps_colour_order() -> None:
    original = bench.load_photo(bench.PHOTOS[3])
    dark = camera.darken(original, 8, np.random.default_rng(0))
    oracle = bench.tone_curve_oracle(dark, original)
    assert bench.mean_luma(oracle) == pytest.approx(bench.mean_luma(original), abs=0.003)
    # One curve for every channel: wherever the dark pixel has R > G, the brightened one does too.
    redder = dark[..., 0].astype(int) > dark[..., 1].astype(int) + 2
    assert (oracle[..., 0][redder] >= oracle[..., 1][redder]).all()
    assert bench.mean_ciede2000(original, original) == 0.0
    assert bench.mean_ciede2000(oracle, original) < bench.mean_ciede2000(dark, original)


def test_the_benchmark_scores_each_photo_darkening_and_upload_against_the_oracle() -> None:
    """The uploads themselves as the 'answer': far darker than the oracle's, so they score worse."""
    photos = (bench.PHOTOS[0], bench.PHOTOS[3])
    rows = bench.benchmark(lambda quality: lambda image: image, photos, divisors=(8,))
    assert [(r.photo, r.upload) for r in rows] == [
        ("astronaut", "PNG"),
        ("astronaut", "JPEG q90"),
        ("coffee", "PNG"),
        ("coffee", "JPEG q90"),
    ]
    assert all(r.psnr < r.oracle_psnr and r.ciede2000 > r.oracle_ciede2000 for r in rows)
    assert bench.done_when(rows) == {"JPEG q90": False, "PNG": False}
    table = bench.format_rows(rows)
    assert "| held-out (1 photos x 1 darkenings) | PNG |" in table and "coffee (held-out) /8 JPEG q90" in table


def test_a_cast_moves_the_chromaticity_more_than_a_tone_curve_and_denoising_does_not_count() -> None:
    original = bench.load_photo(bench.PHOTOS[3])
    dark = camera.darken(original, 8, np.random.default_rng(0))
    oracle = bench.tone_curve_oracle(dark, original)
    green = np.clip(oracle.astype(np.float64) * [0.85, 1.1, 0.95], 0, 255).astype(np.uint8)
    assert bench.chromaticity_shift(dark, dark) == 0.0
    assert bench.chromaticity_shift(green, dark) > 1.2 * bench.chromaticity_shift(oracle, dark)
    # Block means: the noise-free original, at the dark photo's brightness, barely moves its colour.
    clean = bench.tone_curve_oracle(original, dark)
    assert bench.chromaticity_shift(clean, dark) < bench.chromaticity_shift(green, dark) / 2
    rows = bench.benchmark(lambda quality: lambda image: image, (bench.PHOTOS[3],), divisors=(8,))
    assert all(r.chroma_shift == 0.0 or r.upload.startswith("JPEG") for r in rows)
    assert "chroma shift" in bench.format_rows(rows)


def test_a_capture_is_white_balanced_so_red_and_blue_are_noisier_than_green() -> None:
    """Real cameras amplify red and blue after capture; the model must too, or a network could tell its
    captures from real ones by their noise. Its colours stay the scene's on average."""
    original = bench.load_photo(bench.PHOTOS[0])
    ratios = []
    for seed in range(4):
        dark = camera.darken(original, 8, np.random.default_rng(seed))
        noise = camera.channel_noise(dark)
        assert noise is not None
        ratios.append((noise[0] / noise[1], noise[2] / noise[1]))
        light = camera.srgb_to_linear(original / 255.0).mean(axis=(0, 1))
        captured = camera.srgb_to_linear(dark / 255.0).mean(axis=(0, 1))
        np.testing.assert_allclose(captured, light / 8, rtol=0.06)
    assert all(red > 1.05 and blue > 1.05 for red, blue in ratios)
    assert len({round(red, 2) for red, _ in ratios}) == len(ratios)  # each capture draws its own gains
    gains = camera.white_balance_gains(np.random.default_rng(0))
    assert gains[1] == 1.0 and camera.WHITE_BALANCE_RED[0] <= gains[0] <= camera.WHITE_BALANCE_RED[1]


def test_channel_noise_reads_a_channel_amplified_after_capture() -> None:
    """A flat gray scene at the same output level in every channel: red and green collect its light,
    blue a quarter of it and is amplified x4 afterwards, so blue reads sqrt(4) = 2 times green."""
    rng = np.random.default_rng(0)
    electrons = np.full((256, 256, 3), 0.05 * 4000.0)
    linear = rng.poisson(electrons) / 4000.0
    linear[..., 2] = rng.poisson(electrons[..., 2] / 4.0) / 4000.0 * 4.0
    image = np.rint(camera.linear_to_srgb(linear) * 255.0).astype(np.uint8)
    red, green, blue = camera.channel_noise(image) or (0.0, 1.0, 0.0)
    assert red / green == pytest.approx(1.0, abs=0.1)
    assert blue / green == pytest.approx(2.0, abs=0.25)
    assert camera.channel_noise(np.zeros((64, 64, 3), np.uint8)) is None


def test_the_benchmark_captures_read_like_real_lol_pairs_lows(lol_pairs: Path) -> None:
    """The white-balance ranges reproduce real captures' per-channel noise: the medians of red / green
    and blue / green over the benchmark's captures are within 0.15 of those over the train lows."""
    from PIL import Image

    def median_ratios(readings: list[tuple[float, float, float] | None]) -> np.ndarray:
        usable = [(r / g, b / g) for r, g, b in (reading for reading in readings if reading)]
        return np.median(np.array(usable), axis=0)

    lows = sorted((lol_pairs / "train" / "low").glob("*.png"))[::4]
    real = median_ratios([camera.channel_noise(np.asarray(Image.open(path).convert("RGB"))) for path in lows])
    simulated = median_ratios(
        [
            camera.channel_noise(bench.dark_capture(photo, bench.load_photo(photo), divisor))
            for photo in bench.PHOTOS
            for divisor in (8, 16)
        ]
    )
    np.testing.assert_allclose(simulated, real, atol=0.15)
    assert (real > 1.2).all()  # red and blue noisier than green: what a capture without white balance lacks
