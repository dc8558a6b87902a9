"""Quantization-aware fine-tuning of the int8 file (issue 23): ``python -m training qat``.

Post-training quantization (``training.quantize``) loses 0.053 dB on the mean of the train lows,
but 39 of 247 of them lose more than 0.2 dB: the activation ranges, calibrated once, clip the
brighter photos and shift their colours by a few levels. Here a copy of the network is fine-tuned
to give the fp32 network's answers *through* the int8 file's own arithmetic:

* the graph is the ONNX graph that ``quantize_int8`` writes: BatchNorms that follow a convolution
  are folded into it first (ONNX Runtime's pre-processing does the same), and every tensor that the
  int8 file quantizes (outputs of Conv, Relu, LeakyRelu, Add and Concat, matched to the traced torch
  graph by kind and order) gets a fake quantizer with the file's own scale and zero point;
* weights of the convolutions that the file quantizes see per-channel symmetric 7-bit rounding
  (range [-64, 64], scale max|w| / 64, as ``reduce_range`` writes them), recomputed every step;
* rounding passes gradients straight through (clipped values pass none), and the loss is the mean
  squared difference to the fp32 network's answer (distillation: the int8 file's promise is to
  answer as fp32 does), on random crops of the train lows (never val).

The tuned copy is exported, then quantized with the very activation ranges it was trained under
(the calibration cache of the untuned export), so training and the shipped file agree. The int8
file keeps the fp32 file's metadata and records the fine-tuning in its ``quantization`` entry; the
fp32 file and ``frlie.pt`` are not touched.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import operator
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import fx, nn
from torch.nn.utils import parametrize
from torch.nn.utils.fusion import fuse_conv_bn_weights
from tqdm import tqdm

from model.checkpoint import load_weights
from model.contract import QUANTIZATION
from model.network import FRLIE
from training.data import list_pairs, load_rgb, to_tensor
from training.errors import TrainingError
from training.quantize import (
    DEFAULT_RECIPE,
    CalibrationDataError,
    Recipe,
    pre_process,
    quantize_int8,
    resolve_calibration_root,
)

log = logging.getLogger(__name__)

ACTIVATION_LEVELS = (0, 255)  # uint8 activations
WEIGHT_LEVELS = (-64, 64)  # int8 symmetric weights with reduce_range
QUANTIZED_KINDS = ("Conv", "Relu", "LeakyRelu", "Add", "Concat")


@dataclass(frozen=True)
class QatConfig:
    """What decides the fine-tune, recorded in the int8 file."""

    steps: int = 600
    batch: int = 4
    crop: int = 192
    learning_rate: float = 1e-5
    # Weight of the no-worse term: the squared error against the normal-light reference that a
    # crop's answer adds to fp32's own (0: pure distillation).
    no_worse_weight: float = 0.0
    # Share of crops sent through a JPEG round trip first (q90, as phones and browsers upload).
    jpeg_share: float = 0.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- which tensors the int8 file quantizes ---------------------------------------------------------


@dataclass(frozen=True)
class QuantPoint:
    scale: float
    zero_point: int


@dataclass(frozen=True)
class QuantLayout:
    """Per node kind, in graph order: the quantizer on its output (None: left in float); and for
    each convolution whether its weights are quantized."""

    outputs: dict[str, list[QuantPoint | None]]
    conv_weights: list[bool]


def read_layout(fp32_onnx: Path, int8_onnx: Path) -> QuantLayout:
    """The quantizers of ``int8_onnx`` (a QDQ file) placed on the nodes of the fp32 graph it was made
    from (``fp32_onnx`` as ONNX Runtime's pre-processing leaves it, BatchNorms folded)."""
    with tempfile.TemporaryDirectory(prefix="frlie-qat-") as scratch:
        pre_path = Path(scratch) / "pre.onnx"
        pre_process(fp32_onnx, pre_path)
        pre_processed = onnx.load(str(pre_path))
    int8 = onnx.load(str(int8_onnx))
    initializers = {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in int8.graph.initializer}
    producers = {output: node for node in int8.graph.node for output in node.output}
    quantized: dict[str, QuantPoint] = {}
    for node in int8.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in initializers:
            scale, zero_point = initializers[node.input[1]], initializers[node.input[2]]
            quantized[node.input[0]] = QuantPoint(float(scale), int(zero_point))
    # Convolutions keep their graph order (a Relu that the quantizer removed renames its output).
    conv_weights = [
        node.input[1] in producers and producers[node.input[1]].op_type == "DequantizeLinear"
        for node in int8.graph.node
        if node.op_type == "Conv"
    ]
    outputs: dict[str, list[QuantPoint | None]] = {kind: [] for kind in QUANTIZED_KINDS}
    for node in pre_processed.graph.node:
        if node.op_type in outputs:
            outputs[node.op_type].append(quantized.get(node.output[0]))
    if len(conv_weights) != len(outputs["Conv"]):
        raise TrainingError("the int8 file and its fp32 graph have different convolutions")
    return QuantLayout(outputs, conv_weights)


# --- the fake-quantized torch network ---------------------------------------------------------------


class ActivationFakeQuant(nn.Module):
    """uint8 rounding and clipping at a fixed scale and zero point; straight-through gradients."""

    def __init__(self, point: QuantPoint) -> None:
        super().__init__()
        self.scale, self.zero_point = point.scale, point.zero_point

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, *ACTIVATION_LEVELS)


