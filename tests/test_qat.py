"""training/qat.py: the fake-quantized network against the real int8 file, and a whole (tiny) run.

A tiny random network and synthetic pairs stand in for the shipped model and lol-pairs, so these
tests need no data; the quantizer, the exporter and ONNX Runtime are the real ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from service_helpers import tiny_network
from torch import nn

from model.checkpoint import load_weights, save_weights
from training import qat, quantize
from training.errors import TrainingError
from training.export import export_onnx
from training.onnx_metadata import read_metadata

# A calibration small enough for the 8 synthetic train pairs.
TEST_RECIPE = quantize.Recipe(images=6)
TINY_QAT = qat.QatConfig(steps=6, batch=2, crop=48, learning_rate=1e-4, no_worse_weight=1.0, jpeg_share=0.5)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tests' tiny random network, with BatchNorm statistics that folding must move, saved as a checkpoint."""
    network = tiny_network()
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, nn.BatchNorm2d):  # statistics that folding must actually move
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    path = tmp_path_factory.mktemp("tiny-qat") / "tiny.pt"
    save_weights(network, path)
    return path


@pytest.fixture(scope="module")
def tiny_files(tiny_weights: Path, synthetic_data: Path) -> tuple[Path, Path]:
    """The tiny network's fp32 file and its post-training int8 file."""
    network, _ = load_weights(tiny_weights)
    fp32 = tiny_weights.with_suffix(".onnx")
    export_onnx(network, fp32, verify=False)
    int8 = tiny_weights.with_name("tiny-int8.onnx")
    quantize.quantize_int8(fp32, int8, calibration_root=synthetic_data, recipe=TEST_RECIPE, check_images=0)
    return fp32, int8


