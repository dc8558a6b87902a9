"""Post-training int8 quantization of the exported model, for CPUs (issue 14).

ONNX Runtime's static QDQ quantization: ``quant_pre_process`` (shape inference and graph
optimisation), activation ranges calibrated on *training* images (never val), uint8 asymmetric
activations and int8 symmetric per-channel weights, written as one self-contained ONNX file with
the I/O contract of the fp32 file (``image`` -> ``enhanced``, N x 3 x H x W, RGB in [0, 1]).

The default recipe (``DEFAULT_RECIPE``) was chosen by measurement on lol-pairs val, against the
fp32 model (the issue's bar: <= 0.1 dB PSNR and <= 0.005 SSIM lost):

* ranges: the 99.95th percentile of each activation over 48 random 256 px crops of the training
  low-light images. Min-max ranges (the first try) are set by rare outliers of these heavy-tailed
  activations (peak/RMS ~ 30x): they cost 0.025 SSIM. The percentile was re-chosen for 2.3 on 24
  whole *training* pairs the calibration did not use (never val), against fp32: 99.99 lost 0.080 dB
  / 0.0060 SSIM there, 99.95 0.089 dB / 0.0041, 99.9 0.102 dB / 0.0037, 99.999 0.114 dB / 0.0109;
  keeping five more small convolutions (or one 8 %-of-MACs one) in float moved SSIM by under 0.001;
* the input's range is fixed to [0, 1] (scale 1/255, zero point 0), so every RGB / 255 value the
  service feeds is represented exactly;
* ``reduce_range`` (7-bit weights): on x86 CPUs without VNNI, ORT's u8 x s8 kernels add pairs of
  products in 16 bits (``vpmaddubsw``), which saturates with 8-bit weights (measured here with
  min-max ranges: 0.7 dB of PSNR against fp32 lost to saturation); 7-bit weights cannot saturate;
* in float: the first convolution, the decoder's last stage (its last two convolutions and the
  pixel shuffle / BatchNorm / ReLU / pad between them: full-resolution noise is what SSIM sees
  most), the output tanh and rescale, and the BatchNorms (which ORT runs in float anyway). About
  9 % of the multiply-adds.

Calibrating on dark inputs only is what keeps the quality on the benchmark task; brighter inputs
(the exposure-robust 2.0 model is also sent normal photos) then exceed the calibrated ranges and
lose more (see ``bench/int8.py --exposures``); mixing them into the calibration widens every range
and costs the dark inputs more than the bar allows. ``Recipe.exposures`` chooses.

After quantization every reflect pad is moved onto the uint8 tensors (``pads_on_integers``): ORT
otherwise runs each of the 39 in float between a dequantize and a quantize, and that memory traffic
was most of the int8 file's time (2.25x -> 2.65x fp32 at 600x400 on an AVX-512 VNNI EPYC, outputs
bit-identical).

``quantize_int8`` records the method in the file: ``precision: int8`` and a ``quantization``
entry (JSON) beside the fp32 file's own metadata (model version, receptive radius...).
``layer_sensitivity`` measures which nodes, kept in float, recover most of the distance to fp32.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from model.contract import INPUT_NAME, OUTPUT_NAME, PRECISION, QUANTIZATION
from training.data import EXPOSURE_VARIANTS, PairedDataError, list_pairs, load_rgb
from training.inference import pad_image
from training.metrics import psnr
from training.onnx_metadata import read_metadata

log = logging.getLogger(__name__)

# Pair folders whose images must never shape the model: quality is measured on them.
REFUSED_SPLITS = frozenset({"val", "valid", "validation", "test", "eval", "evaluation"})
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# Node selectors understood by ``resolve_nodes`` (besides exact node names and ``conv[i]``).
ROLE_FIRST_CONV = "first_conv"
ROLE_LAST_CONV = "last_conv"
ROLE_OUTPUT_TAIL = "output_tail"
ROLE_LAST_CONV_INPUT = "last_conv_input"
ROLE_NORMALIZATION = "normalization"
ROLES = (ROLE_FIRST_CONV, ROLE_LAST_CONV, ROLE_LAST_CONV_INPUT, ROLE_OUTPUT_TAIL, ROLE_NORMALIZATION)
NORMALIZATION_OPS = ("BatchNormalization", "InstanceNormalization", "LayerNormalization")


class QuantizationError(ValueError):
    """Bad input to the quantizer (missing model, unusable calibration folder, unknown node...)."""


class CalibrationDataError(QuantizationError, PairedDataError):
    """The calibration folder is empty, unreadable, or a held-out split (val/test)."""


# --- calibration data -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrationSet:
    """Model inputs (1 x 3 x H x W float32 in [0, 1], as the service feeds RGB / 255) and where they came from."""

    root: Path
    samples: tuple[np.ndarray, ...]
    names: tuple[str, ...]  # "NAME.png (low)" / "NAME.png (low x4)" ...

    def __len__(self) -> int:
        return len(self.samples)


def resolve_calibration_root(root: str | Path) -> Path:
    """The pair folder to calibrate on: ``root`` if it has low/ and high/, else ``root/train``.

    Raises ``CalibrationDataError`` for a missing folder or a held-out split (val, test...): the
    quality of the int8 model is measured on those, so they must not set its ranges.
    """
    root = Path(root)
    if not root.is_dir():
        raise CalibrationDataError(f"calibration folder {root} does not exist")
    folder = root if (root / "low").is_dir() else root / "train"
    if not (folder / "low").is_dir():
        raise CalibrationDataError(f"{root} has neither low/ nor a train/ split with low/ and high/")
    split = folder.resolve().name
    if split.lower() in REFUSED_SPLITS:
        raise CalibrationDataError(
            f"refusing to calibrate on {folder}: '{split}' is a held-out split (quality is measured on it); "
            "use the training images"
        )
    return folder


def model_input(rgb: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 -> 1 x 3 x H' x W' float32 in [0, 1] (RGB / 255, as the service feeds it),
    padded at the bottom/right exactly as the network pads (``training.inference.pad_image``)."""
    padded = pad_image(rgb)
    return np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255.0)


