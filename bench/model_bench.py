"""Benchmark 1, the model alone: PyTorch eager against ONNX Runtime as the service runs it.

Each runtime is timed on the same inputs in the same process, so the speed-up column compares
like with like. Throughput is also expressed as FLOP/s and as a fraction of the machine's peak,
which says how much headroom a better kernel or runtime could still find. A second table sweeps
ONNX Runtime options one at a time from the service's own session options (the tuning record).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np
import onnxruntime as ort

from bench import images
from bench.flops import Work, per_pixel
from bench.images import Size
from bench.machine import Machine, Peak, cpu_peak, gpu_peak
from bench.models import BUNDLED, TINY, ModelFile, ModelStore, torch_model
from bench.report import markdown_table, num, section
from bench.service_config import check_provider, service_env, settings_from
from bench.timing import Timing, measure
from model import contract
from model.network import SIZE_MULTIPLE
from service.engine import Engine
from service.settings import CUDA_PROVIDER

log = logging.getLogger(__name__)

Runner = Callable[[], object]
GraphLevel = ort.GraphOptimizationLevel
Row = dict[str, Any]


@dataclass(frozen=True)
class ModelBenchConfig:
    device: str = "cpu"
    model: str = BUNDLED
    sizes: tuple[Size, ...] = ((600, 400), (1920, 1080), (3840, 2160))
    warmup: int = 1
    max_repeats: int = 10
    budget_s: float = 3.0  # per case: more repeats for fast cases, one for a 20 s 4K run on a CPU
    sweep_size: Size | None = (600, 400)
    cpu_peak_gflops: float | None = None

    @classmethod
    def preset(cls, device: str, quick: bool) -> ModelBenchConfig:
        if quick:
            return cls(
                device=device,
                model=TINY,
                sizes=((96, 64), (240, 160)),
                max_repeats=3,
                budget_s=0.5,
                sweep_size=(96, 64),
            )
        if device == "cuda":  # fast cases: more repeats, and a warm-up per shape for cuDNN's algorithm search
            return cls(device=device, warmup=3, max_repeats=50, budget_s=2.0)
        return cls(device=device)


@dataclass
class Variant:
    """One way of running the model: how to build a runner for an input, and what it is."""

    name: str
    engine: str  # "pytorch" or "onnxruntime"
    precision: str
    device: str  # where it really runs
    detail: str
    prepare: Callable[[np.ndarray], Runner]
    baseline: bool = False
    extra: dict[str, object] = field(default_factory=dict)


# --- runtimes -----------------------------------------------------------------------------------


@contextmanager
def _torch_variant(model: ModelFile, device: str, precision: str) -> Iterator[Variant]:
    """PyTorch eager on a random network of the same architecture (weights do not change speed)."""
    import torch

    dtype = torch.float16 if precision == "fp16" else torch.float32
    network = torch_model(model.config).to(device=device, dtype=dtype)

    def prepare(batch: np.ndarray) -> Runner:
        x = torch.from_numpy(batch).to(device=device, dtype=dtype)

        def run() -> None:
            with torch.inference_mode():
                network(x)  # noqa: F821 (deleted below only once the variant is no longer used)
            if device == "cuda":
                torch.cuda.synchronize()

        return run

    detail = f"torch {torch.__version__}" + (f", {torch.get_num_threads()} threads" if device == "cpu" else "")
    yield Variant("PyTorch eager", "pytorch", precision, device, detail, prepare, baseline=precision == "fp32")
    del network
    if device == "cuda":  # hand cached blocks back before ONNX Runtime's arena wants the memory
        torch.cuda.empty_cache()


def _engine(model: ModelFile, device: str) -> Engine:
    """The service's own Engine (same session options, providers and I/O path as in production)."""
    engine = Engine(settings_from(service_env(model.path, device)))
    check_provider(device, engine.providers)
    return engine


