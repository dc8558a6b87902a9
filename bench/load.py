"""Closed-loop HTTP load: N clients on asyncio + httpx, each sending its next request when the last ends.

Bounded twice, by a request count and by a wall-clock cap, so a slow machine still finishes.
A client that is turned away with 503 waits the Retry-After the service asks for (capped at the
time left), as a well-behaved client would, instead of hammering the same CPU the server needs.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

PERCENTILES = (50, 95, 99)


@dataclass(frozen=True)
class LoadSpec:
    concurrency: int
    max_requests: int
    max_seconds: float
    request_timeout_s: float = 300.0


@dataclass
class LoadResult:
    spec: LoadSpec
    elapsed_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)  # of successful requests only
    outcomes: Counter[str] = field(default_factory=Counter)  # "200", "503", "ReadTimeout", ...

    @property
    def sent(self) -> int:
        return sum(self.outcomes.values())

    @property
    def ok(self) -> int:
        return self.outcomes.get("200", 0)

    @property
    def errors(self) -> dict[str, int]:
        return {outcome: count for outcome, count in sorted(self.outcomes.items()) if outcome != "200"}

    def percentile_ms(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_s, q)) * 1000 if self.latencies_s else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "concurrency": self.spec.concurrency,
            "max_requests": self.spec.max_requests,
            "max_seconds": self.spec.max_seconds,
            "sent": self.sent,
            "ok": self.ok,
            "errors": self.errors,
            "error_count": self.sent - self.ok,
            "elapsed_s": self.elapsed_s,
            "throughput_rps": self.ok / self.elapsed_s if self.elapsed_s else None,
            "mean_ms": float(np.mean(self.latencies_s)) * 1000 if self.latencies_s else None,
            **{f"p{q}_ms": self.percentile_ms(q) for q in PERCENTILES},
        }


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("retry-after", "1")))
    except ValueError:
        return 1.0


@dataclass
class _Budget:
    """What is left to send: requests and time (shared by the clients of one event loop)."""

    requests: int
    deadline: float

    def take(self) -> bool:
        if self.requests <= 0 or self.time_left() <= 0:
            return False
        self.requests -= 1
        return True

    def time_left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


async def _client(http: httpx.AsyncClient, body: bytes, result: LoadResult, budget: _Budget) -> None:
    files = {"image": ("load.jpg", body, "image/jpeg")}
    while budget.take():
        started = time.perf_counter()
        try:
            response = await http.post("/enhance", files=files)
        except httpx.HTTPError as error:
            result.outcomes[type(error).__name__] += 1
            continue
        seconds = time.perf_counter() - started
        result.outcomes[str(response.status_code)] += 1
        if response.status_code == 200:
            result.latencies_s.append(seconds)
        elif response.status_code == 503:
            await asyncio.sleep(min(_retry_after(response), budget.time_left()))


async def generate(
    url: str, body: bytes, spec: LoadSpec, transport: httpx.AsyncBaseTransport | None = None
) -> LoadResult:
    """POST ``body`` to /enhance from ``spec.concurrency`` clients until either bound is reached.

    ``transport`` replaces the network (tests)."""
    result = LoadResult(spec)
    limits = httpx.Limits(max_connections=spec.concurrency, max_keepalive_connections=spec.concurrency)
    client = httpx.AsyncClient(base_url=url, timeout=spec.request_timeout_s, limits=limits, transport=transport)
    async with client as http:
        budget = _Budget(spec.max_requests, time.monotonic() + spec.max_seconds)
        started = time.perf_counter()
        await asyncio.gather(*(_client(http, body, result, budget) for _ in range(spec.concurrency)))
        result.elapsed_s = time.perf_counter() - started
    return result


def run_load(url: str, body: bytes, spec: LoadSpec) -> LoadResult:
    return asyncio.run(generate(url, body, spec))