def calibration_set(
    root: str | Path,
    count: int,
    *,
    crop: int | None = None,
    exposures: Sequence[str] = ("low",),
    seed: int = 0,
    skip: int = 0,
) -> CalibrationSet:
    """``count`` calibration inputs from the training pairs under ``root``.

    Images are drawn without replacement in a seeded order (after the first ``skip`` of that order,
    so a second set can be disjoint from the first); ``crop`` takes one random ``crop`` x ``crop``
    window of each image (``None``, or a side shorter than ``crop``: the whole image along it).
    Sample ``i`` is the exposure variant ``exposures[i % len(exposures)]`` of its pair (see
    ``training.data.EXPOSURE_VARIANTS``: "low" is the low-light input, "low x4" a brightened one,
    "high" a well-exposed photo).
    """
    if count < 1:
        raise CalibrationDataError(f"need at least one calibration image, got {count}")
    unknown = [name for name in exposures if name not in EXPOSURE_VARIANTS]
    if not exposures or unknown:
        raise CalibrationDataError(f"exposures must be among {sorted(EXPOSURE_VARIANTS)}, got {list(exposures)}")
    if crop is not None and crop < 1:
        raise CalibrationDataError(f"crop must be a positive number of pixels, got {crop}")
    folder = resolve_calibration_root(root)
    try:
        pairs = list_pairs(folder)
    except PairedDataError as error:
        raise CalibrationDataError(str(error)) from error
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pairs))[skip:]
    if len(order) < count:
        raise CalibrationDataError(
            f"{folder} has {len(pairs)} pairs: not enough for {count} calibration images after skipping {skip}"
        )
    samples, names = [], []
    for i, index in enumerate(order[:count]):
        pair = pairs[int(index)]
        exposure = exposures[i % len(exposures)]
        low, high = load_rgb(pair.low), load_rgb(pair.high)
        rgb = EXPOSURE_VARIANTS[exposure](low, high)
        if crop is not None:  # a side shorter than the crop is kept whole
            height, width = rgb.shape[:2]
            crop_h, crop_w = min(crop, height), min(crop, width)
            top, left = int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1))
            rgb = rgb[top : top + crop_h, left : left + crop_w]
        samples.append(model_input(rgb))
        names.append(f"{pair.name} ({exposure})")
    return CalibrationSet(folder, tuple(samples), tuple(names))


