"""The monitoring pipeline end to end: the real service and a real Prometheus on loopback, with the
shipped scrape config and alert rules; and the dashboard and alerts checked against the metrics a
live server really exports."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
from deploy_helpers import (
    PROMETHEUS_CONFIG,
    alert_rules,
    dashboard_expressions,
    grafana_to_promql,
    load_dashboard,
    load_yaml,
    metric_names_in,
    require_prometheus_tool,
)
from service_helpers import GRACEFUL_EXIT_CODES, ServerProcess, dark_image, encode_image, export_tiny_model

from bench.server import MetricsSnapshot, free_port

pytestmark = pytest.mark.timeout(180)
T = TypeVar("T")
SCRAPE_INTERVAL_S = 1
STARTUP_TIMEOUT_S = 30.0
ENHANCE_200 = 'job="frlie", route="/enhance", status="200"'
# Series Prometheus itself attaches to every scrape target (not exported by the service).
SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_series_added"}
# Traffic: mostly small images that run whole, some large ones that are tiled (slower), two clients.
SMALL_REQUESTS, LARGE_REQUESTS, CLIENTS = 24, 6, 2


def wait_until(condition: Callable[[], T | None], timeout: float, what: str, poll: float = 0.2) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


# --- the service --------------------------------------------------------------------------------


def _post_image(server: ServerProcess, data: bytes) -> httpx.Response:
    return server.client.post("/enhance", files={"image": ("in.png", data)})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real server that has answered one good and one bad request, so every labelled series exists."""
    model = export_tiny_model(tmp_path_factory.getbasetemp())
    running = ServerProcess(
        model,
        tmp_path_factory.mktemp("logs") / "monitoring.log",
        tile_size=64,
        max_batch_size=4,
        max_batch_delay_ms=5,
        queue_size=32,
    ).start()
    try:
        assert _post_image(running, encode_image(dark_image(64, 96), "PNG")).status_code == 200
        assert _post_image(running, b"not an image").status_code == 400
        yield running
    finally:
        assert running.stop() in GRACEFUL_EXIT_CODES


def latency_buckets(metrics: MetricsSnapshot) -> dict[float, float]:
    """Cumulative counts of the /enhance 200 latency histogram, by upper bound."""
    wanted = {("route", "/enhance"), ("status", "200")}
    return {
        float(dict(labels)["le"]): value
        for (name, labels), value in metrics.samples.items()
        if name == "frlie_request_duration_seconds_bucket" and wanted <= labels
    }


def bucket_quantile(q: float, cumulative: dict[float, float]) -> float:
    """The quantile of a classic histogram, interpolated linearly inside its bucket as Prometheus'
    histogram_quantile() does (the lowest bucket starts at 0; the +Inf bucket yields its lower bound)."""
    bounds = sorted(cumulative)
    total = cumulative[math.inf]
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if math.isinf(bound):
                return previous_bound
            return previous_bound + (bound - previous_bound) * (rank - previous_count) / (count - previous_count)
        previous_bound, previous_count = bound, count
    raise AssertionError("the +Inf bucket holds every observation")


# --- Prometheus ---------------------------------------------------------------------------------


@dataclass
class PrometheusProcess:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def api(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr, time=f"{time.time():.3f}")
        assert data["resultType"] == "vector", data
        return data["result"]

    def scalar(self, expr: str) -> float:
        """The value of a query that yields exactly one series."""
        result = self.query(expr)
        assert len(result) == 1, f"{expr} gave {result}"
        return float(result[0]["value"][1])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)


def scrape_config_for(server_port: int, prometheus_port: int) -> dict[str, Any]:
    """The shipped prometheus.yml pointed at loopback ports, scraping and evaluating every second."""
    config = load_yaml(PROMETHEUS_CONFIG)
    config["global"].update(
        scrape_interval=f"{SCRAPE_INTERVAL_S}s",
        evaluation_interval=f"{SCRAPE_INTERVAL_S}s",
        scrape_timeout=f"{SCRAPE_INTERVAL_S}s",
    )
    config["rule_files"] = [str(PROMETHEUS_CONFIG.parent / name) for name in config["rule_files"]]
    ports = {"frlie": server_port, "prometheus": prometheus_port}
    for job in config["scrape_configs"]:
        for group in job["static_configs"]:
            group["targets"] = [f"127.0.0.1:{ports[job['job_name']]}"]
    return config


