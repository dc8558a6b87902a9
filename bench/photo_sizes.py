"""What a person gets from `make serve` at default settings: photo sizes, memory, concurrent uploads.

Starts the real server (`python -m service serve`, as `make serve` does) with every setting at
its default except the model path, then, one server for the whole run:

(a) posts one dark PNG photo per size, one at a time (after one untimed warm-up upload of the
    reference size), and records status, wall seconds, seconds per output megapixel and its
    ratio to the reference size's, and the X-Tile-Plan / X-Tile-Count / X-Ensemble-Passes the service chose;
(b) polls the server's resident memory (/proc/PID/status VmRSS, every 0.2 s) over the whole
    run and reads its high-water mark (VmHWM) at the end;
(c) sends a burst of concurrent uploads of the reference size that the default queue admits;
(d) floods the server with more concurrent uploads than the default queue (32) holds: every
    answer must be 200 or 503 + Retry-After, every 200 must be an image of the uploaded size,
    and the server's own count of 200 responses must equal the 200s the clients received
    (nothing accepted is dropped).

    python -m bench.photo_sizes [--model PATH] [--quick] [--json OUT]

The full run uses the bundled 4-block model and photos up to 6000x4000 (24 MP); on a 2-core CPU
it takes several minutes. ``--quick`` runs a tiny exported model on small sizes in seconds.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from bench import REPO_ROOT, images
from bench.images import Size
from bench.machine import Machine, describe
from bench.report import MISSING, markdown_table, num, publish, section, timestamp
from bench.server import ServerProcess
from bench.service_config import setting_env
from model.contract import BUNDLED_MODEL_PATH
from service.memory import status_bytes
from service.metrics import PREFIX
from service.settings import Settings

log = logging.getLogger("bench.photo_sizes")

RSS_POLL_S = 0.2
COUNTER = f"{PREFIX}_request_duration_seconds_count"  # by route and status, written by the service's middleware
MB = 1e6
READYZ_KEYS = (
    "model_version",
    "execution_provider",
    "tiling",
    "max_window_pixels",
    "working_bytes_per_pixel",
    "seconds_per_megapixel",
    "memory_budget_bytes",
    "max_batch_pixels",
    "example_plans",
)


@dataclass(frozen=True)
class PhotoSizesConfig:
    reference: Size = (600, 400)
    sizes: tuple[Size, ...] = ((640, 480), (1920, 1080), (4000, 3000), (6000, 4000))
    burst: int = 12  # (c) concurrent uploads of the reference size
    flood: int = 64  # (d) concurrent uploads of the reference size, more than the default queue holds
    client_timeout_s: float = 900.0  # longer than the service's own request_timeout_s (600 s)
    startup_timeout_s: float = 600.0  # model load + the start-up probe on a busy 2-core CPU
    counter_settle_s: float = 5.0  # how long to wait for the server's metrics to count the last responses

    @classmethod
    def preset(cls, quick: bool) -> PhotoSizesConfig:
        if quick:
            return cls(
                reference=(240, 160),
                sizes=((320, 240), (960, 540), (2000, 1500)),
                burst=12,
                flood=24,
                client_timeout_s=120.0,
                startup_timeout_s=120.0,
            )
        return cls()

    @property
    def all_sizes(self) -> tuple[Size, ...]:
        return (self.reference, *self.sizes)


# --- server memory ------------------------------------------------------------------------------


class RssPoller:
    """Polls a process's VmRSS from a thread: the maximum over the run, and over each interval
    between ``interval_peak`` calls (one request of a given size, say)."""

    def __init__(self, pid: int, period_s: float = RSS_POLL_S) -> None:
        self.pid = pid
        self.period_s = period_s
        self.peak_bytes = 0
        self.samples = 0
        self._interval_peak = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="rss-poller", daemon=True)

    def _sample(self) -> None:
        rss = status_bytes("VmRSS", self.pid)
        if rss is None:
            return
        with self._lock:
            self.samples += 1
            self.peak_bytes = max(self.peak_bytes, rss)
            self._interval_peak = max(self._interval_peak, rss)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.period_s)

    def start(self) -> RssPoller:
        self._thread.start()
        return self

    def interval_peak(self) -> int:
        """The highest RSS since the previous call (one sample taken now, so short intervals count)."""
        self._sample()
        with self._lock:
            peak, self._interval_peak = self._interval_peak, 0
        return peak

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


# --- requests -----------------------------------------------------------------------------------


def png(size: Size) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(images.dark_photo(size)).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Reply:
    """One upload's outcome as the client saw it."""

    status: int | None  # None: no HTTP answer (timeout, connection error)
    seconds: float
    headers: dict[str, str]
    body: bytes = b""
    error: str | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def outcome(self) -> str:
        return str(self.status) if self.status is not None else (self.error or "no answer")