def _reader(samples: Sequence[np.ndarray]) -> Any:
    """An ORT ``CalibrationDataReader`` over the samples (one N=1 batch per call)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.start, self.end, self.position = 0, len(samples), 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.start + self.position >= self.end:
                return None
            sample = samples[self.start + self.position]
            self.position += 1
            return {INPUT_NAME: sample}

        def rewind(self) -> None:
            self.position = 0

        def set_range(self, start_index: int, end_index: int) -> None:
            self.start, self.end, self.position = start_index, min(end_index, len(samples)), 0

        def __len__(self) -> int:
            return len(samples)

    return Reader()


# --- the recipe -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the int8 file, recorded in its metadata.

    ``keep_float`` lists node selectors left in float: a role (``first_conv``, ``last_conv``,
    ``last_conv_input`` = the nodes between the last two convolutions, ``output_tail`` = every node
    after the last convolution, ``normalization`` = BatchNormalization and the like), ``conv[i]``
    (the i-th convolution in graph order, negative from the end) or an exact node name.

    ``exact_input`` fixes the input's range to [0, 1] instead of calibrating it: scale 1/255 and zero
    point 0 represent every RGB / 255 value the service feeds exactly, where a calibrated range
    would re-round dark pixels (that the network then brightens several times).
    """

    method: str = "percentile"
    images: int = 48
    crop: int | None = 256
    exposures: tuple[str, ...] = ("low",)
    per_channel: bool = True
    reduce_range: bool = True
    weight_type: str = "int8"  # "int8" (u8 x s8 kernels) or "uint8" (u8 x u8)
    percentile: float = 99.95
    moving_average: bool = False
    exact_input: bool = True
    keep_float: tuple[str, ...] = (
        ROLE_FIRST_CONV,
        "conv[-2]",
        ROLE_LAST_CONV_INPUT,
        ROLE_LAST_CONV,
        ROLE_OUTPUT_TAIL,
        ROLE_NORMALIZATION,
    )
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise QuantizationError(f"calibration method must be one of {CALIBRATION_METHODS}, got {self.method!r}")
        if self.weight_type not in ("int8", "uint8"):
            raise QuantizationError(f"weight_type must be 'int8' or 'uint8', got {self.weight_type!r}")
        if not 0.0 < self.percentile <= 100.0:
            raise QuantizationError(f"percentile must be in (0, 100], got {self.percentile}")
        if self.images < 1:
            raise QuantizationError(f"need at least one calibration image, got {self.images}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def calibration_key(self) -> tuple[object, ...]:
        """What the activation ranges depend on (recipes equal here can share one calibration)."""
        return (self.method, self.images, self.crop, self.exposures, self.percentile, self.moving_average, self.seed)


DEFAULT_RECIPE = Recipe()


# --- graph helpers --------------------------------------------------------------------------------


def _topological_convs(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    return [node for node in graph.node if node.op_type == "Conv"]


def _downstream(graph: onnx.GraphProto, node: onnx.NodeProto) -> list[str]:
    """Names of the nodes fed, directly or not, by ``node``'s outputs (graph order)."""
    reached = set(node.output)
    names = []
    for candidate in graph.node:  # ONNX graphs are stored in topological order
        if reached.intersection(candidate.input):
            reached.update(candidate.output)
            names.append(candidate.name)
    return names


def _upstream(graph: onnx.GraphProto, node: onnx.NodeProto) -> set[str]:
    """Names of the nodes that feed ``node``, directly or not."""
    needed, names = set(node.input), set()
    for candidate in reversed(graph.node):
        if needed.intersection(candidate.output):
            needed.update(candidate.input)
            names.add(candidate.name)
    return names


def resolve_nodes(model: onnx.ModelProto, selectors: Iterable[str]) -> list[str]:
    """Node names for selectors (roles, ``conv[i]``, names); raises QuantizationError for unknown ones."""
    graph = model.graph
    convs = _topological_convs(graph)
    names_in_graph = {node.name for node in graph.node}
    resolved: list[str] = []
    for selector in selectors:
        if selector == ROLE_FIRST_CONV and convs:
            found = [convs[0].name]
        elif selector == ROLE_LAST_CONV and convs:
            found = [convs[-1].name]
        elif selector == ROLE_OUTPUT_TAIL and convs:
            found = _downstream(graph, convs[-1])
        elif selector == ROLE_LAST_CONV_INPUT and len(convs) > 1:
            feeding = _upstream(graph, convs[-1])
            found = [name for name in _downstream(graph, convs[-2]) if name in feeding]
        elif selector == ROLE_NORMALIZATION:
            found = [node.name for node in graph.node if node.op_type in NORMALIZATION_OPS]
        elif selector.startswith("conv[") and selector.endswith("]"):
            try:
                found = [convs[int(selector[5:-1])].name]
            except (ValueError, IndexError) as error:
                raise QuantizationError(f"{selector!r}: the model has {len(convs)} convolutions") from error
        elif selector in names_in_graph:
            found = [selector]
        else:
            raise QuantizationError(f"no node {selector!r} in the model (roles: {', '.join(ROLES)}, or conv[i])")
        resolved += [name for name in found if name not in resolved]
    return resolved


def pre_process(fp32_path: Path, out_path: Path) -> None:
    """ONNX Runtime's quantization pre-processing (shape inference, BatchNorm folding...)."""
    from onnxruntime.quantization import quant_pre_process

    quant_pre_process(str(fp32_path), str(out_path))


def _load_fp32(path: str | Path) -> tuple[Path, onnx.ModelProto]:
    path = Path(path)
    if not path.is_file():
        raise QuantizationError(f"model file {path} does not exist")
    try:
        model = onnx.load(str(path))
    except Exception as error:  # protobuf decode errors have no common public type
        raise QuantizationError(f"{path} is not a loadable ONNX model: {error}") from error
    inputs = [value.name for value in model.graph.input]
    outputs = [value.name for value in model.graph.output]
    if inputs != [INPUT_NAME] or outputs != [OUTPUT_NAME]:
        raise QuantizationError(
            f"{path}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, got {inputs} -> {outputs}"
        )
    props = {p.key: p.value for p in model.metadata_props}
    if props.get(PRECISION, "fp32") != "fp32":
        raise QuantizationError(f"{path} has precision {props[PRECISION]!r}: quantize the fp32 file")
    if any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node):
        raise QuantizationError(f"{path} is already quantized")
    return path, model


# --- calibration and quantization -----------------------------------------------------------------


_ORT_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


def calibrate(
    model_path: str | Path,
    samples: Sequence[np.ndarray],
    recipe: Recipe,
    cache_path: str | Path,
    *,
    threads: int | None = None,
) -> Path:
    """Collect activation ranges of ``model_path`` (pre-processed fp32) over ``samples`` and save them
    as an ORT calibration cache (JSON) that ``quantize_static`` reads instead of re-running the data.

    The histogram methods (entropy, percentile) see one sample at a time, so they never hold more than
    one sample's activations in memory. ``threads``: ONNX Runtime intra-op threads (None: all cores).
    """
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, create_calibrator
    from onnxruntime.quantization.calibrate import save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    method = CalibrationMethod[_ORT_METHODS[recipe.method]]
    # uint8 activations take asymmetric ranges (ORT's percentile calibrator defaults to symmetric ones).
    options: dict[str, Any] = {"symmetric": False}
    if recipe.method == "minmax" and recipe.moving_average:
        options["moving_average"] = True
    if recipe.method == "percentile":
        options["percentile"] = recipe.percentile
    with tempfile.TemporaryDirectory(prefix="frlie-calibrate-") as scratch:
        calibrator = create_calibrator(
            Path(model_path),
            sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),  # what quantize_static quantizes by default
            augmented_model_path=str(Path(scratch) / "augmented.onnx"),
            calibrate_method=method,
            extra_options=options,
        )
        # ORT's own session for the augmented model runs unoptimised on every core; the graph outputs
        # it adds keep every calibrated tensor intact under optimisation (the ranges come out the
        # same), so optimise (~15 % faster) and honour ``threads``.
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            session_options.intra_op_num_threads = threads
        calibrator.infer_session = ort.InferenceSession(
            calibrator.augmented_model_path, session_options, providers=["CPUExecutionProvider"]
        )
        reader = _reader(samples)
        if recipe.method == "minmax":
            # One pass: MinMax keeps two scalars per tensor and sample, and its moving average is the
            # mean of the per-sample ranges only when every sample is collected at once.
            calibrator.collect_data(reader)
        else:  # histograms: one sample at a time, so one sample's activations are in memory at most
            for start in range(len(samples)):
                reader.set_range(start, start + 1)
                calibrator.collect_data(reader)
        ranges = calibrator.compute_data()
        del calibrator
    save_tensors_data(ranges, Path(cache_path))
    return Path(cache_path)


