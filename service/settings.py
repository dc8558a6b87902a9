"""Every limit and knob of the service, read from ``FRLIE_*`` environment variables.

Defaults serve the bundled 4-block model safely on one GPU or a few CPU cores: images up to
50 MP / 50 MiB, tiles of 256 output pixels so memory does not grow with the image, and a short
bounded queue so overload is answered with 503 instead of ever-growing latency.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from model.contract import BUNDLED_MODEL_PATH
from service.ensemble import PASS_COUNTS

ENV_PREFIX = "FRLIE_"
CUDA_PROVIDER = "CUDAExecutionProvider"
DEFAULT_GPU_TILE_SIZE = 256  # tile core on a GPU when FRLIE_TILE_SIZE is unset
DEFAULT_CPU_ENSEMBLE_PIXELS = 1_000_000  # FRLIE_SELF_ENSEMBLE_PIXELS unset, CPU provider
DEFAULT_GPU_ENSEMBLE_PIXELS = 64_000_000  # FRLIE_SELF_ENSEMBLE_PIXELS unset, GPU provider
CPU_PROVIDER = "CPUExecutionProvider"


def env_name(setting: str) -> str:
    """The environment variable that sets the field ``setting`` (``tile_size`` -> ``FRLIE_TILE_SIZE``)."""
    return f"{ENV_PREFIX}{setting.upper()}"


class Settings(BaseSettings):
    """Service configuration; each field is the environment variable ``FRLIE_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # --- model and ONNX Runtime -------------------------------------------------------------
    model_path: Path = Field(
        BUNDLED_MODEL_PATH,
        description="ONNX file exported by `python -m training export`; defaults to the bundled model.",
    )
    precision: Literal["auto", "fp32", "int8", "fp16"] = Field(
        "auto",
        description="Which file of the model runs: `fp32` the model file itself, `int8` its quantized sibling "
        "NAME-int8.onnx, `fp16` NAME-fp16.onnx (both written by `ship`). `auto` races, at start-up on this "
        "host's provider, every sibling whose quality gate against fp32 passed (int8 on the CPU, fp16 on a GPU) "
        "and runs the fastest if it is at least 1.15x fp32, otherwise fp32; /readyz shows the timings.",
    )
    providers: Annotated[list[str], NoDecode] = Field(
        [CUDA_PROVIDER, CPU_PROVIDER],
        min_length=1,
        description="ONNX Runtime execution providers in order of preference, comma-separated or a JSON "
        "list. Unavailable ones are skipped by ORT; /readyz reports the one actually in use.",
    )
    intra_op_threads: int = Field(
        0, ge=0, description="Threads ORT uses inside one operator; 0 lets ORT pick (one per physical core)."
    )
    inference_workers: int = Field(
        1,
        ge=1,
        le=16,
        description="ORT calls allowed to run at once. 1 is best on CPU (intra-op threads "
        "already use every core); 2 can hide host/device copies on a GPU.",
    )
    # --- tiling ----------------------------------------------------------------------------
    tile_size: int | None = Field(
        None,
        ge=4,
        description="Fixed tiles: output pixels per tile side (the tile core). The model input "
        "tile is this plus a halo on each side of at least the model's receptive radius (148 px for the "
        "4-block model, so 552 x 552 at 256). Unset: on the CPU each image gets the windows that compute "
        "the fewest pixels within FRLIE_MEMORY_BUDGET_MB (whole when it fits); on a GPU fixed 256 px tiles, "
        "so batching and cuDNN's algorithm cache see one shape.",
    )
    memory_budget_mb: int = Field(
        1800,
        ge=64,
        description="Working memory one ORT call may use on the CPU (MiB). Windows are sized "
        "from it and the model's bytes per pixel, measured at start-up (about 1000 for the 4-block model, "
        "so windows up to ~1.9 MP); the default keeps a 24 MP upload under ~2.5 GB of process memory.",
    )

    # --- self-ensemble ----------------------------------------------------------------------
    self_ensemble: int = Field(
        8,
        ge=1,
        le=8,
        description="Most model passes per image: the model also runs on flipped (4) and transposed (8) "
        "copies and the answers are averaged, which removes part of its residual noise and artefacts "
        "(+0.01 SSIM on lol-pairs val at 4). Each pass costs a full model run, so an image gets the most "
        "passes that fit FRLIE_SELF_ENSEMBLE_PIXELS. 1: off.",
    )
    self_ensemble_pixels: int | None = Field(
        None,
        ge=0,
        description="Model pixels (image pixels x passes) an image's self-ensemble may use; it also bounds "
        "the passes' float answers held at once (12 bytes per pixel each). Unset: 1 MP on the CPU (a 600x400 "
        "photo gets 4 passes, photos of 0.5 MP or more 1), 64 MP on a GPU (8 passes up to 8 MP).",
    )

    # --- batching and queueing -------------------------------------------------------------
    max_batch_size: int = Field(4, ge=1, le=64, description="Most tiles or images in one ORT call.")
    max_batch_pixels: int | None = Field(
        None,
        ge=1,
        description="Most pixels in one ORT call, which bounds ORT's working memory (on CPU about "
        "1 GB per megapixel for the 4-block model). Unset: one tile's worth on CPU (tiles run one at a time, "
        "small images still batch), no limit on a GPU.",
    )
    max_batch_delay_ms: float = Field(
        5.0, ge=0, le=1000, description="How long a partial batch waits for more same-shape work."
    )
    queue_size: int = Field(
        32,
        ge=1,
        description="Most /enhance requests in the service at once (receiving, queued or running); "
        "more get 503 with Retry-After. Bounds the upload bytes held (queue_size x max_upload_bytes).",
    )
    max_queued_pixels: int = Field(
        60_000_000,
        ge=1,
        description="Most image pixels admitted for enhancement at once (each holds its "
        "decoded input and output, ~6 bytes per pixel). A request that would pass it gets 503 with the "
        "predicted wait as Retry-After. Always admits one image when nothing else is queued.",
    )
    request_timeout_s: float = Field(
        600.0,
        gt=0,
        description="Per-request limit for decoding, queueing, inference and encoding; 504 after. "
        "Requests whose predicted queue wait plus compute (from measured throughput) would pass it are "
        "refused at once: 503 if waiting would help, 413 if the image alone is too slow for this machine.",
    )

    # --- asynchronous jobs (service.jobs) -----------------------------------------------------
    job_store: str | None = Field(
        None,
        pattern=r"^rediss?://",
        description="Where /jobs keeps job state, progress and results. Unset: in this process (one replica). "
        "`redis://HOST:6379/0`: in Redis, so every replica sees and runs every job. At most FRLIE_QUEUE_SIZE "
        "jobs wait (503 past it), and finished results are held up to FRLIE_QUEUE_SIZE x FRLIE_MAX_UPLOAD_BYTES "
        "bytes (503 to new jobs past it).",
    )
    job_ttl_s: int = Field(
        3600,
        ge=10,
        description="How long a job's state, upload and result are kept after its last change; then 404.",
    )

    # --- input limits and output encoding --------------------------------------------------
    max_upload_bytes: int = Field(
        50 * 1024 * 1024, ge=1, description="Largest accepted upload (bytes); enforced while receiving."
    )
    max_pixels: int = Field(
        50_000_000,
        ge=1,
        description="Largest accepted image (width x height), checked from the header "
        "before decoding so decompression bombs cost nothing.",
    )
    keep_gps: bool = Field(
        False,
        description="Keep the upload's GPS position in the answer's EXIF (a request's `keep_gps` field overrides "
        "it). Off: a shared service should not republish where a photo was taken; the rest of the EXIF is kept.",
    )

    # --- server ----------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address `python -m service serve` binds.")
    port: int = Field(8000, ge=0, le=65535, description="Port `python -m service serve` binds.")
    graceful_shutdown_s: int = Field(
        30, ge=0, description="On SIGTERM, how long in-flight requests may take to finish."
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    web_ui: bool = Field(
        True, description="Serve the web page at / (drop a photo, compare, download); false for API-only deployments."
    )

    @field_validator("providers", mode="before")
    @classmethod
    def _split_providers(cls, value: object) -> object:
        """Accept `CUDAExecutionProvider,CPUExecutionProvider` as well as a JSON list."""
        if isinstance(value, str):
            text = value.strip()
            return json.loads(text) if text.startswith("[") else [p.strip() for p in text.split(",") if p.strip()]
        return value

    @field_validator("job_store", mode="before")
    @classmethod
    def _empty_store_is_embedded(cls, value: object) -> object:
        """`FRLIE_JOB_STORE=` (Compose's empty default) means the embedded store, like unset."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("self_ensemble")
    @classmethod
    def _ensemble_passes_are_nested(cls, value: int) -> int:
        if value not in PASS_COUNTS:
            raise ValueError(f"must be one of {', '.join(map(str, PASS_COUNTS))}")
        return value

    def self_ensemble_budget(self, on_gpu: bool) -> int:
        """FRLIE_SELF_ENSEMBLE_PIXELS, or its default for the kind of device that runs the model."""
        if self.self_ensemble_pixels is not None:
            return self.self_ensemble_pixels
        return DEFAULT_GPU_ENSEMBLE_PIXELS if on_gpu else DEFAULT_CPU_ENSEMBLE_PIXELS

    @property
    def max_batch_delay_s(self) -> float:
        return self.max_batch_delay_ms / 1000.0

    def public_view(self) -> dict[str, object]:
        """The settings that matter to operators, for /readyz (no paths beyond the file name)."""
        data = self.model_dump(exclude={"model_path", "host", "port", "log_level", "job_store"})
        data["model_file"] = self.model_path.name
        data["job_store"] = "redis" if self.job_store else "embedded"  # the URL may carry a password
        return data