def post(http: httpx.Client, body: bytes) -> Reply:
    files = {"image": ("photo.png", body, "image/png")}
    started = time.perf_counter()
    try:
        response = http.post("/enhance", files=files)
    except httpx.HTTPError as error:
        return Reply(None, time.perf_counter() - started, {}, error=type(error).__name__)
    return Reply(response.status_code, time.perf_counter() - started, dict(response.headers), response.content)


def decoded_size(data: bytes) -> Size | None:
    """Width and height of a returned image, fully decoded (None if it does not decode)."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image.size
    except Exception:
        return None


def _error_code(reply: Reply) -> str | None:
    if reply.status == 200 or not reply.body:
        return reply.error
    try:
        return str(json.loads(reply.body).get("error"))
    except (ValueError, AttributeError):
        return reply.body[:200].decode(errors="replace")


def _wait_for_counter(server: ServerProcess, before: float, expected: int, settle_s: float) -> float:
    """The server's count of 200 responses to /enhance since ``before``; the middleware counts a
    response as it finishes, so give the last ones a moment."""
    deadline = time.monotonic() + settle_s
    while True:
        delta = server.metric(COUNTER, route="/enhance", status="200") - before
        if delta >= expected or time.monotonic() > deadline:
            return delta
        time.sleep(0.05)


def concurrent(
    server: ServerProcess, size: Size, clients: int, config: PhotoSizesConfig, rss: RssPoller
) -> dict[str, Any]:
    """``clients`` threads each post one photo of ``size`` at the same moment; statuses, wall time,
    Retry-After of every 503, whether every 200 is an image of the right size, and the server's count."""
    body = png(size)
    before = server.metrics()
    replies: list[Reply | None] = [None] * clients
    gate = threading.Barrier(clients + 1)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    with httpx.Client(base_url=server.url, timeout=config.client_timeout_s, limits=limits) as http:

        def client(index: int) -> None:
            gate.wait()
            replies[index] = post(http, body)

        threads = [threading.Thread(target=client, args=(i,), name=f"upload-{i}") for i in range(clients)]
        for thread in threads:
            thread.start()
        rss.interval_peak()
        gate.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        wall_s = time.perf_counter() - started
    done = [reply for reply in replies if reply is not None]
    statuses = Counter(reply.outcome for reply in done)
    ok = [reply for reply in done if reply.status == 200]
    refused = [reply for reply in done if reply.status == 503]
    retry_after = [float(value) for value in (r.header("retry-after") for r in refused) if value is not None]
    wrong_size = sum(1 for reply in ok if decoded_size(reply.body) != size)
    server_ok = round(
        _wait_for_counter(
            server, before.value(COUNTER, route="/enhance", status="200"), len(ok), config.counter_settle_s
        )
    )
    after = server.metrics()
    return {
        "size": images.label(size),
        "clients": clients,
        "upload_bytes": len(body),
        "statuses": dict(sorted(statuses.items())),
        "wall_s": wall_s,
        "ok": len(ok),
        "ok_seconds": _spread([reply.seconds for reply in ok]),
        "refused_seconds": _spread([reply.seconds for reply in refused]),
        "retry_after_s": {
            "count": len(retry_after),
            "min": min(retry_after, default=None),
            "max": max(retry_after, default=None),
        },
        "refused_without_retry_after": len(refused) - len(retry_after),
        "error_codes": dict(Counter(code for r in done if r.status != 200 and (code := _error_code(r)))),
        "ok_wrong_size": wrong_size,
        "server_ok_count": server_ok,
        "server_503_count": round(
            after.value(COUNTER, route="/enhance", status="503") - before.value(COUNTER, route="/enhance", status="503")
        ),
        "server_ok_minus_client_ok": server_ok - len(ok),  # > 0: answered 200 by the server, never received
        "nothing_accepted_dropped": server_ok == len(ok)
        and wrong_size == 0
        and all(r.status is not None for r in done),
        "server_peak_rss_bytes": rss.interval_peak(),
    }