def _quantize_with_cache(
    pre_path: Path, out_path: Path, cache_path: Path, recipe: Recipe, exclude: Sequence[str]
) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = CalibrationMethod[_ORT_METHODS[recipe.method]]
    quantize_static(
        str(pre_path),
        str(out_path),
        calibration_data_reader=None,
        calibration_cache_path=str(cache_path),
        quant_format=QuantFormat.QDQ,
        per_channel=recipe.per_channel,
        reduce_range=recipe.reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8 if recipe.weight_type == "int8" else QuantType.QUInt8,
        nodes_to_exclude=list(exclude),
        calibrate_method=method,
        extra_options={
            "WeightSymmetric": recipe.weight_type == "int8",
            "ActivationSymmetric": False,
            "TensorQuantOverrides": {INPUT_NAME: [{"rmin": np.float32(0.0), "rmax": np.float32(1.0)}]}
            if recipe.exact_input
            else {},
        },
    )


PADS_MOVED_TO_INTEGERS = ("reflect", "edge")  # modes that only copy values, so they commute with quantization


def pads_on_integers(model: onnx.ModelProto) -> int:
    """Run every value-copying Pad on the uint8 tensor itself; returns how many were moved.

    quantize_static leaves each reflect Pad between a DequantizeLinear and a QuantizeLinear, so ORT
    runs it in float: three full passes over the activation (u8 -> f32, pad, f32 -> u8) around each
    of the network's 39 padded convolutions. A reflect or edge pad only copies values, so it gives
    the same numbers on the integers; the consumers then dequantize with the input's own scale and
    zero point (the pad's Q/DQ pair re-rounded to its own, almost equal, calibrated range: one
    rounding fewer).
    """
    nodes = list(model.graph.node)
    producer = {output: node for node in nodes for output in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    removed: set[int] = set()
    moved = 0
    for pad in nodes:
        mode = next((a.s.decode() for a in pad.attribute if a.name == "mode"), "constant")
        dequantize = producer.get(pad.input[0])
        after = consumers.get(pad.output[0], [])
        if mode not in PADS_MOVED_TO_INTEGERS or dequantize is None or dequantize.op_type != "DequantizeLinear":
            continue
        if len(after) != 1 or after[0].op_type != "QuantizeLinear" or len(dequantize.input) < 3:
            continue
        quantize = after[0]
        integer_input, scale, zero_point = dequantize.input[0], dequantize.input[1], dequantize.input[2]
        pad.input[0] = integer_input
        pad.output[0] = quantize.output[0]  # the padded integers keep the old Q's output name...
        for reader in consumers.get(quantize.output[0], []):
            if reader.op_type != "DequantizeLinear":
                raise QuantizationError(f"{quantize.name} feeds {reader.op_type}, not a DequantizeLinear")
            reader.input[1], reader.input[2] = scale, zero_point  # ...read with the input's own scale
        removed.add(id(quantize))
        consumers[dequantize.output[0]].remove(pad)
        if not consumers[dequantize.output[0]] and dequantize.output[0] not in {o.name for o in model.graph.output}:
            removed.add(id(dequantize))
        moved += 1
    kept = [node for node in nodes if id(node) not in removed]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return moved


def _finish(out_path: Path, fp32: onnx.ModelProto, props: dict[str, str]) -> onnx.ModelProto:
    """Give the quantized file the fp32 file's I/O declarations and metadata, its pads moved onto the
    integers (``pads_on_integers``); one file, checked."""
    model = onnx.load(str(out_path))
    pads_on_integers(model)
    for target, source in ((model.graph.input, fp32.graph.input), (model.graph.output, fp32.graph.output)):
        for value, original in zip(target, source, strict=True):
            value.type.CopyFrom(original.type)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(out_path), save_as_external_data=False)
    return model


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def float_convs(model: onnx.ModelProto) -> list[str]:
    """Convolutions of a QDQ model whose weight is a float initializer (not fed by DequantizeLinear)."""
    dequantized = {node.output[0] for node in model.graph.node if node.op_type == "DequantizeLinear"}
    return [node.name for node in _topological_convs(model.graph) if node.input[1] not in dequantized]