class WeightFakeQuant(nn.Module):
    """Per-output-channel symmetric 7-bit rounding of a convolution's weights (a parametrization)."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        scale = (weight.detach().abs().amax(dim=(1, 2, 3)) / WEIGHT_LEVELS[1]).clamp_min(1e-12)
        zero = torch.zeros(weight.shape[0], dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, *WEIGHT_LEVELS)


def _kind(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    if node.op == "call_module":
        module = modules[str(node.target)]
        for kind, module_type in (("Conv", nn.Conv2d), ("Relu", nn.ReLU), ("LeakyRelu", nn.LeakyReLU)):
            if isinstance(module, module_type):
                return kind
    if node.op == "call_function" and node.target in (operator.add, torch.add):
        return "Add"
    if node.op == "call_function" and node.target is torch.cat:
        return "Concat"
    return None


def fold_batch_norms(model: FRLIE) -> int:
    """Fold every BatchNorm that directly follows a convolution into it (eval statistics) and make
    the BatchNorm an identity, as ONNX Runtime's pre-processing folds them; returns how many."""
    traced = fx.symbolic_trace(model)
    modules = dict(traced.named_modules())
    folded = 0
    for node in traced.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[str(node.target)], nn.BatchNorm2d):
            continue
        source = node.args[0]
        if not (isinstance(source, fx.Node) and source.op == "call_module" and len(source.users) == 1):
            continue
        conv = model.get_submodule(str(source.target))
        norm = model.get_submodule(str(node.target))
        if not isinstance(conv, nn.Conv2d) or not isinstance(norm, nn.BatchNorm2d):
            continue
        mean, var = norm.running_mean, norm.running_var
        if mean is None or var is None:  # a BatchNorm without statistics cannot be folded
            continue
        conv.weight, conv.bias = fuse_conv_bn_weights(
            conv.weight, conv.bias, mean, var, norm.eps, norm.weight, norm.bias
        )
        with torch.no_grad():
            norm.weight.fill_(1.0)
            norm.bias.zero_()
            mean.zero_()
            var.fill_(1.0 - norm.eps)  # sqrt(var + eps) == 1: an exact identity
        folded += 1
    return folded


