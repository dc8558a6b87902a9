"""Benchmark 2, the service under load: a real server on loopback, closed-loop clients, /metrics.

For each service configuration (batching off, batching on, and any the caller adds) one server
is started; every concurrency level is a bounded load run bracketed by two /metrics scrapes, so
batch sizes and model time per request come from the service's own counters for exactly that
interval. A second table breaks one request into decode, tiling, inference and encode.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import images
from bench.images import Size
from bench.load import LoadSpec, run_load
from bench.models import BUNDLED, TINY, ModelStore
from bench.overhead import median_stages
from bench.report import markdown_table, num, section
from bench.server import MetricsSnapshot, ServerProcess
from bench.service_config import check_provider, service_env, settings_from
from service.engine import Engine
from service.metrics import PREFIX

log = logging.getLogger(__name__)

ServiceVariant = tuple[str, tuple[tuple[str, str], ...]]  # label, FRLIE_* variables on top of the defaults
BATCHING_OFF_ON: tuple[ServiceVariant, ...] = (("batching off", (("FRLIE_MAX_BATCH_SIZE", "1"),)), ("batching on", ()))
# Tuning candidates: two ORT calls at once (one thread each on a CPU; overlapping copies on a GPU).
CPU_CANDIDATES: tuple[ServiceVariant, ...] = (
    ("2 workers x 1 thread", (("FRLIE_INFERENCE_WORKERS", "2"), ("FRLIE_INTRA_OP_THREADS", "1"))),
)
GPU_CANDIDATES: tuple[ServiceVariant, ...] = (("2 workers", (("FRLIE_INFERENCE_WORKERS", "2"),)),)


@dataclass(frozen=True)
class ServiceBenchConfig:
    device: str = "cpu"
    model: str = BUNDLED
    image_size: Size = (600, 400)
    concurrency: tuple[int, ...] = (1, 4, 16)
    requests_per_client: int = 2
    min_requests: int = 8
    max_seconds: float = 30.0  # per concurrency level; in-flight requests still finish
    warmup_requests: int = 2  # first whole-image run of a new shape pays ORT's planning costs
    variants: tuple[ServiceVariant, ...] = BATCHING_OFF_ON
    common: tuple[tuple[str, str], ...] = ()  # FRLIE_* variables for every server and the overhead run (--set)
    overhead_sizes: tuple[Size, ...] = ((600, 400),)
    overhead_repeats: int = 5

    @classmethod
    def preset(cls, device: str, quick: bool) -> ServiceBenchConfig:
        if quick:
            return cls(
                device=device,
                model=TINY,
                image_size=(240, 160),
                concurrency=(1, 4),
                requests_per_client=2,
                min_requests=4,
                max_seconds=10.0,
                warmup_requests=1,
                overhead_sizes=((240, 160), (480, 320)),
                overhead_repeats=2,
            )
        if device == "cuda":
            return cls(
                device=device,
                requests_per_client=25,
                min_requests=100,
                max_seconds=30.0,
                warmup_requests=8,
                variants=BATCHING_OFF_ON + GPU_CANDIDATES,
                overhead_sizes=((600, 400), (1920, 1080), (3840, 2160)),
                overhead_repeats=10,
            )
        return cls(device=device, variants=BATCHING_OFF_ON + CPU_CANDIDATES)

    def requests_at(self, concurrency: int) -> int:
        return max(self.min_requests, self.requests_per_client * concurrency)


# The /metrics samples read (names as service.metrics defines them, with Prometheus' suffixes).
BATCH_SIZE = f"{PREFIX}_batch_size"
QUEUE_WAIT = f"{PREFIX}_queue_wait_seconds"
INFERENCE = f"{PREFIX}_inference_duration_seconds"
REQUEST = f"{PREFIX}_request_duration_seconds"
ERRORS = f"{PREFIX}_errors_total"
RSS = "process_resident_memory_bytes"
SAMPLES_READ = (
    *(f"{histogram}_{part}" for histogram in (BATCH_SIZE, QUEUE_WAIT, INFERENCE, REQUEST) for part in ("sum", "count")),
    ERRORS,
    RSS,
)
ENHANCE_OK = {"route": "/enhance", "status": "200"}


def _interval_stats(delta: MetricsSnapshot, ok: int) -> dict[str, Any]:
    """What the service's counters say about one load run (per successful request where it applies)."""
    batches = delta.value(f"{BATCH_SIZE}_count")
    waits = delta.value(f"{QUEUE_WAIT}_count")
    answered = delta.value(f"{REQUEST}_count", **ENHANCE_OK)
    return {
        "batches": batches,
        "mean_batch_size": delta.value(f"{BATCH_SIZE}_sum") / batches if batches else None,
        "inference_ms_per_request": delta.value(f"{INFERENCE}_sum") / ok * 1000 if ok else None,
        "mean_queue_wait_ms": delta.value(f"{QUEUE_WAIT}_sum") / waits * 1000 if waits else None,
        "server_mean_latency_ms": delta.value(f"{REQUEST}_sum", **ENHANCE_OK) / answered * 1000 if answered else None,
        "service_errors": {
            dict(labels).get("reason", "?"): value
            for (name, labels), value in delta.samples.items()
            if name == ERRORS and value
        },
    }


