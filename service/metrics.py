"""Prometheus metrics, in base units (seconds, pixels), on a registry owned by one app instance.

A private registry (rather than the global default) lets the CLI and the tests build several
engines in one process without duplicate-registration errors.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector, generate_latest

from service.precision import PrecisionReport

# Requests take from ~10 ms (a thumbnail on a GPU) to about a minute (a huge image on a CPU).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
# A single ORT call or a queue wait: from under a millisecond to tens of seconds.
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
# A job, submission to its end: from seconds (a small photo) to many minutes behind a queue.
JOB_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0)
TILE_COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
PREFIX = "frlie"


class Metrics:
    """Every metric the service exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes etc.
        r = self.registry
        self.request_duration = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "HTTP request latency by route template and status code.",
            ["route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            f"{PREFIX}_queue_wait_seconds",
            "Time a tile or image waited in the batcher before its ORT call started.",
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            f"{PREFIX}_inference_duration_seconds",
            "Duration of one ONNX Runtime call (one batch).",
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size",
            "Tiles or images carried by one ORT call (before fixed-shape padding).",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.tiles_per_request = Histogram(
            f"{PREFIX}_tiles_per_request",
            "Model inputs one image was cut into, over all its self-ensemble passes (1 = ran whole, once).",
            buckets=TILE_COUNT_BUCKETS,
            registry=r,
        )
        self.pixels_processed = Counter(
            f"{PREFIX}_processed_pixels",
            "Pixels of enhanced output produced (rate() / 1e6 = megapixels per second).",
            registry=r,
        )
        self.inflight_requests = Gauge(
            f"{PREFIX}_inflight_requests",
            "Enhance requests admitted and not yet answered.",
            registry=r,
        )
        self.queue_depth = Gauge(
            f"{PREFIX}_queue_depth",
            "Tiles or images waiting in the batcher for an ORT call.",
            registry=r,
        )
        self.errors = Counter(
            f"{PREFIX}_errors",
            "Failed requests by reason (the error code of the answer).",
            ["reason"],
            registry=r,
        )
        self.model_info = Info(
            f"{PREFIX}_model",
            "The loaded model, the execution provider running it, and the precision chosen (FRLIE_PRECISION).",
            registry=r,
        )
        self.precision_race_seconds = Gauge(
            f"{PREFIX}_precision_race_seconds",
            "Seconds per call of each model file raced at start-up (FRLIE_PRECISION=auto) on the race window.",
            ["precision"],
            registry=r,
        )

        self.jobs = Counter(
            f"{PREFIX}_jobs",
            "Jobs (/jobs) by status: `queued` when this replica accepted one, the final status "
            "(done, failed, cancelled) when this replica saw it end.",
            ["status"],
            registry=r,
        )
        self.jobs_queued = Gauge(
            f"{PREFIX}_jobs_queued",
            "Jobs waiting in the job store (shared by every replica with FRLIE_JOB_STORE=redis://...).",
            registry=r,
        )
        self.jobs_running = Gauge(f"{PREFIX}_jobs_running", "Jobs this replica is running.", registry=r)
        self.job_duration = Histogram(
            f"{PREFIX}_job_duration_seconds",
            "A job's time from submission to its final status, by that status.",
            ["status"],
            buckets=JOB_BUCKETS,
            registry=r,
        )

        for status in ("queued", "done", "failed", "cancelled"):  # every series exists from the first scrape
            self.jobs.labels(status)
            if status != "queued":
                self.job_duration.labels(status)

    def record_precision(self, version: str, provider: str, report: PrecisionReport) -> None:
        """The model and its precision choice (service.precision), for dashboards and alerts."""
        self.model_info.info(
            {"version": version, "provider": provider, "precision": report.choice, "precision_mode": report.mode}
        )
        for candidate in report.candidates:
            if candidate.seconds is not None:
                self.precision_race_seconds.labels(candidate.precision).set(candidate.seconds)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)
