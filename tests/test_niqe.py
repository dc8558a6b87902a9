"""MATLAB-compatible NIQE: reference values, input handling, the `niqe` CLI subcommand."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

skimage_data = pytest.importorskip("skimage.data")

from training import niqe as niqe_module  # noqa: E402
from training.niqe import add_parser, imresize, niqe, niqe_file  # noqa: E402

# Published MATLAB-compatible values (whole image, no border crop, Y channel). The reference
# implementation ran in float32, so agreement is to ~1e-3, not to the last digit.
REFERENCE_TOLERANCE = 1e-3


def _camera_rgb() -> np.ndarray:
    return np.repeat(skimage_data.camera()[..., None], 3, axis=2)


@pytest.mark.parametrize(
    ("name", "load", "expected"),
    [
        ("camera", _camera_rgb, 3.155216),
        ("astronaut", skimage_data.astronaut, 3.064948),
        ("coffee", skimage_data.coffee, 4.115242),
    ],
)
def test_matches_matlab_reference(name: str, load, expected: float) -> None:
    assert niqe(load()) == pytest.approx(expected, abs=REFERENCE_TOLERANCE), name


def test_gray_scores_like_gray_repeated_to_rgb() -> None:
    gray = skimage_data.camera()
    assert niqe(gray) == pytest.approx(niqe(_camera_rgb()), abs=1e-12)
    assert niqe(gray[..., None]) == pytest.approx(niqe(gray), abs=1e-12)


def test_float_input_scores_like_uint8() -> None:
    image = skimage_data.coffee()
    assert niqe(image.astype(np.float64)) == pytest.approx(niqe(image), abs=1e-12)


def test_noise_scores_worse() -> None:
    clean = skimage_data.astronaut()
    rng = np.random.default_rng(0)
    noisy = np.clip(clean + rng.normal(0.0, 25.0, clean.shape), 0, 255).astype(np.uint8)
    assert niqe(noisy) > niqe(clean) + 1.0


@pytest.mark.parametrize("shape", [(64, 64), (191, 191, 3), (96, 96, 3), (95, 400)])
def test_too_small_image_raises(shape: tuple[int, ...]) -> None:
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    with pytest.raises(ValueError, match="too small"):
        niqe(image)


def test_two_blocks_are_enough() -> None:
    image = skimage_data.astronaut()[:96, :192]
    assert math.isfinite(niqe(image))


@pytest.mark.parametrize(
    "bad",
    [np.zeros((200, 200, 4), np.uint8), np.full((200, 200), 300.0), np.full((200, 200), np.nan)],
)
def test_invalid_input_raises(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        niqe(bad)


def test_flat_image_raises_clearly() -> None:
    with pytest.raises(ValueError, match="flat"):
        niqe(np.full((256, 256), 128, np.uint8))


def test_imresize_keeps_constants_and_halves_size() -> None:
    constant = np.full((96, 144), 37.25)
    resized = imresize(constant, 0.5)
    assert resized.shape == (48, 72)
    assert np.array_equal(resized, np.full((48, 72), 37.25))
    # Odd sizes round up, as MATLAB's ceil(in * scale).
    assert imresize(np.zeros((97, 5)), 0.5).shape == (49, 3)


def test_imresize_preserves_linear_ramp_away_from_borders() -> None:
    ramp = np.tile(np.arange(64, dtype=np.float64), (64, 1))
    resized = imresize(ramp, 0.5)
    # Output column j samples input position 2j + 0.5 (0-based); the symmetric kernel keeps ramps.
    expected = 2 * np.arange(32) + 0.5
    np.testing.assert_allclose(resized[10, 4:-4], expected[4:-4], atol=1e-12)


def test_pristine_model_shapes() -> None:
    mean, covariance, window = niqe_module.pristine_model()
    assert mean.shape == (36,) and covariance.shape == (36, 36) and window.shape == (7, 7)
    assert window.sum() == pytest.approx(1.0)
    assert (niqe_module.PRISTINE_PARAMS_PATH.parent / "NIQE-NOTICE.md").is_file()


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m training")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_scores_each_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gray_path = tmp_path / "camera.png"
    rgb_path = tmp_path / "coffee.png"
    Image.fromarray(skimage_data.camera()).save(gray_path)
    Image.fromarray(skimage_data.coffee()).save(rgb_path)

    assert _cli(["niqe", str(gray_path), str(rgb_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    scores = {}
    for line in lines:
        path, score = line.split("\t")
        assert len(score.split(".")[1]) >= 4
        scores[path] = float(score)
    assert scores[str(gray_path)] == pytest.approx(3.155216, abs=REFERENCE_TOLERANCE)
    assert scores[str(rgb_path)] == pytest.approx(4.115242, abs=REFERENCE_TOLERANCE)
    assert niqe_file(gray_path) == pytest.approx(niqe(skimage_data.camera()), abs=1e-12)


def test_cli_reports_unreadable_file_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "coffee.png"
    Image.fromarray(skimage_data.coffee()).save(good)
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    missing = tmp_path / "missing.png"

    assert _cli(["niqe", str(bad), str(good), str(missing)]) != 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [f"{good}\t{niqe_file(good):.6f}"]
    assert f"error: {bad}" in captured.err
    assert f"error: {missing}" in captured.err