@contextmanager
def _service_variant(model: ModelFile, device: str) -> Iterator[Variant]:
    """ORT through Engine.run: exactly the call the service makes (host input and output)."""
    engine = _engine(model, device)
    options = engine.session.get_session_options()
    detail = (
        f"{engine.provider}, intra-op threads {options.intra_op_num_threads or 'auto'}, "
        f"io_binding {engine.use_io_binding}"
    )
    extra = {"providers": engine.providers, "provider_options": engine.session.get_provider_options()}
    yield Variant(
        "ONNX Runtime (service)",
        "onnxruntime",
        model.precision,
        device,
        detail,
        lambda batch: lambda: engine.run(batch),
        extra=extra,
    )


@contextmanager
def _device_io_variant(model: ModelFile) -> Iterator[Variant]:
    """ORT CUDA with input and output kept on the GPU: the model's time without PCIe copies."""
    engine = _engine(model, "cuda")
    session, device_id = engine.session, 0

    def prepare(batch: np.ndarray) -> Runner:
        binding = session.io_binding()
        source = ort.OrtValue.ortvalue_from_numpy(batch, "cuda", device_id)
        target = ort.OrtValue.ortvalue_from_shape_and_type(batch.shape, np.float32, "cuda", device_id)
        binding.bind_ortvalue_input(contract.INPUT_NAME, source)
        binding.bind_ortvalue_output(contract.OUTPUT_NAME, target)

        def run() -> None:
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()
            _ = (source, target)  # keep the device buffers alive as long as the runner

        return run

    yield Variant(
        "ONNX Runtime (GPU-resident I/O)",
        "onnxruntime",
        model.precision,
        "cuda",
        f"{engine.provider}, IOBinding with device OrtValues",
        prepare,
    )


def _variants(
    config: ModelBenchConfig, model: ModelFile, store: ModelStore, notes: list[str]
) -> list[Callable[[], AbstractContextManager[Variant]]]:
    """Factories (opened one at a time, so only one runtime holds memory) in table order."""
    if config.device == "cpu":
        return [lambda: _torch_variant(model, "cpu", "fp32"), lambda: _service_variant(model, "cpu")]
    import torch

    half = store.fp16(model)
    notes.append(
        "fp32 convolutions on CUDA may run on TF32 tensor cores (cuDNN's and ORT's defaults), so fp32 rows "
        "can pass a fraction of the FP32 (CUDA-core) peak that plain FP32 arithmetic could not reach"
    )
    factories: list[Callable[[], AbstractContextManager[Variant]]] = []
    if torch.cuda.is_available():
        factories += [lambda: _torch_variant(model, "cuda", "fp32"), lambda: _torch_variant(model, "cuda", "fp16")]
    else:
        notes.append("this torch build has no CUDA: the PyTorch eager baseline ran on the CPU")
        factories.append(lambda: _torch_variant(model, "cpu", "fp32"))
    factories += [
        lambda: _service_variant(model, "cuda"),
        lambda: _service_variant(half, "cuda"),
        lambda: _device_io_variant(model),
        lambda: _device_io_variant(half),
    ]
    return factories


# --- measurement --------------------------------------------------------------------------------


def _peak(machine: Machine, device: str, precision: str, override: float | None) -> Peak:
    return gpu_peak(machine.gpu_name, precision) if device == "cuda" else cpu_peak(machine, override)


def _row(variant: Variant, size: Size, timing: Timing, work: Work, peak: Peak) -> Row:
    seconds = timing.median_s
    pixels = size[0] * size[1]
    achieved = work.gflop(pixels) / seconds
    return {
        "size": images.label(size),
        "megapixels": pixels / 1e6,
        "variant": variant.name,
        "engine": variant.engine,
        "precision": variant.precision,
        "device": variant.device,
        "detail": variant.detail,
        "baseline": variant.baseline,
        "ms_per_image": seconds * 1000,
        "megapixels_per_s": pixels / 1e6 / seconds,
        "gflop_per_image": work.gflop(pixels),
        "achieved_gflops": achieved,
        "peak_gflops": peak.gflops,
        "fraction_of_peak": peak.fraction(achieved),
        "timing": timing.to_dict(),
        **variant.extra,
    }