def _image(seed: int, height: int = 48, width: int = 64) -> torch.Tensor:
    """A smooth random picture (noise alone would be an unrepresentative input)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((1, 3, height // 8, width // 8)).astype(np.float32)
    image = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(height, width), mode="bilinear")
    return (image * 0.4).clamp(0, 1)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def test_folding_batch_norms_keeps_the_answer(tiny_weights: Path) -> None:
    reference, _ = load_weights(tiny_weights)
    folded, _ = load_weights(tiny_weights)
    assert qat.fold_batch_norms(folded) == 4  # three in the encoder, one in the decoder's middle
    image = _image(0)
    with torch.no_grad():
        assert torch.allclose(folded(image), reference(image), atol=1e-5)


def test_layout_matches_the_int8_file(tiny_files: tuple[Path, Path]) -> None:
    fp32, int8 = tiny_files
    layout = qat.read_layout(fp32, int8)
    int8_model = onnx.load(str(int8))
    initializers = {tensor.name for tensor in int8_model.graph.initializer}
    activation_quantizers = sum(
        node.op_type == "QuantizeLinear" and node.input[0] not in initializers for node in int8_model.graph.node
    )
    placed = sum(point is not None for points in layout.outputs.values() for point in points)
    assert placed == activation_quantizers - 1  # every quantized tensor but the (exact) input
    # The recipe keeps the first and the last two convolutions in float.
    assert layout.conv_weights[0] is False and layout.conv_weights[-2:] == [False, False]
    assert all(layout.conv_weights[1:-2])


def test_fake_quantized_network_models_the_int8_file(tiny_weights: Path, tiny_files: tuple[Path, Path]) -> None:
    fp32, int8 = tiny_files
    reference, _ = load_weights(tiny_weights)
    student, _ = load_weights(tiny_weights)
    qat.fold_batch_norms(student)
    network = qat.fake_quantized(student, qat.read_layout(fp32, int8)).eval()
    session = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    for seed in (1, 2):
        image = _image(seed)
        with torch.no_grad():
            modelled, exact = network(image).numpy(), reference(image).numpy()
        deployed = session.run(None, {"image": image.numpy()})[0]
        # The fake-quantized network is nearer the int8 file than fp32 is: it carries its rounding.
        assert _psnr(modelled, deployed) > _psnr(exact, deployed) + 3.0
    qat.strip_fake_quant(student)
    assert set(student.state_dict()) == set(reference.state_dict())


def test_a_whole_run_resumes_writes_a_gated_int8_file_and_keeps_the_fp32_metadata(
    tiny_weights: Path, tiny_files: tuple[Path, Path], synthetic_data: Path, tmp_path: Path
) -> None:
    fp32, _ = tiny_files
    out, run_dir = tmp_path / "qat-int8.onnx", tmp_path / "run"
    args = (tiny_weights, fp32, synthetic_data, out, run_dir, TINY_QAT)
    # No time at all: nothing trained, nothing written, the state kept for the next call.
    assert qat.quantization_aware_int8(*args, max_minutes=0.0, recipe=TEST_RECIPE) is None
    assert not out.exists() and (run_dir / "qat-state.pt").is_file()
    result = qat.quantization_aware_int8(*args, recipe=TEST_RECIPE)
    assert result is not None and result["path"] == str(out)
    props, shipped = read_metadata(out), read_metadata(fp32)
    assert props["precision"] == "int8"
    assert {key: value for key, value in props.items() if key not in ("precision", "quantization")} == {
        key: value for key, value in shipped.items() if key != "precision"
    }
    record = json.loads(props["quantization"])
    assert record["fine_tuning"]["steps_done"] == TINY_QAT.steps
    assert record["gate"]["precision"] == "int8" and "passed" in record["gate"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    answer = session.run(None, {"image": _image(3).numpy()})[0]
    assert answer.shape == (1, 3, 48, 64) and np.isfinite(answer).all()
    # A second run with other settings refuses the first one's state instead of mixing them.
    with pytest.raises(TrainingError, match="other settings"):
        qat.quantization_aware_int8(
            tiny_weights, fp32, synthetic_data, out, run_dir, qat.QatConfig(steps=7), recipe=TEST_RECIPE
        )


def test_a_warm_started_run_records_every_stage_before_it(
    tiny_weights: Path, tiny_files: tuple[Path, Path], synthetic_data: Path, tmp_path: Path
) -> None:
    layout = qat.read_layout(*tiny_files)
    first_config, second_config = qat.QatConfig(steps=2, batch=2, crop=48), TINY_QAT
    _, first = qat.fine_tune(tiny_weights, layout, synthetic_data, tmp_path / "first", first_config, None)
    assert first["warm_start"] is None
    first_state = tmp_path / "first" / qat.STATE_FILE
    second_dir = tmp_path / "second"
    _, stopped = qat.fine_tune(tiny_weights, layout, synthetic_data, second_dir, second_config, 0.0, first_state)
    # Resumed without naming the earlier state again, the run still knows where it started.
    _, second = qat.fine_tune(tiny_weights, layout, synthetic_data, second_dir, second_config, None)
    expected = {"config": first_config.to_dict(), "steps_done": 2, "warm_start": None}
    assert stopped["warm_start"] == second["warm_start"] == expected
    # A third stage carries the whole chain.
    assert qat.lineage(torch.load(second_dir / qat.STATE_FILE, weights_only=False)) == {
        "config": second_config.to_dict(),
        "steps_done": second_config.steps,
        "warm_start": expected,
    }


def test_refuses_held_out_data(tmp_path: Path) -> None:
    val = tmp_path / "val"
    for folder in ("low", "high"):
        (val / folder).mkdir(parents=True)
    with pytest.raises(TrainingError, match="held-out"):
        qat.train_pairs(val)


def test_the_no_worse_term_counts_only_crops_that_lose_against_the_reference() -> None:
    reference = torch.zeros(2, 3, 8, 8)
    teacher = torch.full((2, 3, 8, 8), 0.10)
    config = qat.QatConfig(no_worse_weight=1.0)
    # Nearer the reference than fp32: only the distance to fp32 counts.
    closer = torch.full((2, 3, 8, 8), 0.08)
    assert qat.qat_loss(closer, teacher, reference, config).item() == pytest.approx(0.02**2)
    # Farther: the extra squared error against the reference is added (0.12^2 - 0.10^2).
    farther = torch.full((2, 3, 8, 8), 0.12)
    expected = 0.02**2 + (0.12**2 - 0.10**2)
    assert qat.qat_loss(farther, teacher, reference, config).item() == pytest.approx(expected)
    assert qat.qat_loss(farther, teacher, reference, qat.QatConfig()).item() == pytest.approx(0.02**2)


def test_every_command_line_setting_reaches_the_fine_tune() -> None:
    from training.__main__ import build_parser

    line = "qat --data D --run-dir R --steps 9 --batch 3 --crop 64 --lr 0.002 --no-worse-weight 0.5"
    args = build_parser().parse_args([*line.split(" "), "--jpeg-share", "0.25", "--init-state", "S"])
    assert qat.config_from_args(args) == qat.QatConfig(
        steps=9, batch=3, crop=64, learning_rate=0.002, no_worse_weight=0.5, jpeg_share=0.25
    )
    assert args.init_state == Path("S")
    # The default recipe unless asked: extra float nodes add to its own, once each.
    assert qat.recipe_from_args(args) == quantize.DEFAULT_RECIPE
    more = build_parser().parse_args([*line.split(" "), "--keep-float", "conv[2]", "--keep-float", "first_conv"])
    assert qat.recipe_from_args(more).keep_float == (*quantize.DEFAULT_RECIPE.keep_float, "conv[2]")