@dataclass
class QuantizationReport:
    """What ``quantize_int8`` wrote and how (also stored, as JSON, in the file's metadata)."""

    path: Path
    recipe: dict[str, Any]
    excluded_nodes: list[str]
    calibration_root: str
    calibration_images: list[str]
    quantized_convs: int
    float_convs: list[str]
    ops: dict[str, int]
    size_bytes: int
    seconds: float
    check: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


def _session(path: str | Path, threads: int = 1) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _to_uint8(output: np.ndarray) -> np.ndarray:
    """1 x 3 x H x W in [0, 1] -> H x W x 3 uint8, rounded as the service encodes it."""
    return np.rint(np.clip(output[0].transpose(1, 2, 0), 0.0, 1.0) * 255.0).astype(np.uint8)


def psnr_between(
    reference_path: str | Path, candidate_path: str | Path, inputs: Sequence[np.ndarray], *, threads: int = 1
) -> float:
    """PSNR (dB, 8-bit outputs as the service returns them) of one model's outputs against another's,
    over all ``inputs`` pooled (one MSE over every pixel; ``inf`` if identical)."""
    reference, candidate = _session(reference_path, threads), _session(candidate_path, threads)
    return _pooled_psnr(
        [_to_uint8(reference.run([OUTPUT_NAME], {INPUT_NAME: x})[0]) for x in inputs],
        [_to_uint8(candidate.run([OUTPUT_NAME], {INPUT_NAME: x})[0]) for x in inputs],
    )