def _time(runner: Runner, config: ModelBenchConfig) -> Timing:
    return measure(runner, warmup=config.warmup, max_repeats=config.max_repeats, budget_s=config.budget_s)


def _add_speedups(rows: list[Row]) -> None:
    """Speed-up against the PyTorch eager fp32 row of the same size (None if it is missing)."""
    baseline = {row["size"]: row["ms_per_image"] for row in rows if row["baseline"]}
    for row in rows:
        base = baseline.get(row["size"])
        row["speedup_vs_eager"] = base / row["ms_per_image"] if base else None


# --- ORT option sweep (tuning) ------------------------------------------------------------------


def _sweep_cases(device: str) -> list[tuple[str, dict[str, object], dict[str, str], dict[str, str]]]:
    """(label, session option changes, session config entries, provider option changes), one knob each."""
    if device == "cuda":
        return [
            ("service session (cuDNN EXHAUSTIVE)", {}, {}, {}),
            ("cuDNN HEURISTIC search", {}, {}, {"cudnn_conv_algo_search": "HEURISTIC"}),
            ("prefer NHWC", {}, {}, {"prefer_nhwc": "1"}),
            ("TF32 off", {}, {}, {"use_tf32": "0"}),
        ]
    return [
        ("service session (threads auto, mem pattern off, ENABLE_ALL)", {}, {}, {}),
        ("1 intra-op thread", {"intra_op_num_threads": 1}, {}, {}),
        ("memory pattern on", {"enable_mem_pattern": True}, {}, {}),
        (
            "graph ENABLE_EXTENDED (no NCHWc layout)",
            {"graph_optimization_level": GraphLevel.ORT_ENABLE_EXTENDED},
            {},
            {},
        ),
        ("graph ENABLE_BASIC", {"graph_optimization_level": GraphLevel.ORT_ENABLE_BASIC}, {}, {}),
        ("no spinning of idle threads", {}, {"session.intra_op.allow_spinning": "0"}, {}),
    ]


def _session_like(
    model: ModelFile,
    engine: Engine,
    changes: dict[str, object],
    entries: dict[str, str],
    provider_changes: dict[str, str],
) -> ort.InferenceSession:
    """A new session with the service's options except the given changes."""
    base = engine.session.get_session_options()
    options = ort.SessionOptions()
    for name in (
        "graph_optimization_level",
        "execution_mode",
        "intra_op_num_threads",
        "inter_op_num_threads",
        "enable_mem_pattern",
        "enable_cpu_mem_arena",
    ):
        setattr(options, name, changes.get(name, getattr(base, name)))
    for key, value in entries.items():
        options.add_session_config_entry(key, value)
    # Only what the service passes (the device id) plus the change: re-feeding every option ORT
    # reports back would also set ones the service leaves alone (a user compute stream, ...).
    providers = [
        (name, {"device_id": "0", **provider_changes}) if name == CUDA_PROVIDER else name for name in engine.providers
    ]
    return ort.InferenceSession(str(model.path), options, providers=providers)


def _sweep(config: ModelBenchConfig, model: ModelFile) -> list[Row]:
    assert config.sweep_size is not None
    engine = _engine(model, config.device)
    batch = images.model_input(config.sweep_size, SIZE_MULTIPLE)
    rows = []
    for label, changes, entries, provider_changes in _sweep_cases(config.device):
        log.info("sweep %s: %s", images.label(config.sweep_size), label)
        row: Row = {"option": label, "size": images.label(config.sweep_size), "ms_per_image": None}
        try:  # an option this ORT build does not know costs one row, not the benchmark
            session = _session_like(model, engine, changes, entries, provider_changes)
            timing = _time(partial(session.run, [contract.OUTPUT_NAME], {contract.INPUT_NAME: batch}), config)
            row.update(ms_per_image=timing.median_s * 1000, providers=session.get_providers(), timing=timing.to_dict())
            del session
        except Exception as error:
            log.warning("sweep %s failed: %s", label, error)
            row["error"] = f"{type(error).__name__}: {error}"
        rows.append(row)
    base = rows[0]["ms_per_image"]
    for row in rows:
        row["speedup_vs_service"] = base / row["ms_per_image"] if base and row["ms_per_image"] else None
    return rows