def _load_rows(
    config: ServiceBenchConfig, env: dict[str, str], label: str, body: bytes, logs: Path
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Start one server and run every concurrency level against it; returns the rows and its /readyz."""
    rows = []
    with ServerProcess(env, logs / f"server-{label.replace(' ', '-')}.log") as server:
        ready = server.readyz()
        check_provider(config.device, ready["providers"])
        if config.warmup_requests:
            run_load(server.url, body, LoadSpec(1, config.warmup_requests, config.max_seconds))
        for concurrency in config.concurrency:
            spec = LoadSpec(concurrency, config.requests_at(concurrency), config.max_seconds)
            log.info(
                "service %s: %d clients, up to %d requests / %.0f s",
                label,
                concurrency,
                spec.max_requests,
                spec.max_seconds,
            )
            before = server.metrics()
            result = run_load(server.url, body, spec)
            after = server.metrics()
            row = {"variant": label, **result.to_dict(), **_interval_stats(after - before, result.ok)}
            rate = row["throughput_rps"]
            row["megapixels_per_s"] = rate * images.megapixels(config.image_size) if rate else None
            row["server_rss_mb"] = after.value(RSS) / 1e6
            rows.append(row)
    return rows, ready


def _overhead_rows(config: ServiceBenchConfig, env: dict[str, str]) -> list[dict[str, Any]]:
    settings = settings_from(env)
    engine = Engine(settings)
    rows = []
    for size in config.overhead_sizes:
        log.info("service overhead: %s", images.label(size))
        data = images.jpeg(images.dark_photo(size))
        stages = median_stages(engine, settings, data, config.overhead_repeats)
        rows.append({"size": images.label(size), "upload_bytes": len(data), **stages})
    return rows


def run(config: ServiceBenchConfig, store: ModelStore, scratch: Path) -> dict[str, Any]:
    model = store.resolve(config.model)
    body = images.jpeg(images.dark_photo(config.image_size))
    common = dict(config.common)
    rows: list[dict[str, Any]] = []
    servers: dict[str, Any] = {}
    for label, overrides in config.variants:
        env = service_env(model.path, config.device) | common | dict(overrides)  # a variant wins over --set
        variant_rows, ready = _load_rows(config, env, label, body, scratch / "logs")
        rows += variant_rows
        servers[label] = {"env": env, "readyz": ready}
    overhead = _overhead_rows(config, service_env(model.path, config.device) | common)
    return {
        "benchmark": "service",
        "config": asdict(config),
        "model": model.to_dict(),
        "model_description": model.describe(),
        "upload_bytes": len(body),
        "servers": servers,
        "results": rows,
        "overhead": overhead,
    }


def _errors(row: dict[str, Any]) -> str:
    return ", ".join(f"{count}x {outcome}" for outcome, count in row["errors"].items()) or "0"


def markdown(result: dict[str, Any], caption: str) -> str:
    config = result["config"]
    size = images.label(tuple(config["image_size"]))
    rows = [
        [
            r["variant"],
            r["concurrency"],
            r["sent"],
            r["ok"],
            _errors(r),
            num(r["throughput_rps"]),
            num(r["megapixels_per_s"]),
            num(r["p50_ms"]),
            num(r["p95_ms"]),
            num(r["p99_ms"]),
            num(r["mean_batch_size"]),
            num(r["inference_ms_per_request"]),
            num(r["mean_queue_wait_ms"]),
        ]
        for r in result["results"]
    ]
    load_table = markdown_table(
        [
            "service",
            "clients",
            "sent",
            "ok",
            "errors",
            "images/s",
            "MP/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "mean batch",
            "model ms / image",
            "queue wait ms",
        ],
        rows,
    )
    ready = next(iter(result["servers"].values()))["readyz"]
    load_notes = [
        f"Model: {result['model_description']}; ran on {ready['execution_provider']}. Upload: {size} JPEG "
        f"({result['upload_bytes'] // 1024} KiB), answer JPEG; client and server share this machine.",
        f"Each row: closed loop, bounded by max(requests {config['min_requests']}, "
        f"{config['requests_per_client']} x clients) and {config['max_seconds']:g} s; latency percentiles over "
        "successful requests. 503 = turned away by admission "
        f"control (queue size {ready['settings']['queue_size']}); the client then waits Retry-After.",
        "mean batch, model ms / image and queue wait come from the service's /metrics over the same interval "
        "(model ms / image = total ORT time / successful requests).",
    ]
    out = section(f"Service under load ({size} JPEG)", caption, load_table, load_notes)
    overhead_rows = [
        [
            r["size"],
            r["tiles"],
            num(r["decode_ms"]),
            num(r["tiling_ms"]),
            num(r["inference_ms"]),
            num(r["encode_ms"]),
            num(r["total_ms"]),
            num(100 * r["overhead_fraction"], 2),
        ]
        for r in result["overhead"]
    ]
    overhead_table = markdown_table(
        ["size", "tiles", "decode ms", "tiling ms", "inference ms", "encode ms", "total ms", "not model %"],
        overhead_rows,
    )
    first = result["results"][0] if result["results"] else None
    http_note = []
    whole = next((r for r in result["overhead"] if r["size"] == size), None)
    if first and whole and first["concurrency"] == 1 and first["p50_ms"]:
        gap = first["p50_ms"] - whole["total_ms"]
        http_note = [
            f"Over HTTP at 1 client ({first['variant']}) the median request took {num(first['p50_ms'])} ms against "
            f"{num(whole['total_ms'])} ms for the stages above: "
            + (
                f"{num(gap)} ms of HTTP, multipart parsing, admission, batcher and thread hand-offs."
                if gap > 0
                else "the difference is within run-to-run noise."
            )
        ]
    overhead_notes = [
        "The service's own modules in pipeline order, no HTTP, one request at a time; median of "
        f"{result['overhead'][0]['repeats'] if result['overhead'] else 0} after a warm-up. tiling = window extraction "
        "(padding, uint8 to float) + stitching of tile cores (uint8 rounding); decode/encode = Pillow JPEG.",
        *http_note,
    ]
    return out + "\n" + section("Service overhead per request", caption, overhead_table, overhead_notes)