@pytest.fixture(scope="module")
def prometheus(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusProcess]:
    binary = require_prometheus_tool("prometheus")
    folder = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    config_path = folder / "prometheus.yml"
    config_path.write_text(json.dumps(scrape_config_for(server.port, port)))  # JSON is valid YAML
    log_path = folder / "prometheus.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=folder,
        )
    running = PrometheusProcess(process, f"http://127.0.0.1:{port}", log_path)

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"prometheus exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            return httpx.get(f"{running.url}/-/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, STARTUP_TIMEOUT_S, "prometheus to become ready")
        yield running
    finally:
        running.stop()


# --- traffic through the whole pipeline ---------------------------------------------------------


@dataclass
class Traffic:
    requests: int  # /enhance requests sent (all statuses)
    client_latencies: list[float]  # seconds, as the clients saw them (successful requests)
    buckets_before: dict[float, float]
    buckets_after: dict[float, float]
    started: float  # wall clock, before the first request
    total_after: float  # the server's own count of /enhance requests afterwards


@pytest.fixture(scope="module")
def traffic(server: ServerProcess, prometheus: PrometheusProcess) -> Traffic:
    """Requests sent after Prometheus has scraped the idle service twice, fully scraped afterwards."""
    wait_until(
        lambda: prometheus.query(f"count_over_time(frlie_request_duration_seconds_count{{{ENHANCE_200}}}[1m]) >= 2"),
        STARTUP_TIMEOUT_S,
        "two scrapes of the service before the traffic",
    )
    buckets_before = latency_buckets(server.metrics())
    images = [encode_image(dark_image(64, 96, seed=i), "PNG") for i in range(SMALL_REQUESTS)]
    images += [encode_image(dark_image(300, 400, seed=i), "PNG") for i in range(LARGE_REQUESTS)]

    def send(data: bytes) -> float:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            started = time.perf_counter()
            response = client.post("/enhance", files={"image": ("in.png", data)})
            assert response.status_code == 200, response.text
            return time.perf_counter() - started

    started = time.time()
    with ThreadPoolExecutor(CLIENTS) as pool:
        latencies = list(pool.map(send, images))
    assert _post_image(server, b"still not an image").status_code == 400
    metrics_after = server.metrics()
    total_after = metrics_after.value("frlie_request_duration_seconds_count", route="/enhance")
    wait_until(
        lambda: prometheus.query(
            f'sum(frlie_request_duration_seconds_count{{job="frlie", route="/enhance"}}) == {total_after}'
        ),
        STARTUP_TIMEOUT_S,
        "Prometheus to scrape the counts after the traffic",
    )
    return Traffic(len(images) + 1, latencies, buckets_before, latency_buckets(metrics_after), started, total_after)


def _window(traffic: Traffic) -> int:
    """A range (seconds) reaching back past the last scrape before the traffic."""
    return math.ceil(time.time() - traffic.started) + 3 * SCRAPE_INTERVAL_S


# --- tests --------------------------------------------------------------------------------------


def test_prometheus_scrapes_the_service_with_the_shipped_config(
    server: ServerProcess, prometheus: PrometheusProcess
) -> None:
    (up,) = wait_until(lambda: prometheus.query('up{job="frlie"} == 1'), STARTUP_TIMEOUT_S, "the frlie target to be up")
    assert up["metric"]["instance"] == f"127.0.0.1:{server.port}"
    assert up["metric"]["service"] == "frlie-serve"  # the label the shipped static config adds
    info = prometheus.query('frlie_model_info{job="frlie"}')
    assert [series["metric"]["provider"] for series in info] == ["CPUExecutionProvider"]


