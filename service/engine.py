"""The ONNX Runtime session and everything the service reads from the model file.

Contract (see training/export.py): input ``image`` float32 N x 3 x H x W RGB in [0, 1], H and W
multiples of ``size_multiple``; output ``enhanced`` of the same shape. The metadata carries the
model version and the receptive radius that exact tiling depends on.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.settings import Settings
from service.tiling import TilePlan, plan_tiles, tile_window_shape

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "enhanced"
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


class ModelFileError(RuntimeError):
    """The model file is missing or does not follow the export contract."""


def missing_model_message(path: Path) -> str:
    return (
        f"model file {path} does not exist. Train and export one (`make train` then `make export`), "
        f"or set FRLIE_MODEL_PATH to an .onnx file written by `python -m training export`."
    )


def _provider_list(settings: Settings) -> list[str | tuple[str, dict[str, object]]]:
    """Providers as ORT wants them, with the device id for the GPU ones."""
    return [
        (name, {"device_id": settings.device_id}) if name in GPU_PROVIDERS else name
        for name in settings.providers
    ]


class Engine:
    """One ORT session, the tile geometry derived from its metadata, and batch execution."""

    def __init__(self, settings: Settings) -> None:
        path = settings.model_path
        if not path.is_file():
            raise ModelFileError(missing_model_message(path))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = settings.intra_op_threads
        # Memory patterns pre-plan one block per input shape: twice the peak memory, no speed gain here.
        options.enable_mem_pattern = False
        self.session = ort.InferenceSession(str(path), options, providers=_provider_list(settings))
        self.providers: list[str] = self.session.get_providers()
        if self.providers[0] != settings.providers[0]:
            log.warning("requested %s but ONNX Runtime runs on %s", settings.providers, self.providers)
        self._check_io()

        metadata = self.session.get_modelmeta().custom_metadata_map
        if "receptive_radius" not in metadata:
            raise ModelFileError(f"{path} has no receptive_radius metadata; export it with `python -m training export`")
        self.metadata = dict(metadata)
        self.model_version = metadata.get("model_version", "unversioned")
        self.receptive_radius = int(metadata["receptive_radius"])
        self.size_multiple = int(metadata.get("size_multiple", "4"))
        self.tile_core = -(-settings.tile_size // self.size_multiple) * self.size_multiple
        self.tile_shape = tile_window_shape(self.tile_core, self.receptive_radius, self.size_multiple)

        on_gpu = self.provider in GPU_PROVIDERS
        self.use_io_binding = on_gpu if settings.io_binding is None else settings.io_binding
        # With padded batches every ORT call on a shape carries exactly batch_limit(shape) items.
        self.pad_batches = on_gpu if settings.fixed_batch_shapes is None else settings.fixed_batch_shapes
        self.max_batch_size = settings.effective_max_batch_size
        self.max_batch_pixels = settings.max_batch_pixels
        if self.max_batch_pixels is None and not on_gpu:
            self.max_batch_pixels = self.tile_shape[0] * self.tile_shape[1]
        self.warmup_seconds: float | None = None

    @property
    def provider(self) -> str:
        """The execution provider that runs the model (ORT's first active one)."""
        return self.providers[0]

    def _check_io(self) -> None:
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [INPUT_NAME] or OUTPUT_NAME not in outputs:
            raise ModelFileError(f"model has inputs {inputs} and outputs {outputs}; expected {INPUT_NAME!r} -> {OUTPUT_NAME!r}")

    def batch_limit(self, height: int, width: int) -> int:
        """Most items of this size in one ORT call: max_batch_size, fewer if they would pass max_batch_pixels."""
        if self.max_batch_pixels is None:
            return self.max_batch_size
        return max(1, min(self.max_batch_size, self.max_batch_pixels // (height * width)))

    def plan(self, height: int, width: int) -> TilePlan:
        """How an image of this size is cut into model inputs (run whole if no bigger than one tile)."""
        return plan_tiles(
            height, width, core=self.tile_core, receptive_radius=self.receptive_radius, multiple=self.size_multiple
        )

    def run(self, batch: np.ndarray) -> np.ndarray:
        """One ORT call on N x 3 x H x W float32; blocking, so callers run it in a worker thread."""
        if not self.use_io_binding:
            return self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        # ORT copies the input to the device and the result straight into our host buffer.
        output = np.empty_like(batch)
        binding = self.session.io_binding()
        binding.bind_cpu_input(INPUT_NAME, batch)
        binding.bind_output(OUTPUT_NAME, "cpu", 0, np.float32, output.shape, output.ctypes.data)
        self.session.run_with_iobinding(binding)
        return output

    def warm_up(self) -> float:
        """Run every batch shape of the fixed tile once, so large images pay no first-run costs.

        Whole small images (and images narrower than a tile) have shapes that depend on the upload,
        so they cannot be warmed up in advance.
        """
        height, width = self.tile_shape
        full_batch = self.batch_limit(height, width)
        batch_sizes = {full_batch} if self.pad_batches else {1, full_batch}
        started = time.perf_counter()
        for size in sorted(batch_sizes):
            self.run(np.zeros((size, 3, height, width), dtype=np.float32))
        self.warmup_seconds = time.perf_counter() - started
        log.info("warmed up %s on %s in %.2f s", sorted(batch_sizes), self.providers, self.warmup_seconds)
        return self.warmup_seconds

    def describe(self) -> dict[str, object]:
        """What /readyz reports about the model and how it runs."""
        return {
            "model_version": self.model_version,
            "execution_provider": self.provider,
            "providers": self.providers,
            "precision": self.metadata.get("precision", "unknown"),
            "receptive_radius": self.receptive_radius,
            "tile_core": self.tile_core,
            "tile_shape": list(self.tile_shape),
            "tile_batch_size": self.batch_limit(*self.tile_shape),
            "max_batch_pixels": self.max_batch_pixels,
            "padded_batches": self.pad_batches,
            "io_binding": self.use_io_binding,
            "warmup_seconds": self.warmup_seconds,
        }
