"""The ONNX Runtime session and everything the service reads from the model file.

Contract (see training/export.py): input ``image`` float32 N x 3 x H x W RGB in [0, 1], H and W
multiples of ``size_multiple``; output ``enhanced`` of the same shape. The metadata carries the
model version and the receptive radius that exact tiling depends on.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from model import contract
from service.ensemble import passes_for
from service.memory import measure_peak_growth, return_freed_buffers_to_the_os
from service.policy import PolicyConstants
from service.precision import PrecisionReport, open_precision
from service.settings import DEFAULT_GPU_TILE_SIZE, Settings
from service.throughput import ThroughputEstimate
from service.tiling import TilePlan, plan_tiles, plan_within_budget, tile_window_shape

log = logging.getLogger(__name__)

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
# The input that measures working memory and speed at start-up: big enough that ORT's working
# buffers dwarf allocator noise (~150 MB on the 4-block model), small enough to take a few seconds.
MEMORY_PROBE_SHAPE = (384, 384)
PROBE_REPEATS = 2
EXAMPLE_SIZES = ((640, 480), (1920, 1080), (4000, 3000), (6000, 4000))  # width x height, for /readyz


class ModelFileError(RuntimeError):
    """The model file is missing or does not follow the export contract."""


def missing_model_message(path: Path) -> str:
    return (
        f"model file {path} does not exist. Train and export one (`make train` then `make export`), "
        f"or set FRLIE_MODEL_PATH to an .onnx file written by `python -m training export`."
    )


def _provider_list(settings: Settings) -> list[str | tuple[str, dict[str, object]]]:
    """Providers as ORT wants them, with the device id for the GPU ones."""
    return list(settings.providers)


def session_options(settings: Settings) -> ort.SessionOptions:
    """ORT options as the service runs the model (also used to time models the way it would)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = settings.intra_op_threads
    # Memory patterns pre-plan one block per input shape: twice the peak memory, no speed gain here.
    options.enable_mem_pattern = False
    # Without the CPU arena, the memory of a large window goes back to the OS after the call
    # instead of staying reserved for the life of the process (same speed, measured).
    options.enable_cpu_mem_arena = False
    return options


def open_model(settings: Settings) -> tuple[ort.InferenceSession, Path, PrecisionReport]:
    """The ORT session FRLIE_PRECISION asks for, the file it runs, and how that file was chosen
    (``auto``: a start-up race of the files whose quality gate passed, service.precision)."""
    options, providers = session_options(settings), _provider_list(settings)

    def open_session(path: Path) -> ort.InferenceSession:
        if path == settings.model_path and not path.is_file():
            raise ModelFileError(missing_model_message(path))
        if not path.is_file():
            raise ModelFileError(
                f"FRLIE_PRECISION={settings.precision} but {path} does not exist: make it with `python -m "
                f"training ship --data DIR` (or `export --int8 / --fp16`), or set FRLIE_PRECISION=auto"
            )
        return ort.InferenceSession(str(path), options, providers=providers)

    return open_precision(settings.model_path, settings.precision, open_session)


def _policy_constants(metadata: dict[str, str], path: Path) -> PolicyConstants:
    """The calibrated policy stored in the model file (``training calibrate``); without one, the plain
    network (logged, and visible in /readyz)."""
    if contract.POLICY not in metadata:
        log.warning("%s carries no calibrated policy (`python -m training calibrate`): plain network", path.name)
    try:
        return PolicyConstants.from_metadata(metadata)
    except ValueError as error:
        raise ModelFileError(f"{path}: {error}") from error