def test_p95_latency_and_request_rate_reflect_the_requests(prometheus: PrometheusProcess, traffic: Traffic) -> None:
    window = _window(traffic)
    p95 = prometheus.scalar(
        "histogram_quantile(0.95, sum by (le) "
        f"(rate(frlie_request_duration_seconds_bucket{{{ENHANCE_200}}}[{window}s])))"
    )
    rate = prometheus.scalar(
        f'sum(rate(frlie_request_duration_seconds_count{{job="frlie", route="/enhance"}}[{window}s]))'
    )
    deltas = {le: traffic.buckets_after[le] - traffic.buckets_before.get(le, 0.0) for le in traffic.buckets_after}
    exact_p95 = bucket_quantile(0.95, deltas)
    print(
        f"\nPrometheus over {window} s: p95 latency {p95 * 1000:.1f} ms (exact from the service's buckets "
        f"{exact_p95 * 1000:.1f} ms; client p95 {np.percentile(traffic.client_latencies, 95) * 1000:.1f} ms), "
        f"request rate {rate:.3f}/s ({traffic.requests} requests)"
    )

    assert math.isfinite(p95) and p95 > 0 and math.isfinite(rate) and rate > 0
    # p95 falls in (or next to) the bucket holding the true p95 of these very requests; extrapolation at
    # the window edges scales buckets slightly differently, which may move it by one bucket at most.
    bounds = [0.0, *sorted(b for b in deltas if math.isfinite(b))]
    index = next(i for i, b in enumerate(bounds) if b >= exact_p95)
    assert bounds[max(index - 2, 0)] <= p95 <= bounds[min(index + 1, len(bounds) - 1)], (p95, exact_p95)
    # The server times less than its clients do, so p95 stays within the bucket of the slowest client.
    assert p95 <= min(b for b in bounds if b >= max(traffic.client_latencies))
    # rate x window = the requests sent, plus what Prometheus extrapolates to the window's edges.
    assert traffic.requests <= rate * window * 1.001 <= 2 * traffic.requests
    assert (
        prometheus.scalar('sum(frlie_request_duration_seconds_count{job="frlie", route="/enhance"})')
        == traffic.total_after
    )


def test_every_dashboard_query_returns_live_data(prometheus: PrometheusProcess, traffic: Traffic) -> None:
    window = f"{_window(traffic)}s"
    empty: list[str] = []
    for title, expr in dashboard_expressions(load_dashboard()):
        result = prometheus.query(grafana_to_promql(expr, rate_interval=window))  # fails on a PromQL error
        if not result:
            empty.append(f"{title}: {expr}")
    assert not empty, "queries with no data:\n" + "\n".join(empty)


def test_alert_rules_load_evaluate_cleanly_and_stay_quiet(prometheus: PrometheusProcess, traffic: Traffic) -> None:
    expected = {rule["alert"] for rule in alert_rules()}

    def evaluated_rules() -> list[dict[str, Any]] | None:
        rules = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
        done = rules and all(not rule.get("lastEvaluation", "").startswith("0001-") for rule in rules)
        return rules if done else None

    rules = wait_until(evaluated_rules, STARTUP_TIMEOUT_S, "every alert rule to be evaluated")
    assert {rule["name"] for rule in rules} == expected
    for rule in rules:
        assert rule["type"] == "alerting" and rule["health"] == "ok", rule
        assert rule["state"] == "inactive", f"{rule['name']} is {rule['state']} for a healthy, idle service"


def test_dashboard_and_alerts_use_only_metrics_the_service_exports(server: ServerProcess) -> None:
    exported = server.metrics().names()
    assert {"frlie_request_duration_seconds_bucket", "frlie_errors_total", "frlie_model_info"} <= exported
    used: dict[str, set[str]] = {}
    for title, expr in dashboard_expressions(load_dashboard()):
        used.setdefault(f"dashboard panel {title!r}", set()).update(metric_names_in(expr))
    for rule in alert_rules():
        used[f"alert {rule['alert']}"] = metric_names_in(rule["expr"])
    unknown = {
        where: names - exported - SCRAPE_SERIES for where, names in used.items() if names - exported - SCRAPE_SERIES
    }
    assert not unknown, f"metrics the service does not export: {unknown}"
    assert all(used.values()), "every query selects at least one metric"