def fake_quantized(model: FRLIE, layout: QuantLayout) -> fx.GraphModule:
    """``model`` (BatchNorms folded) traced, with the int8 file's quantizers inserted; it shares
    ``model``'s parameters, whose quantized convolutions get ``WeightFakeQuant``."""
    traced = fx.symbolic_trace(model)
    modules = dict(traced.named_modules())
    seen = dict.fromkeys(QUANTIZED_KINDS, 0)
    inserted = 0
    for node in list(traced.graph.nodes):
        kind = _kind(node, modules)
        if kind is None:
            continue
        index = seen[kind]
        seen[kind] += 1
        if index >= len(layout.outputs[kind]):
            raise TrainingError(f"the torch graph has more {kind} nodes than the int8 file")
        if kind == "Conv" and layout.conv_weights[index]:
            parametrize.register_parametrization(modules[str(node.target)], "weight", WeightFakeQuant())
        point = layout.outputs[kind][index]
        if point is None:
            continue
        name = f"fake_quant_{inserted}"
        traced.add_submodule(name, ActivationFakeQuant(point))
        with traced.graph.inserting_after(node):
            quantizer = traced.graph.call_module(name, (node,))
        node.replace_all_uses_with(quantizer, delete_user_cb=lambda user, q=quantizer: user is not q)
        inserted += 1
    counts = {kind: len(points) for kind, points in layout.outputs.items()}
    if seen != counts:
        raise TrainingError(f"the torch graph's nodes {seen} do not match the int8 file's {counts}")
    traced.recompile()
    return traced


def strip_fake_quant(model: FRLIE) -> None:
    """Remove the weight quantizers, keeping the float (latent) weights that were trained."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)


# --- data -----------------------------------------------------------------------------------------------


def train_pairs(root: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every (low, normal-light) pair of the train split, as uint8 H x W x 3."""
    try:  # the same folder rule as the calibration: root/train, never a held-out split
        folder = resolve_calibration_root(root)
    except CalibrationDataError as error:
        raise TrainingError(f"quantization-aware fine-tuning: {error}") from error
    pairs = [(load_rgb(pair.low), load_rgb(pair.high)) for pair in list_pairs(folder)]
    if not pairs:
        raise TrainingError(f"no training pairs under {folder}")
    return pairs


