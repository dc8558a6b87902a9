"""Model loading for evaluation (checkpoint and ONNX) and the `evaluate` command end to end.

The tiny random-weight network keeps everything fast: the point is the plumbing (loading, padding,
metrics, files, JSON), not the enhancement quality. CLI tests read 2 real pairs from $FRLIE_DATA.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.checkpoint import save_weights
from model.network import FRLIE, FRLIEConfig
from training import colour_bench
from training.__main__ import main
from training.data import list_pairs, load_rgb
from training.evaluate import COMPARISON_SHEET, ENHANCED_DIR, METRIC_KEYS, evaluate_model
from training.export import export_onnx
from training.figures import COLOUR_PANEL_WIDTH, FIGURE_MAX_BYTES, GAP
from training.inference import load_enhancer, pad_image
from training.metrics import psnr

N_IMAGES = 2
BASELINE_NAMES = {"input", "gamma", "hist_eq", "clahe"}


@pytest.fixture(scope="module")
def tiny_model() -> FRLIE:
    torch.manual_seed(0)
    return FRLIE(FRLIEConfig(width=8, fr_blocks=1)).eval()


@pytest.fixture(scope="module")
def checkpoint(tiny_model: FRLIE, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_weights(tiny_model, path)
    return path


@pytest.fixture(scope="module")
def onnx_file(tiny_model: FRLIE, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(tiny_model, path)
    return path


# --------------------------------------------------------------------------- loading (no data set)


@pytest.mark.parametrize("shape", [(37, 53, 3), (10, 13, 3), (64, 48, 3)])
def test_onnx_and_checkpoint_enhancers_agree_on_any_size(checkpoint: Path, onnx_file: Path, shape: tuple) -> None:
    # Odd sizes and sides below the network's minimum exercise the pad-and-crop path of both runtimes.
    image = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    from_torch, from_onnx = load_enhancer(checkpoint), load_enhancer(onnx_file)
    assert (from_torch.kind, from_onnx.kind) == ("checkpoint", "onnx")
    assert "CPUExecutionProvider" in from_onnx.description
    a, b = from_torch(image), from_onnx(image)
    assert a.shape == b.shape == shape and a.dtype == b.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # float rounding may flip one level


def test_pad_image_reaches_a_multiple_of_four_and_the_minimum_side() -> None:
    assert pad_image(np.zeros((37, 53, 3), np.uint8)).shape == (40, 56, 3)
    assert pad_image(np.zeros((3, 1, 3), np.uint8)).shape == (20, 20, 3)


def test_load_enhancer_rejects_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_enhancer(tmp_path / "missing.pt")
    for name in ("garbage.pt", "garbage.onnx"):
        (tmp_path / name).write_bytes(b"not a model")
        with pytest.raises(ValueError, match="not a loadable"):
            load_enhancer(tmp_path / name)
    with pytest.raises(ValueError, match="device"):
        load_enhancer(tmp_path / "garbage.pt", device="tpu")


def test_enhancer_rejects_non_rgb_input(checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="uint8"):
        load_enhancer(checkpoint)(np.zeros((32, 32), np.uint8))


# --------------------------------------------------------------------------- CLI on real pairs


def _run_evaluate(model: Path, data: Path, out: Path, *extra: str) -> dict:
    json_path = out / "result.json"
    argv = ["evaluate", "--model", str(model), "--data", str(data), "--limit", str(N_IMAGES), "--json", str(json_path)]
    assert main([*argv, *extra]) == 0
    return json.loads(json_path.read_text())


def _assert_plausible(scores: dict) -> None:
    assert set(scores) >= set(METRIC_KEYS)
    assert all(isinstance(scores[key], float) and math.isfinite(scores[key]) for key in METRIC_KEYS), scores
    assert 3.0 < scores["psnr"] < 60.0
    assert 0.0 < scores["ssim"] <= 1.0
    assert 3.0 < scores["psnr_gt_mean"] < 60.0
    assert scores["niqe"] > 0.0


@pytest.fixture(scope="module")
def checkpoint_run(checkpoint: Path, lol_pairs: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """One CLI run on the data root (split resolved to val/), with every output switched on."""
    out = tmp_path_factory.mktemp("evaluate")
    first_name = list_pairs(lol_pairs / "val")[0].name
    figure = (
        "--figure",
        Path(first_name).stem,
        "--figure-out",
        str(out / "figure.jpg"),
        "--exposure-figure-out",
        str(out / "exposures.jpg"),
        "--colour-figure-out",
        str(out / "colour.jpg"),
    )
    return _run_evaluate(checkpoint, lol_pairs, out, "--save-dir", str(out / "saved"), *figure), out


def test_cli_json_has_the_documented_structure(checkpoint_run: tuple[dict, Path], checkpoint: Path) -> None:
    result, _ = checkpoint_run
    assert str(checkpoint) in result["model"]
    assert result["count"] == N_IMAGES and len(result["images"]) == N_IMAGES
    expected_names = [pair.name for pair in list_pairs(Path(result["data"]))[:N_IMAGES]]
    assert [image["name"] for image in result["images"]] == expected_names
    for image in result["images"]:
        _assert_plausible(image)
    _assert_plausible(result["mean"])
    assert result["mean"]["psnr"] == pytest.approx(np.mean([image["psnr"] for image in result["images"]]))
    assert set(result["baselines"]) == BASELINE_NAMES
    for scores in result["baselines"].values():
        _assert_plausible(scores)


def test_cli_input_baseline_is_plain_psnr_of_low_against_high(checkpoint_run: tuple[dict, Path]) -> None:
    result, _ = checkpoint_run
    pairs = list_pairs(Path(result["data"]))[:N_IMAGES]
    direct = np.mean([psnr(load_rgb(pair.low), load_rgb(pair.high)) for pair in pairs])
    assert result["baselines"]["input"]["psnr"] == pytest.approx(direct, abs=1e-9)


def test_cli_writes_images_sheet_and_small_figure(checkpoint_run: tuple[dict, Path]) -> None:
    result, out = checkpoint_run
    saved = out / "saved"
    for image in result["images"]:
        written = load_rgb(saved / ENHANCED_DIR / f"{Path(image['name']).stem}.png")
        assert written.shape == (400, 600, 3)
    sheet = load_rgb(saved / COMPARISON_SHEET)
    assert sheet.shape[1] < 1000 and sheet.shape[0] < 400 * N_IMAGES  # downscaled, one row per image
    for name in ("figure.jpg", "exposures.jpg", "colour.jpg"):
        figure = out / name
        assert figure.read_bytes()[:2] == b"\xff\xd8"  # JPEG
        assert 0 < figure.stat().st_size < FIGURE_MAX_BYTES
    rows = Image.open(out / "exposures.jpg")
    assert rows.height > rows.width / 2  # two rows of input | output
    colour = Image.open(out / "colour.jpg")  # a row of upload | answer | tone curve | original per held-out photo
    assert colour.width == 4 * COLOUR_PANEL_WIDTH + 5 * GAP
    assert colour.height > len(colour_bench.HELD_OUT_PHOTOS) * 100


def test_cli_with_onnx_model_matches_checkpoint(
    onnx_file: Path, checkpoint_run: tuple[dict, Path], lol_pairs: Path, tmp_path: Path
) -> None:
    # --data given as the split folder itself; baselines off since they do not depend on the model.
    result = _run_evaluate(onnx_file, lol_pairs / "val", tmp_path, "--no-baselines")
    assert result["model"].startswith("onnx ")
    assert result["baselines"] == {}
    reference, _ = checkpoint_run
    for from_onnx, from_torch in zip(result["images"], reference["images"], strict=True):
        assert from_onnx["name"] == from_torch["name"]
        assert from_onnx["psnr"] == pytest.approx(from_torch["psnr"], abs=0.01)
        assert from_onnx["ssim"] == pytest.approx(from_torch["ssim"], abs=1e-3)


def test_cli_reports_bad_paths_without_traceback(
    checkpoint: Path, lol_pairs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", "--model", str(tmp_path / "none.pt"), "--data", str(lol_pairs)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(checkpoint), "--data", str(tmp_path)]) == 2
    assert "low/" in capsys.readouterr().err
    figure = ["--figure", "nope", "--figure-out", str(tmp_path / "f.jpg")]
    assert main(["evaluate", "--model", str(checkpoint), "--data", str(lol_pairs), *figure]) == 2
    assert "no image named" in capsys.readouterr().err


def test_means_leave_identical_outputs_out_of_psnr_and_count_them() -> None:
    """auto strength returns bright uploads unchanged (PSNR inf): the PSNR means stay finite."""
    from training.evaluate import format_exposures, mean_scores

    rows = [
        {"psnr": 20.0, "ssim": 0.5, "psnr_gt_mean": 22.0, "niqe": None},
        {"psnr": math.inf, "ssim": 1.0, "psnr_gt_mean": math.inf, "niqe": None},
        {"psnr": 30.0, "ssim": 0.9, "psnr_gt_mean": 31.0, "niqe": None},
    ]
    means = mean_scores(rows)
    assert means["psnr"] == pytest.approx(25.0) and means["psnr_gt_mean"] == pytest.approx(26.5)
    assert means["ssim"] == pytest.approx(0.8) and means["niqe"] is None
    assert means["identical"] == 1
    table = format_exposures({"high": means}, count=3)
    header, _, row, note = table.splitlines()
    assert header.split()[-1] == "identical" and row.split()[-1] == "1" and "means over the other" in note


def test_evaluate_model_without_cli_baselines_or_niqe(checkpoint: Path, lol_pairs: Path) -> None:
    # The fast form training uses for validation.
    pairs = list_pairs(lol_pairs / "val")[:1]
    result = evaluate_model(load_enhancer(checkpoint), pairs, baselines=None, with_niqe=False, progress=False)
    assert result["baselines"] == {}
    assert result["images"][0]["niqe"] is None and result["mean"]["niqe"] is None
    assert math.isfinite(result["mean"]["psnr"])


def test_exposure_rows_on_real_pairs(checkpoint: Path, lol_pairs: Path, tmp_path: Path) -> None:
    """`evaluate --exposures`: named rows for brightened lows and for the high image against itself."""
    from training.data import EXPOSURE_VARIANTS
    from training.evaluate import evaluate_exposures

    pairs = list_pairs(lol_pairs / "val")[:2]
    low, high = load_rgb(pairs[0].low), load_rgb(pairs[0].high)
    doubled = EXPOSURE_VARIANTS["low x2"](low, high)
    np.testing.assert_array_equal(doubled, np.clip(low.astype(int) * 2, 0, 255))
    np.testing.assert_array_equal(EXPOSURE_VARIANTS["high"](low, high), high)

    enhancer = load_enhancer(checkpoint)
    rows = evaluate_exposures(enhancer, pairs, progress=False)
    assert list(rows) == ["low", "low x2", "low x4", "high"]
    plain = evaluate_model(enhancer, pairs, baselines=None, with_niqe=False, progress=False)["mean"]
    assert rows["low"]["psnr"] == pytest.approx(plain["psnr"])
    assert len({round(row["psnr"], 6) for row in rows.values()}) == 4  # four different inputs


def test_the_service_pipeline_at_strength_zero_hands_back_the_upload(lol_pairs: Path, tmp_path: Path) -> None:
    """`evaluate --strength` runs the service's own pipeline: at strength 0 the high row is exact
    (counted as identical, no PSNR mean to take) and the low row is the input's score; `--exposures`
    scores every row on PNG and on JPEG q90 uploads."""
    from service_helpers import export_tiny_model

    from training.data import EXPOSURE_VARIANTS
    from training.evaluate import ServedModel, as_jpeg, evaluate_exposures

    model = export_tiny_model(tmp_path)
    pairs = list_pairs(lol_pairs / "val")[:2]
    with ServedModel(model, 0.0) as served:
        untouched = evaluate_exposures(served, pairs, progress=False)
        assert untouched["high"]["psnr"] is None and untouched["high"]["identical"] == len(pairs)
        assert untouched["high"]["ssim"] == pytest.approx(1.0) and untouched["low"]["identical"] == 0
        lows = [psnr(load_rgb(p.low), load_rgb(p.high)) for p in pairs]
        assert untouched["low"]["psnr"] == pytest.approx(np.mean(lows))
        # JPEG uploads: at strength 0 the answer is the JPEG itself, scored below the lossless upload.
        as_sent = evaluate_exposures(served.uploading(60), pairs, progress=False)
        jpeg_psnr = np.mean([psnr(as_jpeg(load_rgb(p.high), 60), load_rgb(p.high)) for p in pairs])
        assert as_sent["high"]["psnr"] == pytest.approx(jpeg_psnr) and as_sent["high"]["psnr"] < 60

    out = tmp_path / "result.json"
    args = ["evaluate", "--model", str(model), "--data", str(lol_pairs), "--limit", "2", "--no-baselines"]
    assert main([*args, "--no-niqe", "--exposures", "--strength", "auto", "--json", str(out)]) == 0
    document = json.loads(out.read_text())
    assert set(document["exposures"]) == {"PNG", "JPEG q90"} and "strength auto" in document["model"]
    assert all(set(rows) == set(EXPOSURE_VARIANTS) for rows in document["exposures"].values())


def test_upload_jpeg_needs_a_valid_quality_and_strength_an_onnx_model(checkpoint: Path, lol_pairs: Path) -> None:
    base = ["evaluate", "--model", str(checkpoint), "--data", str(lol_pairs), "--limit", "1", "--no-baselines"]
    assert main([*base, "--no-niqe", "--upload-jpeg", "0"]) == 2
    assert main([*base, "--no-niqe", "--strength", "1"]) == 2  # the service runs ONNX files only
