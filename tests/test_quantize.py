"""training/quantize.py on a tiny exported model and synthetic pairs: real ORT quantization, no mocks."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import write_synthetic_pairs
from service_helpers import TINY_MODEL_VERSION, export_tiny_model

from training import quantize
from training.data import load_rgb
from training.metrics import psnr
from training.onnx_metadata import read_metadata

# The default recipe on a calibration small enough for a test (6 whole 48 x 64 images, the 256 px
# crop being larger: about a second), with well-exposed inputs mixed in to test the mixing.
TEST_RECIPE = quantize.Recipe(images=6, exposures=("low", "high"))
# Bound on PSNR(int8 output, fp32 output) over 8-bit outputs of the tiny random model. Each of its
# ~15 quantized tensors carries rounding noise about 45-50 dB below its range (8 bits, clipped at
# the 99.99th percentile), which adds up through the layers; measured: 35.9 dB with the default
# recipe (40.3 dB with min-max ranges, which clip nothing). The fp32 output of an *unrelated* image
# of the same kind is only 26 dB away (the tiny model's output varies little), so 32 dB separates a
# working quantization from a broken one (wrong scales, swapped channels, a mangled graph) with
# room for other ORT versions and CPUs.
MIN_PSNR_VS_FP32_DB = 32.0


@pytest.fixture(scope="module")
def tiny_fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_model(tmp_path_factory.mktemp("tiny-fp32"))


@pytest.fixture(scope="module")
def quantized(
    tiny_fp32: Path, synthetic_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> quantize.QuantizationReport:
    out = tmp_path_factory.mktemp("tiny-int8") / "tiny-int8.onnx"
    return quantize.quantize_int8(
        tiny_fp32,
        out,
        calibration_root=synthetic_data,
        recipe=TEST_RECIPE,
        extra_exclude=("conv[1]",),
        check_images=2,
    )


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _uint8(output: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(output.transpose(0, 2, 3, 1), 0, 1) * 255).astype(np.uint8)


def test_writes_one_qdq_file_with_int8_weights(quantized: quantize.QuantizationReport) -> None:
    model = onnx.load(str(quantized.path))
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    int8_weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    assert len(int8_weights) == quantized.quantized_convs > 0
    assert all(i.data_location != onnx.TensorProto.EXTERNAL for i in model.graph.initializer)
    assert list(quantized.path.parent.iterdir()) == [quantized.path]  # no external data beside it
    onnx.checker.check_model(model)


def test_metadata_says_int8_and_records_the_method(
    quantized: quantize.QuantizationReport, tiny_fp32: Path, synthetic_data: Path
) -> None:
    metadata = read_metadata(quantized.path)
    fp32_metadata = read_metadata(tiny_fp32)
    assert metadata["precision"] == "int8"
    for key in ("model_version", "receptive_radius", "size_multiple", "architecture"):
        assert metadata[key] == fp32_metadata[key]
    assert metadata["model_version"] == TINY_MODEL_VERSION
    record = json.loads(metadata["quantization"])
    assert record == quantize.read_quantization(quantized.path)
    assert record["calibration"]["method"] == TEST_RECIPE.method == "percentile"
    assert record["calibration"]["percentile"] == TEST_RECIPE.percentile
    assert record["calibration"]["images"] == TEST_RECIPE.images
    assert record["calibration"]["data"].endswith("/train")
    assert record["per_channel"] is TEST_RECIPE.per_channel
    assert record["reduce_range"] is TEST_RECIPE.reduce_range
    assert record["excluded_nodes"] == quantized.excluded_nodes
    assert record["check"]["psnr_vs_fp32_db"] == quantized.check["psnr_vs_fp32_db"]
    assert all("(low)" in name or "(high)" in name for name in quantized.calibration_images)
    assert Path(quantized.calibration_root) == synthetic_data / "train"


def test_same_io_contract_and_shapes(quantized: quantize.QuantizationReport, tiny_fp32: Path) -> None:
    int8, fp32 = _session(quantized.path), _session(tiny_fp32)
    for ours, theirs in ((int8.get_inputs(), fp32.get_inputs()), (int8.get_outputs(), fp32.get_outputs())):
        assert [(v.name, v.type, v.shape) for v in ours] == [(v.name, v.type, v.shape) for v in theirs]
    rng = np.random.default_rng(0)
    for shape in ((1, 3, 48, 64), (2, 3, 100, 132), (1, 3, 64, 24)):
        (output,) = int8.run(["enhanced"], {"image": rng.random(shape, dtype=np.float32)})
        assert output.shape == shape and output.dtype == np.float32
        assert output.min() >= 0.0 and output.max() <= 1.0


def test_output_close_to_fp32_on_unseen_images(
    quantized: quantize.QuantizationReport, tiny_fp32: Path, tmp_path: Path
) -> None:
    unseen = write_synthetic_pairs(tmp_path / "unseen", 3, seed=9)
    batch = np.concatenate([quantize.model_input(load_rgb(p)) for p in sorted((unseen / "low").iterdir())])
    (expected,) = _session(tiny_fp32).run(["enhanced"], {"image": batch})
    (got,) = _session(quantized.path).run(["enhanced"], {"image": batch})
    value = psnr(_uint8(got).reshape(-1, 1, 3), _uint8(expected).reshape(-1, 1, 3))
    assert MIN_PSNR_VS_FP32_DB <= value < 100, value
    assert quantized.check["psnr_vs_fp32_db"] >= MIN_PSNR_VS_FP32_DB


def test_excluded_nodes_stay_float(quantized: quantize.QuantizationReport, tiny_fp32: Path) -> None:
    fp32 = onnx.load(str(tiny_fp32))
    convs = [node.name for node in fp32.graph.node if node.op_type == "Conv"]
    tail = quantize.resolve_nodes(fp32, ["output_tail"])
    before_last = quantize.resolve_nodes(fp32, ["last_conv_input"])
    assert [node.op_type for node in fp32.graph.node if node.name in tail] == ["Tanh", "Add", "Div"]
    assert {node.op_type for node in fp32.graph.node if node.name in before_last} >= {"Relu", "Pad"}
    expected = quantize.resolve_nodes(fp32, [*TEST_RECIPE.keep_float, "conv[1]"])
    assert quantized.excluded_nodes == expected
    assert quantized.float_convs == [convs[0], convs[1], convs[-2], convs[-1]]  # graph order
    model = onnx.load(str(quantized.path))
    producers = {output: node.op_type for node in model.graph.node for output in node.output}
    consumers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    for node in model.graph.node:
        if node.name in tail + before_last:  # computed on float tensors from end to end
            assert all(producers.get(name) != "DequantizeLinear" for name in node.input), node.name
            assert all("QuantizeLinear" not in consumers.get(name, []) for name in node.output), node.name
    assert producers["enhanced"] == "Div"


def test_resolve_nodes_roles_and_errors(tiny_fp32: Path) -> None:
    model = onnx.load(str(tiny_fp32))
    convs = [node.name for node in model.graph.node if node.op_type == "Conv"]
    assert quantize.resolve_nodes(model, ["first_conv", "conv[0]", "conv[-1]", "last_conv"]) == [convs[0], convs[-1]]
    with pytest.raises(quantize.QuantizationError, match="no node"):
        quantize.resolve_nodes(model, ["decoder_everything"])
    with pytest.raises(quantize.QuantizationError, match="convolutions"):
        quantize.resolve_nodes(model, [f"conv[{len(convs)}]"])


def test_calibration_refuses_val_and_empty_folders(tmp_path: Path, synthetic_data: Path) -> None:
    with pytest.raises(quantize.CalibrationDataError, match="held-out split"):
        quantize.calibration_set(synthetic_data / "val", 1)
    (tmp_path / "test" / "low").mkdir(parents=True)
    with pytest.raises(quantize.CalibrationDataError, match="held-out split"):
        quantize.resolve_calibration_root(tmp_path / "test")
    for folder in ("low", "high"):
        (tmp_path / "empty" / folder).mkdir(parents=True)
    with pytest.raises(quantize.CalibrationDataError, match="no images"):
        quantize.calibration_set(tmp_path / "empty", 1)
    with pytest.raises(quantize.CalibrationDataError, match="does not exist"):
        quantize.calibration_set(tmp_path / "missing", 1)
    with pytest.raises(quantize.CalibrationDataError, match="not enough"):
        quantize.calibration_set(synthetic_data, 9)  # train has 8 pairs
    # The data root resolves to its train split; samples are model inputs in [0, 1].
    calibration = quantize.calibration_set(synthetic_data, 3, crop=32)
    assert calibration.root == synthetic_data / "train" and len(calibration) == 3
    assert all(
        x.shape == (1, 3, 32, 32) and x.dtype == np.float32 and 0 <= x.min() <= x.max() <= 1
        for x in calibration.samples
    )
    # A crop larger than the images keeps them whole; the same seed draws the same samples.
    whole = quantize.calibration_set(synthetic_data, 2, crop=256, exposures=("high",))
    assert [x.shape for x in whole.samples] == [(1, 3, 48, 64)] * 2
    again = quantize.calibration_set(synthetic_data, 2, crop=256, exposures=("high",))
    assert whole.names == again.names
    assert all(np.array_equal(a, b) for a, b in zip(whole.samples, again.samples, strict=True))


def test_quantize_refuses_bad_input(
    tmp_path: Path, tiny_fp32: Path, synthetic_data: Path, quantized: quantize.QuantizationReport
) -> None:
    with pytest.raises(quantize.QuantizationError, match="does not exist"):
        quantize.quantize_int8(tmp_path / "none.onnx", tmp_path / "out.onnx", calibration_root=synthetic_data)
    with pytest.raises(quantize.QuantizationError, match="precision 'int8'"):
        quantize.quantize_int8(quantized.path, tmp_path / "out.onnx", calibration_root=synthetic_data)
    with pytest.raises(quantize.CalibrationDataError, match="held-out split"):
        quantize.quantize_int8(tiny_fp32, tmp_path / "out.onnx", calibration_root=synthetic_data / "val")
    with pytest.raises(quantize.QuantizationError, match="calibration method"):
        quantize.Recipe(method="mse")
    assert not (tmp_path / "out.onnx").exists()


def test_layer_sensitivity_ranks_candidates(tiny_fp32: Path, synthetic_data: Path) -> None:
    model = onnx.load(str(tiny_fp32))
    convs = [node.name for node in model.graph.node if node.op_type == "Conv"]
    base, ranked = quantize.layer_sensitivity(
        tiny_fp32,
        calibration_root=synthetic_data,
        recipe=replace(TEST_RECIPE, images=4),
        base_keep_float=["output_tail"],
        candidates=["first_conv", convs[1], "output_tail", "last_conv_input"],
        eval_images=2,
    )
    # output_tail is already in the base set; a role is one candidate holding all its nodes.
    assert sorted(s.selector for s in ranked) == sorted(["first_conv", convs[1], "last_conv_input"])
    assert [s.gain_db for s in ranked] == sorted((s.gain_db for s in ranked), reverse=True)
    assert all(abs(s.psnr_vs_fp32_db - base - s.gain_db) < 1e-9 for s in ranked)
    by_selector = {s.selector: s for s in ranked}
    assert by_selector["first_conv"].nodes == (convs[0],) and 0 < by_selector["first_conv"].macs_share < 1
    assert by_selector["last_conv_input"].macs_share == 0 and len(by_selector["last_conv_input"].nodes) >= 2
    assert 20 < base < 100


def _pad_between_quantizers(scale_in: float, scale_out: float) -> onnx.ModelProto:
    """x -> Q -> DQ -> Pad(reflect) -> Q -> DQ -> y, as quantize_static leaves a padded convolution's input."""
    h = onnx.helper
    initializers = [
        onnx.numpy_helper.from_array(np.array(scale_in, np.float32), "s_in"),
        onnx.numpy_helper.from_array(np.array(3, np.uint8), "z_in"),
        onnx.numpy_helper.from_array(np.array(scale_out, np.float32), "s_out"),
        onnx.numpy_helper.from_array(np.array(3, np.uint8), "z_out"),
        onnx.numpy_helper.from_array(np.array([0, 0, 2, 1, 0, 0, 2, 1], np.int64), "pads"),
    ]
    nodes = [
        h.make_node("QuantizeLinear", ["x", "s_in", "z_in"], ["xq"], name="q_in"),
        h.make_node("DequantizeLinear", ["xq", "s_in", "z_in"], ["xf"], name="dq_in"),
        h.make_node("Pad", ["xf", "pads"], ["padded"], mode="reflect", name="pad"),
        h.make_node("QuantizeLinear", ["padded", "s_out", "z_out"], ["pq"], name="q_out"),
        h.make_node("DequantizeLinear", ["pq", "s_out", "z_out"], ["y"], name="dq_out"),
    ]
    graph = h.make_graph(
        nodes,
        "pad",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 5, 6])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2, 9, 8])],
        initializers,
    )
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    output: np.ndarray = session.run(None, {"x": x})[0]
    return output