def _pooled_psnr(references: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> float:
    """One PSNR over all pixels of all images (the project's ``psnr`` on the concatenation)."""
    return psnr(
        np.concatenate([o.reshape(-1, 1, 3) for o in outputs]),
        np.concatenate([r.reshape(-1, 1, 3) for r in references]),
    )


def quantize_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    *,
    calibration_root: str | Path,
    recipe: Recipe = DEFAULT_RECIPE,
    extra_exclude: Sequence[str] = (),
    check_images: int = 4,
    check_crop: int = 256,
    min_check_psnr_db: float | None = None,
    calibration_cache: str | Path | None = None,
    threads: int | None = None,
) -> QuantizationReport:
    """Write the int8 (QDQ) version of ``fp32_path`` to ``out_path`` and return what was done.

    ``calibration_root`` is a LOL-layout pair folder of *training* images (or a data root with a
    ``train/`` split); val/test folders are refused. ``recipe`` defaults to the measured choice
    (``DEFAULT_RECIPE``); ``extra_exclude`` adds node selectors to keep in float. After writing, the
    file is checked against the fp32 model on ``check_images`` training crops not used for
    calibration (``check_images=0`` skips it): the PSNR of the int8 output vs the fp32 output goes
    into the report and the metadata, and ``min_check_psnr_db`` turns a low figure into an error.
    ``calibration_cache`` (a JSON path) keeps the activation ranges for a later call with the same
    calibration settings; ``threads`` caps ONNX Runtime's intra-op threads (None: all cores).
    Raises ``QuantizationError`` (a ValueError) on bad input.
    """
    import onnxruntime as ort

    started = time.perf_counter()
    fp32_path, fp32 = _load_fp32(fp32_path)
    out_path = Path(out_path)
    if out_path.resolve() == fp32_path.resolve():
        raise QuantizationError("the int8 file must not overwrite the fp32 file")
    calibration = calibration_set(
        calibration_root, recipe.images, crop=recipe.crop, exposures=recipe.exposures, seed=recipe.seed
    )
    exclude = resolve_nodes(fp32, (*recipe.keep_float, *extra_exclude))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="frlie-quantize-") as scratch:
        pre_path = Path(scratch) / "pre.onnx"
        pre_process(fp32_path, pre_path)
        cache = Path(calibration_cache) if calibration_cache is not None else Path(scratch) / "ranges.json"
        if not cache.is_file():
            log.info("calibrating on %d samples from %s (%s)", len(calibration), calibration.root, recipe.method)
            calibrate(pre_path, calibration.samples, recipe, cache, threads=threads)
        _quantize_with_cache(pre_path, out_path, cache, recipe, exclude)

    props = read_metadata(fp32_path)
    record: dict[str, Any] = {
        "tool": f"onnxruntime {ort.__version__} quantize_static, QDQ, after quant_pre_process",
        "activations": "uint8, asymmetric, per tensor"
        + ("; input range fixed to [0, 1] (scale 1/255, zero point 0)" if recipe.exact_input else ""),
        "weights": ", ".join(
            [recipe.weight_type]
            + (["symmetric"] if recipe.weight_type == "int8" else [])
            + ["per channel" if recipe.per_channel else "per tensor"]
            + (["7-bit (reduce_range)"] if recipe.reduce_range else [])
        ),
        "calibration": {
            "method": recipe.method,
            **({"percentile": recipe.percentile} if recipe.method == "percentile" else {}),
            "images": len(calibration),
            "crop": recipe.crop,
            "exposures": list(recipe.exposures),
            "seed": recipe.seed,
            "data": f"{calibration.root.parent.name}/{calibration.root.name}",
        },
        "per_channel": recipe.per_channel,
        "reduce_range": recipe.reduce_range,
        "keep_float": list(recipe.keep_float) + list(extra_exclude),
        "pads": "reflect / edge pads run on the uint8 tensors (no dequantize / quantize around them)",
        "excluded_nodes": exclude,
    }
    check: dict[str, Any] = {}
    if check_images > 0:
        check_inputs = _held_out(calibration.root, check_images, check_crop, recipe)
        value = psnr_between(fp32_path, out_path, check_inputs.samples, threads=threads or 0)
        check = {
            "psnr_vs_fp32_db": value if math.isfinite(value) else None,
            "images": len(check_inputs),
            "crop": check_crop,
            "data": "training images not used for calibration where enough exist",
        }
        record["check"] = check
    props[PRECISION] = "int8"
    props[QUANTIZATION] = json.dumps(record)
    model = _finish(out_path, fp32, props)
    if min_check_psnr_db is not None and check and (check["psnr_vs_fp32_db"] or math.inf) < min_check_psnr_db:
        raise QuantizationError(
            f"int8 output is {check['psnr_vs_fp32_db']:.2f} dB PSNR from fp32 on training crops, "
            f"below the floor of {min_check_psnr_db} dB"
        )
    return QuantizationReport(
        path=out_path,
        recipe=recipe.to_dict(),
        excluded_nodes=exclude,
        calibration_root=str(calibration.root),
        calibration_images=list(calibration.names),
        quantized_convs=len(_topological_convs(model.graph)) - len(float_convs(model)),
        float_convs=float_convs(model),
        ops=op_counts(model),
        size_bytes=out_path.stat().st_size,
        seconds=time.perf_counter() - started,
        check=check,
    )