# --- entry point --------------------------------------------------------------------------------


def run(config: ModelBenchConfig, store: ModelStore, machine: Machine) -> dict[str, Any]:
    model = store.resolve(config.model)
    _engine(model, config.device)  # raises if ORT cannot run on the device asked for: before any timing
    work = per_pixel(model.config)
    notes: list[str] = []
    rows: list[Row] = []
    peaks: dict[str, dict[str, object]] = {}
    for factory in _variants(config, model, store, notes):
        with factory() as variant:
            peak = _peak(machine, variant.device, variant.precision, config.cpu_peak_gflops)
            peaks[f"{variant.device} {variant.precision}"] = peak.to_dict()
            for size in config.sizes:
                log.info("model %s: %s %s on %s", images.label(size), variant.name, variant.precision, variant.device)
                timing = _time(variant.prepare(images.model_input(size, SIZE_MULTIPLE)), config)
                rows.append(_row(variant, size, timing, work, peak))
    rows.sort(key=lambda row: config.sizes.index(images.parse_size(str(row["size"]))))
    _add_speedups(rows)
    return {
        "benchmark": "model",
        "config": asdict(config),
        "model": model.to_dict(),
        "model_description": model.describe(),
        "work": work.to_dict(),
        "peaks": peaks,
        "results": rows,
        "ort_option_sweep": _sweep(config, model) if config.sweep_size else [],
        "notes": notes,
    }


def markdown(result: dict[str, Any], caption: str) -> str:
    work = result["work"]
    rows = [
        [
            r["size"],
            r["variant"],
            r["precision"],
            r["device"],
            num(r["ms_per_image"]),
            num(r["megapixels_per_s"]),
            num(r["achieved_gflops"]),
            num(None if r["fraction_of_peak"] is None else 100 * r["fraction_of_peak"], 2),
            num(r["speedup_vs_eager"]),
            r["timing"]["repeats"],
        ]
        for r in result["results"]
    ]
    table = markdown_table(
        ["size", "runtime", "precision", "device", "ms / image", "MP/s", "GFLOP/s", "% of peak", "x vs eager", "runs"],
        rows,
    )
    notes = [
        f"Model: {result['model_description']}. Work per output pixel: {num(work['macs_per_pixel'])} MACs = "
        f"{num(work['flops_per_pixel'])} FLOPs ({work['method']}).",
        *(
            f"Peak ({kind}): {num(peak['gflops'])} GFLOP/s; {peak['assumption']}."
            for kind, peak in result["peaks"].items()
        ),
        "ms / image is the median of the timed runs after warm-up; x vs eager = PyTorch eager fp32 time / this time, "
        "same size, same run. PyTorch runs randomly initialised weights of the same architecture (speed does not "
        "depend on weight values).",
        *result["notes"],
    ]
    out = section("Model: PyTorch eager vs ONNX Runtime", caption, table, notes)
    sweep = result["ort_option_sweep"]
    if sweep:
        sweep_rows = [
            [r["option"], r["size"], num(r["ms_per_image"]), num(r["speedup_vs_service"]), r.get("error", "")]
            for r in sweep
        ]
        out += "\n" + section(
            "ONNX Runtime options, one change at a time",
            caption,
            markdown_table(["session", "size", "ms / image", "x vs service session", "note"], sweep_rows),
            ["Each row changes one option of the service's session (same model, same input); x > 1 is faster."],
        )
    return out
