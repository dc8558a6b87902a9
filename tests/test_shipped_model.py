"""The bundled model in model/weights: consistent files, and the quality bar of the project on real data.

The bar is the release floor of the default model on low -> high val pairs: the model's full effect
on inputs normalised as it was validated (no strength blend). 2.0-2.2 traded benchmark PSNR for
exposure robustness (floor 20.5 dB / 0.76); 2.3 gets the robustness from the service's noise-aware
normalisation and keeps the 1.1 network (23.58 dB / 0.799, see model/MODEL_CARD.md), so the floor is
back near the benchmark: 23 dB / 0.79.
The numbers are measured on the shipped ONNX file, never read back from where they were written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from model.checkpoint import load_weights
from model.contract import ONNX_NAME, TRAINING_RECORD_NAME, WEIGHTS_DIR, WEIGHTS_NAME
from training.data import list_pairs
from training.evaluate import evaluate_model, normalised
from training.inference import load_enhancer
from training.normalisation import ExposureNormalisation
from training.onnx_metadata import read_metadata

ONNX_FILE, TORCH_FILE, CONFIG_FILE = (WEIGHTS_DIR / name for name in (ONNX_NAME, WEIGHTS_NAME, TRAINING_RECORD_NAME))
MIN_PSNR_DB, MIN_SSIM = 23.0, 0.79
MAX_ONNX_BYTES = 20_000_000


def test_shipped_files_are_one_small_onnx_its_weights_and_their_record() -> None:
    assert ONNX_FILE.stat().st_size < MAX_ONNX_BYTES
    onnx.checker.check_model(onnx.load(str(ONNX_FILE)))
    model, weights = load_weights(TORCH_FILE)
    record = json.loads(CONFIG_FILE.read_text())
    meta = read_metadata(ONNX_FILE)
    assert record["architecture"] == model.config.to_dict() == json.loads(meta["architecture"])
    assert meta["precision"] == "fp32" and int(meta["receptive_radius"]) == model.config.receptive_radius
    assert json.loads(meta["validation_metrics"]) == pytest.approx(weights["metrics"])
    assert record["stage2"]["selected_val"] == pytest.approx(weights["metrics"])


def test_siblings_share_the_policy_and_record_the_verdict_of_their_quality_gates() -> None:
    """frlie-int8.onnx (CPUs; weights fine-tuned for it by `training qat`) and frlie-fp16.onnx (GPUs)
    were gated against fp32 on val, PNG and JPEG q90 uploads: `FRLIE_PRECISION=auto` races only files
    that passed. The verdict follows the recorded figures and limits; fp16 passed, int8 loses too much
    on one val photo (104)."""
    policy = read_metadata(ONNX_FILE)["policy"]
    for precision in ("int8", "fp16"):
        sibling = WEIGHTS_DIR / f"frlie-{precision}.onnx"
        meta = read_metadata(sibling)
        record = json.loads(meta["quantization"])
        gate, limits = record["gate"], record["gate"]["limits"]
        assert meta["precision"] == precision and meta["policy"] == policy, sibling
        within = all(
            upload["psnr_drop_db"] <= limits["max_psnr_drop_db"]
            and upload["ssim_drop"] <= limits["max_ssim_drop"]
            and upload["worst_image"]["psnr_drop_db"] <= limits["max_image_psnr_drop_db"]
            for upload in (gate, gate["jpeg"])  # PNG uploads (the top level) and JPEG q90
        )
        assert gate["precision"] == precision and record["quality_gate"] == ("passed" if within else "failed")
    assert json.loads(read_metadata(WEIGHTS_DIR / "frlie-fp16.onnx")["quantization"])["quality_gate"] == "passed"


def test_onnx_file_is_the_export_of_the_shipped_weights() -> None:
    image = np.random.default_rng(3).integers(0, 256, size=(92, 124, 3), dtype=np.uint8)
    from_onnx = load_enhancer(ONNX_FILE)(image)
    from_torch = load_enhancer(TORCH_FILE)(image)
    # Both paths produce 8-bit images; float32 differences of ~1e-6 may flip a rounding at most.
    assert from_onnx.shape == from_torch.shape == (92, 124, 3)
    assert np.abs(from_onnx.astype(int) - from_torch.astype(int)).max() <= 1


def _training_normalisation() -> ExposureNormalisation:
    """The exposure normalisation the shipped weights were trained and validated with (off before 2.2,
    noise-aware since 2.3)."""
    args = json.loads(CONFIG_FILE.read_text())["stage2"]["args"]
    return ExposureNormalisation(
        args.get("exposure_reference", 0.0), args.get("exposure_power", 1.0), args.get("exposure_noise_reference", 0.0)
    )


def test_shipped_onnx_meets_the_quality_bar_on_val(lol_pairs: Path) -> None:
    pairs = list_pairs(lol_pairs / "val")
    enhancer = normalised(load_enhancer(ONNX_FILE), _training_normalisation())
    result = evaluate_model(enhancer, pairs, baselines=None, with_niqe=False, progress=False)
    mean = result["mean"]
    assert mean["psnr"] >= MIN_PSNR_DB and mean["ssim"] >= MIN_SSIM, mean
    # What the metadata claims is what the file does on the same images.
    claimed = json.loads(read_metadata(ONNX_FILE)["validation_metrics"])
    assert mean["psnr"] == pytest.approx(claimed["val_psnr"], abs=0.01)
    assert mean["ssim"] == pytest.approx(claimed["val_ssim"], abs=0.001)


def test_the_model_card_stays_short() -> None:
    """What ships, how it was trained and calibrated, the results and the limits; the release history
    and the experiments that were not adopted live in docs/model-history.md."""
    card = (WEIGHTS_DIR.parent / "MODEL_CARD.md").read_text()
    assert len(card.splitlines()) <= 200
    assert "](../docs/model-history.md)" in card and (WEIGHTS_DIR.parents[1] / "docs" / "model-history.md").is_file()