def _held_out(folder: Path, count: int, crop: int | None, recipe: Recipe) -> CalibrationSet:
    """``count`` training inputs for checking: images the calibration did not use where there are
    enough, else other crops (another seed) of the same images."""
    if len(list_pairs(folder)) >= recipe.images + count:
        return calibration_set(folder, count, crop=crop, seed=recipe.seed, skip=recipe.images)
    return calibration_set(folder, count, crop=crop, seed=recipe.seed + 1)


def read_quantization(path: str | Path) -> dict[str, Any] | None:
    """The ``quantization`` record of an int8 file (None for a file without one)."""
    value = read_metadata(path).get(QUANTIZATION)
    return json.loads(value) if value else None


# --- per-layer sensitivity ------------------------------------------------------------------------


@dataclass(frozen=True)
class Sensitivity:
    """How much keeping one candidate (a node, or the nodes of a role) in float recovers."""

    selector: str
    nodes: tuple[str, ...]
    psnr_vs_fp32_db: float  # with these nodes (and the base set) kept in float
    gain_db: float  # over the base quantization
    macs_share: float  # the share of the model's multiply-adds these nodes' convolutions do (0 for none)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def conv_mac_shares(model: onnx.ModelProto, height: int = 400, width: int = 600) -> dict[str, float]:
    """Each convolution's share of the model's multiply-adds at one input size (from ORT's shape inference)."""
    from onnx import numpy_helper, shape_inference

    inferred = shape_inference.infer_shapes(_with_static_input(model, height, width))
    shapes = {
        value.name: [d.dim_value for d in value.type.tensor_type.shape.dim]
        for value in (*inferred.graph.value_info, *inferred.graph.output)
    }
    weights = {init.name: numpy_helper.to_array(init).shape for init in model.graph.initializer}
    macs = {}
    for node in _topological_convs(model.graph):
        out_shape, weight = shapes.get(node.output[0]), weights.get(node.input[1])
        if out_shape and weight and all(out_shape):
            macs[node.name] = float(np.prod(out_shape) * np.prod(weight[1:]))
    total = sum(macs.values()) or 1.0
    return {name: value / total for name, value in macs.items()}