def _spread(values: list[float]) -> dict[str, float | None]:
    return {
        "min": min(values, default=None),
        "median": statistics.median(values) if values else None,
        "max": max(values, default=None),
    }


def one_by_one(server: ServerProcess, config: PhotoSizesConfig, rss: RssPoller) -> list[dict[str, Any]]:
    """(a): one upload per size, sequentially; per output megapixel relative to the reference size."""
    rows: list[dict[str, Any]] = []
    with httpx.Client(base_url=server.url, timeout=config.client_timeout_s) as http:
        for size in config.all_sizes:
            body = png(size)
            log.info("photo %s (%.1f MB PNG)", images.label(size), len(body) / MB)
            rss.interval_peak()
            reply = post(http, body)
            megapixels = images.megapixels(size)
            inference_ms = reply.header("x-inference-time-ms")
            tile_count = reply.header("x-tile-count")
            passes = reply.header("x-ensemble-passes")
            rows.append(
                {
                    "size": images.label(size),
                    "megapixels": megapixels,
                    "upload_bytes": len(body),
                    "status": reply.status,
                    "error": _error_code(reply),
                    "wall_s": reply.seconds,
                    "seconds_per_output_megapixel": reply.seconds / megapixels,
                    "tile_plan": reply.header("x-tile-plan"),
                    "tile_count": int(tile_count) if tile_count else None,
                    "ensemble_passes": int(passes) if passes else None,
                    "inference_s": float(inference_ms) / 1000 if inference_ms else None,
                    "output_size_ok": decoded_size(reply.body) == size if reply.status == 200 else None,
                    "server_peak_rss_bytes": rss.interval_peak(),
                }
            )
    reference = rows[0]["seconds_per_output_megapixel"] if rows[0]["status"] == 200 else None
    for row in rows:
        row["ratio_to_reference"] = row["seconds_per_output_megapixel"] / reference if reference else None
    return rows


# --- the run ------------------------------------------------------------------------------------


def _quick_model(scratch: Path) -> Path:
    """The tiny architecture (width 8, 1 FR block) with random weights, exported as the service needs it."""
    from bench.models import TINY, ModelStore  # imports torch: only when a model has to be exported

    return ModelStore(scratch).resolve(TINY).path


def run(config: PhotoSizesConfig, model_path: Path, log_dir: Path) -> dict[str, Any]:
    env = setting_env(model_path=model_path)  # everything else at the service's defaults, as `make serve`
    defaults = {
        name: Settings.model_fields[name].default
        for name in ("queue_size", "request_timeout_s", "memory_budget_mb", "max_upload_bytes")
    }
    server = ServerProcess(
        env,
        log_dir / "server.log",
        startup_timeout_s=config.startup_timeout_s,
        client_timeout_s=config.client_timeout_s,
    )
    started = time.perf_counter()
    with server:
        startup_s = time.perf_counter() - started
        pid = server.process.pid
        rss = RssPoller(pid).start()
        try:
            readyz = server.readyz()
            idle_rss = status_bytes("VmRSS", pid)
            with httpx.Client(base_url=server.url, timeout=config.client_timeout_s) as http:
                warmup = post(http, png(config.reference))  # untimed: first requests pay one-off costs
            log.info("warm-up upload: %s in %.2f s", warmup.outcome, warmup.seconds)
            sizes = one_by_one(server, config, rss)
            log.info("burst: %d concurrent uploads", config.burst)
            burst = concurrent(server, config.reference, config.burst, config, rss)
            log.info("flood: %d concurrent uploads", config.flood)
            flood = concurrent(server, config.reference, config.flood, config, rss)
            hwm = status_bytes("VmHWM", pid)
        finally:
            rss.stop()
    return {
        "config": asdict(config),
        "model": {"path": str(model_path), "file": model_path.name},
        "server_env": env,
        "defaults": defaults,
        "startup_s": startup_s,
        "readyz": {key: readyz.get(key) for key in READYZ_KEYS},
        "warmup": {"status": warmup.status, "wall_s": warmup.seconds},
        "sizes": sizes,
        "memory": {
            "idle_rss_bytes": idle_rss,
            "peak_rss_bytes": rss.peak_bytes,
            "rss_samples": rss.samples,
            "poll_period_s": rss.period_s,
            "vm_hwm_bytes": hwm,
        },
        "burst": burst,
        "flood": flood,
        "server_exit_code": server.process.returncode,
    }