def batches(
    pairs: list[tuple[np.ndarray, np.ndarray]], config: QatConfig, rng: np.random.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless random crops (flipped at random) of the train pairs: inputs and their references,
    N x 3 x crop x crop; ``config.jpeg_share`` of the inputs are JPEG q90 round trips."""
    from training.evaluate import EXPOSURE_JPEG_QUALITY, as_jpeg

    while True:
        lows, highs = [], []
        for index in rng.integers(0, len(pairs), size=config.batch):
            low, high = pairs[int(index)]
            height, width = low.shape[:2]
            side = min(config.crop, height, width) // 4 * 4
            top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
            window = (slice(top, top + side), slice(left, left + side))
            low_crop, high_crop = low[window], high[window]
            if rng.random() < 0.5:
                low_crop, high_crop = low_crop[:, ::-1], high_crop[:, ::-1]
            if rng.random() < config.jpeg_share:
                low_crop = as_jpeg(np.ascontiguousarray(low_crop), EXPOSURE_JPEG_QUALITY)
            lows.append(low_crop)
            highs.append(high_crop)
        yield (
            torch.stack([to_tensor(np.ascontiguousarray(image)) for image in lows]),
            torch.stack([to_tensor(np.ascontiguousarray(image)) for image in highs]),
        )


def qat_loss(answer: torch.Tensor, teacher: torch.Tensor, reference: torch.Tensor, config: QatConfig) -> torch.Tensor:
    """Mean squared distance to fp32's answer, plus (``no_worse_weight``) what each crop's answer
    loses against its reference beyond fp32's own error: a photo's PSNR moves with the part of the
    int8 error that correlates with fp32's error, which distillation alone does not see."""
    loss = nn.functional.mse_loss(answer, teacher)
    if config.no_worse_weight > 0:
        dims = (1, 2, 3)
        worse = ((answer - reference) ** 2).mean(dims) - ((teacher - reference) ** 2).mean(dims)
        loss = loss + config.no_worse_weight * worse.clamp_min(0).mean()
    return loss


# --- the run --------------------------------------------------------------------------------------------


STATE_FILE = "qat-state.pt"  # in the run folder: weights, optimizer, schedule, step, loss history


def lineage(saved: dict[str, Any]) -> dict[str, Any]:
    """What an earlier run was, from its loaded ``qat-state.pt``: its settings, how far it went, and its
    own warm start."""
    return {"config": saved["config"], "steps_done": saved["step"], "warm_start": saved.get("warm_start")}


def fine_tune(
    weights: Path,
    layout: QuantLayout,
    data_root: Path,
    run_dir: Path,
    config: QatConfig,
    max_minutes: float | None,
    init_state: Path | None = None,
) -> tuple[FRLIE, dict[str, Any]]:
    """Fine-tune a BN-folded copy of ``weights`` under the int8 layout; resumable from ``run_dir``.
    ``init_state`` (the ``qat-state.pt`` of an earlier run of the same weights) starts from the
    weights that run reached, with a new schedule; its settings (and its own warm start, and so on)
    go into the record, so the shipped file names every stage that shaped it.

    Returns the tuned network (fake quantizers removed) and the run's record; the record's
    ``finished`` is False when ``max_minutes`` ran out first (run again to go on)."""
    torch.manual_seed(config.seed)
    teacher, _ = load_weights(weights)
    student, _ = load_weights(weights)
    fold_batch_norms(student)
    network = fake_quantized(student, layout).eval()  # eval: BatchNorms (identities) keep their statistics
    trainable = [p for module in student.modules() if isinstance(module, nn.Conv2d) for p in module.parameters()]
    optimizer = torch.optim.Adam(trainable, lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)
    step, history = 0, []
    state = run_dir / STATE_FILE
    initial = None if init_state is None else torch.load(init_state, weights_only=False)
    warm_start = None if initial is None else lineage(initial)
    if state.is_file():
        saved = torch.load(state, weights_only=False)
        if saved["config"] != config.to_dict():
            raise TrainingError(f"{state} was written with other settings {saved['config']}; use another run dir")
        student.load_state_dict(saved["student"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        step, history = saved["step"], saved["history"]
        warm_start = saved.get("warm_start") or warm_start  # states written before the record had none
    elif initial is not None:
        student.load_state_dict(initial["student"])
    rng = np.random.default_rng([config.seed, step])
    data = batches(train_pairs(data_root), config, rng)
    started = time.monotonic()
    bar = tqdm(total=config.steps, initial=step, desc="qat", unit="step")
    running = history[-1]["loss"] if history else None

    def save() -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        payload = {
            "config": config.to_dict(),
            "student": student.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "history": history,
            "warm_start": warm_start,
        }
        torch.save(payload, state.with_suffix(".tmp"))
        state.with_suffix(".tmp").replace(state)

    while step < config.steps:
        if max_minutes is not None and time.monotonic() - started > 60 * max_minutes:
            save()
            break
        inputs, references = next(data)
        with torch.no_grad():
            target = teacher(inputs)
        loss = qat_loss(network(inputs), target, references, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        step += 1
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        bar.update(1)
        bar.set_postfix(loss_db=f"{-10 * math.log10(max(running, 1e-12)):.2f}")
        if step % 50 == 0 or step == config.steps:
            history.append({"step": step, "loss": running})
            save()
    bar.close()
    strip_fake_quant(student)
    record = {"steps_done": step, "finished": step >= config.steps, "history": history, "warm_start": warm_start}
    return student.eval(), record


def quantization_aware_int8(
    weights: Path,
    fp32_onnx: Path,
    data_root: Path,
    out_path: Path,
    run_dir: Path,
    config: QatConfig,
    max_minutes: float | None = None,
    recipe: Recipe = DEFAULT_RECIPE,
    init_state: Path | None = None,
) -> dict[str, Any] | None:
    """Write ``out_path``: the int8 file of ``weights`` fine-tuned under quantization; gate it against
    ``fp32_onnx`` on val and record the verdict. None when ``max_minutes`` ran out (resumable)."""
    from training.export import export_onnx
    from training.onnx_metadata import read_metadata, update_metadata
    from training.precision_gate import describe, measure, record_verdict

    run_dir.mkdir(parents=True, exist_ok=True)
    base_fp32, base_int8, cache = run_dir / "base.onnx", run_dir / "base-int8.onnx", run_dir / "ranges.json"
    if not base_int8.is_file():
        # The untuned network through the same exporter: its ranges are the ones training works under.
        network, _ = load_weights(weights)
        export_onnx(network, base_fp32, verify=False)
        quantize_int8(
            base_fp32,
            base_int8,
            calibration_root=data_root / "train",
            recipe=recipe,
            calibration_cache=cache,
            check_images=0,
        )
    layout = read_layout(base_fp32, base_int8)
    tuned, record = fine_tune(weights, layout, data_root, run_dir, config, max_minutes, init_state)
    if not record["finished"]:
        log.info("stopped at step %d of %d; run again to resume", record["steps_done"], config.steps)
        return None
    tuned_fp32 = run_dir / "tuned.onnx"
    # The file answers for the shipped fp32 model: its metadata (policy included), carried through.
    export_onnx(tuned, tuned_fp32, metadata=read_metadata(fp32_onnx), verify=False)
    report = quantize_int8(
        tuned_fp32, out_path, calibration_root=data_root / "train", recipe=recipe, calibration_cache=cache
    )
    quantization = json.loads(read_metadata(out_path)[QUANTIZATION])
    quantization["fine_tuning"] = {
        "method": "quantization-aware fine-tuning (training.qat): fake-quantized copy of the network, "
        "distilled from the fp32 answers on train-low crops, then quantized with the same ranges",
        **config.to_dict(),
        "data": f"{data_root.name}/train",
        "steps_done": record["steps_done"],
        "warm_start": record["warm_start"],
        "final_loss_psnr_db": -10 * math.log10(max(record["history"][-1]["loss"], 1e-12)),
    }
    update_metadata(out_path, {QUANTIZATION: json.dumps(quantization)})
    figures = measure(fp32_onnx, out_path, data_root, "int8")
    record_verdict(out_path, figures)
    log.info("%s", describe(figures))
    return {**figures, "path": str(out_path), "check": report.check}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "qat",
        help="quantization-aware fine-tuning of the int8 file (gated against fp32 on val)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--weights", type=Path, default=Path("model/weights/frlie.pt"))
    parser.add_argument("--fp32", type=Path, default=Path("model/weights/frlie.onnx"), help="the shipped fp32 file")
    parser.add_argument("--data", type=Path, required=True, help="lol-pairs root (train/ tunes, val/ gates)")
    parser.add_argument("--out", type=Path, default=Path("model/weights/frlie-int8.onnx"))
    parser.add_argument("--run-dir", type=Path, required=True, help="resumable state and scratch files")
    parser.add_argument("--steps", type=int, default=QatConfig.steps)
    parser.add_argument("--batch", type=int, default=QatConfig.batch)
    parser.add_argument("--crop", type=int, default=QatConfig.crop)
    parser.add_argument("--lr", type=float, default=QatConfig.learning_rate)
    parser.add_argument(
        "--no-worse-weight",
        type=float,
        default=QatConfig.no_worse_weight,
        help="weight of the term that keeps each crop's answer no worse than fp32's against the reference",
    )
    parser.add_argument("--jpeg-share", type=float, default=QatConfig.jpeg_share, help="share of JPEG q90 inputs")
    parser.add_argument("--init-state", type=Path, default=None, help="start from an earlier run's qat-state.pt")
    parser.add_argument(
        "--keep-float",
        action="append",
        default=[],
        metavar="SELECTOR",
        help="also keep this node in float (a role or conv[i], as training.quantize's Recipe.keep_float); repeatable",
    )
    parser.add_argument("--max-minutes", type=float, default=None)
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> QatConfig:
    """The fine-tune's settings as the command line gave them."""
    return QatConfig(
        steps=args.steps,
        batch=args.batch,
        crop=args.crop,
        learning_rate=args.lr,
        no_worse_weight=args.no_worse_weight,
        jpeg_share=args.jpeg_share,
    )


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """The default int8 recipe, with the command line's extra float nodes."""
    extra = tuple(selector for selector in args.keep_float if selector not in DEFAULT_RECIPE.keep_float)
    return replace(DEFAULT_RECIPE, keep_float=(*DEFAULT_RECIPE.keep_float, *extra))


def run(args: argparse.Namespace) -> int:
    result = quantization_aware_int8(
        args.weights,
        args.fp32,
        args.data,
        args.out,
        args.run_dir,
        config_from_args(args),
        max_minutes=args.max_minutes,
        recipe=recipe_from_args(args),
        init_state=args.init_state,
    )
    if result is not None:
        print(json.dumps(result, indent=2, default=str))
    return 0