def test_reflect_pads_move_onto_the_integers_with_the_same_output() -> None:
    x = np.random.default_rng(0).random((1, 2, 5, 6), dtype=np.float32)
    model = _pad_between_quantizers(1 / 255, 1 / 255)  # quantize_static gives a pad its input's range
    expected = _run(model, x)
    assert quantize.pads_on_integers(model) == 1
    assert [node.op_type for node in model.graph.node] == ["QuantizeLinear", "Pad", "DequantizeLinear"]
    onnx.checker.check_model(model)
    np.testing.assert_array_equal(_run(model, x), expected)
    # A pad re-quantized to another range is read back with its input's own: one rounding fewer.
    model = _pad_between_quantizers(1 / 255, 1 / 200)
    twice_rounded = _run(model, x)
    quantize.pads_on_integers(model)
    once = _run(model, x)
    assert np.abs(once - x.mean()).max() < 1.0 and not np.array_equal(once, twice_rounded)
    np.testing.assert_allclose(once, twice_rounded, atol=1 / 200)


def test_the_quantized_model_pads_its_integers(quantized: quantize.QuantizationReport) -> None:
    model = onnx.load(str(quantized.path))
    producers = {output: node.op_type for node in model.graph.node for output in node.output}
    pads = [node for node in model.graph.node if node.op_type == "Pad"]
    assert pads and not [p.name for p in pads if producers.get(p.input[0]) == "DequantizeLinear"]
    assert "uint8" in json.loads(read_metadata(quantized.path)["quantization"])["pads"]
