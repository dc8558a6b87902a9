"""Admission control: a bounded number of /enhance requests in the service at once.

This is the queue whose overflow is answered with 503 + Retry-After. Admitted requests hold
their decoded image, so the bound also caps memory at about capacity x the largest image.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Gauge

from service.errors import Overloaded


class Admission:
    """Counts admitted requests; used from the event loop only, so no lock is needed."""

    def __init__(self, capacity: int, retry_after_s: int, inflight: Gauge) -> None:
        self.capacity = capacity
        self.retry_after_s = retry_after_s
        self._inflight = inflight
        self._active = 0

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a place for one request, or raise Overloaded (503) when all places are taken."""
        if self._active >= self.capacity:
            raise Overloaded(
                f"{self._active} requests are already queued or running (queue size {self.capacity}); retry later",
                self.retry_after_s,
            )
        self._active += 1
        self._inflight.inc()
        try:
            yield
        finally:
            self._active -= 1
            self._inflight.dec()