def _with_static_input(model: onnx.ModelProto, height: int, width: int) -> onnx.ModelProto:
    static = onnx.ModelProto()
    static.CopyFrom(model)
    del static.graph.value_info[:]
    dims = static.graph.input[0].type.tensor_type.shape.dim
    for dim, value in zip(dims, (1, 3, height, width), strict=True):
        dim.Clear()
        dim.dim_value = value
    return static


def layer_sensitivity(
    fp32_path: str | Path,
    *,
    calibration_root: str | Path,
    recipe: Recipe = DEFAULT_RECIPE,
    base_keep_float: Sequence[str] = (),
    candidates: Sequence[str] | None = None,
    eval_images: int = 4,
    eval_crop: int = 256,
    threads: int = 1,
) -> tuple[float, list[Sensitivity]]:
    """Which nodes, kept in float, recover most of the int8 model's distance to fp32.

    Calibrates once (``recipe``'s calibration), quantizes with ``base_keep_float`` in float (the
    recipe's own ``keep_float`` is ignored here), then once more per candidate with it also in
    float, and measures the PSNR vs the fp32 output on ``eval_images`` training crops not used for
    calibration. A candidate is a selector (see ``Recipe``): one node, or every node of a role kept
    in float together. ``candidates`` defaults to each convolution on its own, then the roles
    ``last_conv_input``, ``output_tail`` and ``normalization``. About 5 s per candidate here.

    Returns the base PSNR and the candidates sorted by gain (largest first).
    """
    fp32_path, fp32 = _load_fp32(fp32_path)
    calibration = calibration_set(
        calibration_root, recipe.images, crop=recipe.crop, exposures=recipe.exposures, seed=recipe.seed
    )
    evaluation = _held_out(calibration.root, eval_images, eval_crop, recipe)
    base = resolve_nodes(fp32, base_keep_float)
    if candidates is None:
        convs = [node.name for node in _topological_convs(fp32.graph)]
        candidates = [*convs, ROLE_LAST_CONV_INPUT, ROLE_OUTPUT_TAIL, ROLE_NORMALIZATION]
    groups = {selector: [n for n in resolve_nodes(fp32, [selector]) if n not in base] for selector in candidates}
    shares = conv_mac_shares(fp32)
    recipe = replace(recipe, keep_float=())
    with tempfile.TemporaryDirectory(prefix="frlie-sensitivity-") as scratch:
        pre_path, cache = Path(scratch) / "pre.onnx", Path(scratch) / "ranges.json"
        pre_process(fp32_path, pre_path)
        calibrate(pre_path, calibration.samples, recipe, cache, threads=threads)
        reference = _session(fp32_path, threads)
        expected = [_to_uint8(reference.run([OUTPUT_NAME], {INPUT_NAME: x})[0]) for x in evaluation.samples]

        def score(exclude: Sequence[str]) -> float:
            path = Path(scratch) / "candidate.onnx"
            _quantize_with_cache(pre_path, path, cache, recipe, exclude)
            session = _session(path, threads)
            got = [_to_uint8(session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]) for x in evaluation.samples]
            return _pooled_psnr(expected, got)

        base_psnr = score(base)
        results = []
        for selector, nodes in groups.items():
            if not nodes:  # already in the base set
                continue
            value = score([*base, *nodes])
            log.info("sensitivity %s: %.2f dB (%+.2f)", selector, value, value - base_psnr)
            share = sum(shares.get(name, 0.0) for name in nodes)
            results.append(Sensitivity(selector, tuple(nodes), value, value - base_psnr, share))
    return base_psnr, sorted(results, key=lambda s: s.gain_db, reverse=True)
