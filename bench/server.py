"""A real `python -m service serve` on a free loopback port, and its /metrics read as numbers.

The benchmark measures the service as deployed (uvicorn, middleware, admission, batcher) rather
than the app in-process, so the server runs in its own process with only the FRLIE_* variables
the benchmark sets.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench import REPO_ROOT
from service.settings import ENV_PREFIX

STARTUP_TIMEOUT_S = 180.0  # model load + warm-up of the 4-block model on a busy 2-core CPU
STOP_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class MetricsSnapshot:
    """Every sample of one /metrics scrape, keyed by name and label set."""

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    @classmethod
    def parse(cls, text: str) -> MetricsSnapshot:
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = float(sample.value)
        return cls(samples)

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels`` (0 if none yet)."""
        wanted = set(labels.items())
        return sum(value for (sample, found), value in self.samples.items() if sample == name and wanted <= found)

    def names(self) -> set[str]:
        return {name for name, _ in self.samples}

    def __sub__(self, earlier: MetricsSnapshot) -> MetricsSnapshot:
        """Counters and histogram sums/counts over the interval between two scrapes."""
        return MetricsSnapshot({key: value - earlier.samples.get(key, 0.0) for key, value in self.samples.items()})


class ServerProcess:
    """`python -m service serve` with exactly the given FRLIE_* variables (the caller's are dropped).

    Use ``with ServerProcess(env, log_path) as server:`` or ``server = ServerProcess(...).start()``;
    either way the server answers /readyz before control returns, or it is stopped and the error
    (with its log) raised.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        *,
        startup_timeout_s: float = STARTUP_TIMEOUT_S,
        client_timeout_s: float = 30.0,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.startup_timeout_s = startup_timeout_s
        self._env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)} | dict(env)
        self._process: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=self.url, timeout=client_timeout_s)

    @property
    def process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise RuntimeError("the server has not been started")
        return self._process

    def start(self) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=REPO_ROOT,
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_path.read_text()}")
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {self.startup_timeout_s:.0f} s:\n{self.log_path.read_text()}")

    def readyz(self) -> dict[str, Any]:
        response = self.client.get("/readyz")
        response.raise_for_status()
        return response.json()

    def metrics(self) -> MetricsSnapshot:
        response = self.client.get("/metrics")
        response.raise_for_status()
        return MetricsSnapshot.parse(response.text)

    def metric(self, name: str, **labels: str) -> float:
        """One metric now: the sum of the samples called ``name`` with ``labels`` (0 if none yet)."""
        return self.metrics().value(name, **labels)

    def stop(self) -> int | None:
        """SIGTERM (graceful), SIGKILL if it hangs; returns the exit code."""
        self.client.close()
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT_S)
        return process.returncode