class Engine:
    """One ORT session, the tile geometry derived from its metadata, and batch execution."""

    def __init__(
        self, settings: Settings, *, io_binding: bool | None = None, fixed_batch_shapes: bool | None = None
    ) -> None:
        """``io_binding`` (ORT writes straight into the output buffer) and ``fixed_batch_shapes`` (every
        batch padded to its size limit, so the device only sees warmed-up shapes) are measurement
        switches for the benchmarks and tests; unset, each is on when a GPU runs the model."""
        self.session, path, self.precision_report = open_model(settings)
        self.model_file = path
        self.providers: list[str] = self.session.get_providers()
        if self.providers[0] != settings.providers[0]:
            log.warning("requested %s but ONNX Runtime runs on %s", settings.providers, self.providers)
        self._check_io()

        metadata = self.session.get_modelmeta().custom_metadata_map
        if contract.RECEPTIVE_RADIUS not in metadata:
            raise ModelFileError(
                f"{path} has no {contract.RECEPTIVE_RADIUS} metadata; export it with `python -m training export`"
            )
        self.metadata = dict(metadata)
        self.precision = metadata.get(contract.PRECISION, "unknown")
        version = metadata.get(contract.MODEL_VERSION, contract.UNVERSIONED)
        # The version names the weights; an int8 file of them says so, as X-Model-Version does.
        self.model_version = version if self.precision in ("fp32", "unknown") else f"{version} [{self.precision}]"
        self.policy_constants = _policy_constants(metadata, path)
        self.receptive_radius = int(metadata[contract.RECEPTIVE_RADIUS])
        self.size_multiple = int(metadata.get(contract.SIZE_MULTIPLE, "4"))
        on_gpu = self.provider in GPU_PROVIDERS
        # Fixed tiles on a GPU (one shape: batching, cuDNN caches) or when FRLIE_TILE_SIZE asks for
        # them; otherwise windows are planned per image by cost within the memory budget.
        tile_size = settings.tile_size or DEFAULT_GPU_TILE_SIZE
        self.cost_aware = settings.tile_size is None and not on_gpu
        self.tile_core = -(-tile_size // self.size_multiple) * self.size_multiple
        self.tile_shape = tile_window_shape(self.tile_core, self.receptive_radius, self.size_multiple)
        self.memory_budget_bytes = settings.memory_budget_mb * 1024 * 1024
        self.working_bytes_per_pixel: float | None = None
        self.throughput = ThroughputEstimate()  # measured: the probe, then every ORT call
        self.max_window_pixels = self.tile_shape[0] * self.tile_shape[1]

        self.use_io_binding = on_gpu if io_binding is None else io_binding
        # With padded batches every ORT call on a shape carries exactly batch_limit(shape) items.
        self.pad_batches = on_gpu if fixed_batch_shapes is None else fixed_batch_shapes
        self.max_batch_size = settings.max_batch_size
        self.max_ensemble_passes = settings.self_ensemble
        self.ensemble_pixels = settings.self_ensemble_budget(on_gpu)
        if self.cost_aware:
            self._measure()
        self.max_batch_pixels = settings.max_batch_pixels
        if self.max_batch_pixels is None and not on_gpu:
            self.max_batch_pixels = self.max_window_pixels
        self.warmup_seconds: float | None = None

    def _measure(self) -> None:
        """Working memory per input pixel and seconds per pixel, from one probe call on this machine.

        The window budget is the memory budget divided by the measured bytes per pixel (never below
        one fixed tile, so a tiny budget still works). Where peak memory cannot be read (not Linux),
        windows stay at the fixed tile shape.
        """
        height, width = MEMORY_PROBE_SHAPE
        # Large buffers from fresh mappings (as `serve` sets up anyway): otherwise ORT may reuse heap
        # that earlier work freed but kept resident, and the peak would not grow at all.
        return_freed_buffers_to_the_os()
        probe = np.zeros((1, 3, height, width), dtype=np.float32)
        self.run(probe[:, :, :64, :64])
        # Memory freed by someone else during the call (a garbage-collected session, another
        # thread) lowers the measured growth, never raises it: collect first and keep the larger
        # of two measurements.
        gc.collect()
        growths: list[int | None] = []
        for _ in range(PROBE_REPEATS):
            self.throughput.reset()  # the speed is the last, warmest call's: set-up is not per-pixel cost
            growths.append(measure_peak_growth(lambda: self.run(probe)))
        measured = [g for g in growths if g is not None]
        growth = max(measured) if len(measured) == len(growths) else None
        # Less than the probe's own input and output buffers means the measurement saw nothing.
        if growth is None or growth < 2 * probe.nbytes:
            log.warning("peak memory cannot be measured here: tiles stay at %s", self.tile_shape)
            self.cost_aware = False
            return
        self.working_bytes_per_pixel = max(1.0, growth / (height * width))
        budget_pixels = int(self.memory_budget_bytes / self.working_bytes_per_pixel)
        self.max_window_pixels = max(budget_pixels, self.tile_shape[0] * self.tile_shape[1])
        log.info(
            "measured %.0f bytes and %.2f us per pixel: windows up to %.2f MP",
            self.working_bytes_per_pixel,
            (self.seconds_per_pixel or 0.0) * 1e6,
            self.max_window_pixels / 1e6,
        )

    @property
    def provider(self) -> str:
        """The execution provider that runs the model (ORT's first active one)."""
        return self.providers[0]

    def _check_io(self) -> None:
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [contract.INPUT_NAME] or contract.OUTPUT_NAME not in outputs:
            raise ModelFileError(
                f"model has inputs {inputs} and outputs {outputs}; "
                f"expected {contract.INPUT_NAME!r} -> {contract.OUTPUT_NAME!r}"
            )

    def batch_limit(self, height: int, width: int) -> int:
        """Most items of this size in one ORT call: max_batch_size, fewer if they would pass max_batch_pixels."""
        if self.max_batch_pixels is None:
            return self.max_batch_size
        return max(1, min(self.max_batch_size, self.max_batch_pixels // (height * width)))

    def plan(self, height: int, width: int) -> TilePlan:
        """How an image of this size is cut into model inputs: the cheapest windows within the memory
        budget (whole if it fits), or fixed tiles (whole if no bigger than one tile)."""
        if self.cost_aware:
            return plan_within_budget(
                height,
                width,
                max_window_pixels=self.max_window_pixels,
                receptive_radius=self.receptive_radius,
                multiple=self.size_multiple,
            )
        return plan_tiles(
            height, width, core=self.tile_core, receptive_radius=self.receptive_radius, multiple=self.size_multiple
        )

    def ensemble_passes(self, height: int, width: int) -> int:
        """Model passes (service.ensemble) an image of this size gets within the self-ensemble budget."""
        return passes_for(height * width, self.max_ensemble_passes, self.ensemble_pixels)

    def predicted_seconds(self, computed_pixels: int) -> float | None:
        """How long the model needs for this many computed pixels, from measured throughput."""
        seconds_per_pixel = self.seconds_per_pixel
        return None if seconds_per_pixel is None else computed_pixels * seconds_per_pixel

    def run(self, batch: np.ndarray) -> np.ndarray:
        """One ORT call on N x 3 x H x W float32; blocking, so callers run it in a worker thread."""
        started = time.perf_counter()
        if not self.use_io_binding:
            output: np.ndarray = self.session.run([contract.OUTPUT_NAME], {contract.INPUT_NAME: batch})[0]
        else:
            # ORT copies the input to the device and the result straight into our host buffer.
            output = np.empty_like(batch)
            binding = self.session.io_binding()
            binding.bind_cpu_input(contract.INPUT_NAME, batch)
            binding.bind_output(contract.OUTPUT_NAME, "cpu", 0, np.float32, output.shape, output.ctypes.data)
            self.session.run_with_iobinding(binding)
        self.throughput.observe(batch.shape[0] * batch.shape[2] * batch.shape[3], time.perf_counter() - started)
        return output

    @property
    def seconds_per_pixel(self) -> float | None:
        """Measured model time per computed pixel on this machine (None until the model has run)."""
        return self.throughput.seconds_per_pixel

    def warm_up(self) -> float:
        """Run every batch shape of the fixed tile once, so large images pay no first-run costs.

        Whole small images (and images narrower than a tile) have shapes that depend on the upload,
        so they cannot be warmed up in advance.
        """
        if self.cost_aware:  # window shapes follow the uploads; the start-up probe already ran the model
            self.warmup_seconds = 0.0
            return self.warmup_seconds
        height, width = self.tile_shape
        full_batch = self.batch_limit(height, width)
        batch_sizes = {full_batch} if self.pad_batches else {1, full_batch}
        started = time.perf_counter()
        for size in sorted(batch_sizes):
            self.run(np.zeros((size, 3, height, width), dtype=np.float32))
        self.warmup_seconds = time.perf_counter() - started
        # First calls include one-off set-up: measure the throughput on a warm call instead.
        self.throughput.reset()
        self.run(np.zeros((1, 3, height, width), dtype=np.float32))
        log.info("warmed up %s on %s in %.2f s", sorted(batch_sizes), self.providers, self.warmup_seconds)
        return self.warmup_seconds

    def describe(self) -> dict[str, object]:
        """What /readyz reports about the model and how it runs."""
        seconds_per_pixel = self.seconds_per_pixel
        return {
            "model_version": self.model_version,
            "execution_provider": self.provider,
            "providers": self.providers,
            "precision": self.precision,
            "model_file": self.model_file.name,
            "precision_choice": self.precision_report.as_dict(),
            "receptive_radius": self.receptive_radius,
            "size_multiple": self.size_multiple,
            "tiling": "cost-aware" if self.cost_aware else "fixed",
            "tile_core": None if self.cost_aware else self.tile_core,
            "tile_shape": None if self.cost_aware else list(self.tile_shape),
            "tile_batch_size": None if self.cost_aware else self.batch_limit(*self.tile_shape),
            "memory_budget_bytes": self.memory_budget_bytes,
            "working_bytes_per_pixel": self.working_bytes_per_pixel,
            "max_window_pixels": self.max_window_pixels,
            "seconds_per_megapixel": None if seconds_per_pixel is None else seconds_per_pixel * 1e6,
            "example_plans": {f"{w}x{h}": self.plan(h, w).describe() for w, h in EXAMPLE_SIZES},
            "self_ensemble_pixels": self.ensemble_pixels,
            "example_ensemble_passes": {f"{w}x{h}": self.ensemble_passes(h, w) for w, h in EXAMPLE_SIZES},
            "max_batch_pixels": self.max_batch_pixels,
            "padded_batches": self.pad_batches,
            "io_binding": self.use_io_binding,
            "warmup_seconds": self.warmup_seconds,
            "policy": json.loads(self.policy_constants.to_json()),
        }