# --- report ---------------------------------------------------------------------------------------


def _mb(value: float | None) -> str:
    return MISSING if value is None else num(value / MB)


def _statuses(row: dict[str, Any]) -> str:
    return ", ".join(f"{count} x {status}" for status, count in row["statuses"].items())


def markdown(result: dict[str, Any], caption: str) -> str:
    reference = result["sizes"][0]["size"]
    rows = [
        [
            r["size"],
            num(r["megapixels"]),
            _mb(r["upload_bytes"]),
            r["status"] if r["status"] is not None else r["error"],
            num(r["wall_s"]),
            num(r["seconds_per_output_megapixel"]),
            num(r["ratio_to_reference"]),
            r["tile_plan"] or MISSING,
            r["tile_count"] if r["tile_count"] is not None else MISSING,
            r.get("ensemble_passes") if r.get("ensemble_passes") is not None else MISSING,
            num(r["inference_s"]),
            _mb(r["server_peak_rss_bytes"]),
        ]
        for r in result["sizes"]
    ]
    table = markdown_table(
        [
            "size",
            "MP",
            "PNG upload MB",
            "status",
            "s (wall)",
            "s / output MP",
            f"x {reference} per MP",
            "X-Tile-Plan",
            "X-Tile-Count",
            "X-Ensemble-Passes",
            "inference s",
            "server peak RSS MB",
        ],
        rows,
    )
    ready = result["readyz"]
    memory = result["memory"]
    spmp = ready.get("seconds_per_megapixel")
    bpp = ready.get("working_bytes_per_pixel")
    notes = [
        f"Model `{result['model']['file']}` ({ready.get('model_version')}) on {ready.get('execution_provider')}; "
        f"server = `python -m service serve` with only FRLIE_MODEL_PATH set (every other setting at its default, "
        f"as `make serve`), ready in {result['startup_s']:.1f} s.",
        f"Tiling {ready.get('tiling')}: windows up to {num((ready.get('max_window_pixels') or 0) / 1e6)} MP "
        f"({num(bpp)} working bytes per pixel measured at start-up), "
        f"{num(spmp)} s per model-input MP (the service's estimate when ready).",
        f"One dark PNG photo per size, one at a time, after an untimed {reference} warm-up upload; s (wall) = "
        "upload to last byte of the enhanced PNG as the client saw it (decode, tiling, inference, PNG encode, "
        f"transfer). x {reference} per MP = s / output MP divided by that of {reference}.",
        f"Server memory (VmRSS polled every {memory['poll_period_s']:g} s, {memory['rss_samples']} samples): "
        f"idle after start-up {_mb(memory['idle_rss_bytes'])} MB, peak {_mb(memory['peak_rss_bytes'])} MB; "
        f"kernel high-water mark (VmHWM) {_mb(memory['vm_hwm_bytes'])} MB.",
    ]
    out = section("Photo sizes at default settings", caption, table, notes)
    load_rows = []
    for label, row in (("burst", result["burst"]), ("flood", result["flood"])):
        retry = row["retry_after_s"]
        retry_text = f"{num(retry['min'])}–{num(retry['max'])} ({retry['count']})" if retry["count"] else MISSING
        load_rows.append(
            [
                label,
                row["size"],
                row["clients"],
                _statuses(row),
                num(row["wall_s"]),
                " / ".join(num(row["ok_seconds"][key]) for key in ("min", "median", "max")),
                num(row["refused_seconds"]["max"]),
                retry_text,
                f"{row['ok'] - row['ok_wrong_size']} of {row['ok']}",
                num(row["server_ok_count"]),
                "yes" if row["nothing_accepted_dropped"] else "NO",
                _mb(row["server_peak_rss_bytes"]),
            ]
        )
    load_table = markdown_table(
        [
            "test",
            "size",
            "clients",
            "statuses",
            "wall s",
            "200 s min / median / max",
            "slowest 503 s",
            "Retry-After s min–max (count)",
            "200s right size",
            "server 200 count",
            "nothing accepted dropped",
            "server peak RSS MB",
        ],
        load_rows,
    )
    defaults = result["defaults"]
    load_notes = [
        "All clients post at the same moment (one thread each, one shared HTTP/1.1 connection pool); wall s = from "
        "the start to the last answer.",
        f"Default admission: queue_size {defaults['queue_size']} requests in the service at once (more get 503 with "
        f"Retry-After), request_timeout_s {defaults['request_timeout_s']:g}. server 200 count = the change in "
        f'`{COUNTER}{{route="/enhance",status="200"}}`; \'nothing accepted dropped\' = it equals the 200s the '
        "clients received, every 200 decodes to an image of the uploaded size, and every request got an HTTP answer.",
    ]
    return out + "\n" + section("Concurrent uploads at default settings", caption, load_table, load_notes)


def summary(result: dict[str, Any]) -> str:
    """A few lines for the terminal under the tables."""
    sizes = result["sizes"]
    failed = [f"{r['size']}: {r['status']} {r['error'] or ''}".strip() for r in sizes if r["status"] != 200]
    flood, memory = result["flood"], result["memory"]
    lines = [
        f"sizes: {len(sizes) - len(failed)} of {len(sizes)} answered 200"
        + (f" (not: {'; '.join(failed)})" if failed else ""),
        f"server peak RSS {_mb(memory['peak_rss_bytes'])} MB (VmHWM {_mb(memory['vm_hwm_bytes'])} MB)",
        f"burst of {result['burst']['clients']}: {_statuses(result['burst'])} in {num(result['burst']['wall_s'])} s",
        f"flood of {flood['clients']}: {_statuses(flood)} in {num(flood['wall_s'])} s; server counted "
        f"{flood['server_ok_count']} 200s; nothing accepted dropped: {flood['nothing_accepted_dropped']}",
    ]
    return "\n".join(lines)


# --- command line ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.photo_sizes", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help=f"ONNX model to serve (default: the bundled {BUNDLED_MODEL_PATH.relative_to(REPO_ROOT)}; "
        "with --quick: a tiny exported model)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny model, sizes 240x160 to 2000x1500, burst 12 and flood 24: a smoke run in seconds",
    )
    parser.add_argument("--json", type=Path, default=None, help="write every figure to this JSON file")
    parser.add_argument("--log-dir", type=Path, default=None, help="keep the server log here (default: a temp dir)")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run, print the tables and the summary, write --json; returns the JSON document."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    for name in ("httpx", "httpcore", "onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    config = PhotoSizesConfig.preset(args.quick)
    machine: Machine = describe()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="frlie-photo-sizes-") as scratch:
        model_path = args.model or (_quick_model(Path(scratch)) if args.quick else BUNDLED_MODEL_PATH)
        if not model_path.is_file():
            raise SystemExit(f"error: no model at {model_path} (export one, or pass --model PATH)")
        result = run(config, model_path.resolve(), args.log_dir or Path(scratch))
    document = {
        "benchmark": "photo_sizes",
        "created": timestamp(),
        "command": sys.argv if argv is None else ["python", "-m", "bench.photo_sizes", *argv],
        "quick": args.quick,
        "elapsed_s": time.perf_counter() - started,
        "machine": machine.to_dict(),
        **result,
    }
    publish(document, markdown, machine, args.json, summary=summary(document))
    return document


if __name__ == "__main__":
    main()
    sys.exit(0)
