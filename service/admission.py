"""Admission control: bound what the service takes on by count and by cost, and refuse early.

Two gates. ``slot`` counts requests (it bounds the upload bytes held while receiving and
decoding) and answers 503 when all places are taken. ``work`` runs once the image size is known:
it admits the image's pixels and predicted compute time next to what is already admitted, and
refuses at once what could not finish before the request deadline, instead of computing it and
dropping it at the timeout. Retry-After is then the predicted time until the request would fit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from prometheus_client import Gauge

from service.errors import Overloaded, TooSlowForDeadline


@dataclass(frozen=True)
class Cost:
    """What one image will take: its pixels (memory held) and predicted model seconds (None: unknown)."""

    pixels: int
    seconds: float | None


# Retry-After when no wait can be predicted (model loading, every place taken), and the smallest sent.
MIN_RETRY_AFTER_S = 1


class Admission:
    """Counts admitted requests and their cost; used from the event loop only, so no lock is needed."""

    def __init__(self, capacity: int, max_pixels: int, deadline_s: float, retry_after_s: int, inflight: Gauge) -> None:
        self.capacity = capacity
        self.max_pixels = max_pixels
        self.deadline_s = deadline_s
        self.retry_after_s = retry_after_s
        self._inflight = inflight
        self._active = 0
        self._pixels = 0
        self._seconds = 0.0  # predicted model time of the admitted work not yet finished

    @property
    def queued_seconds(self) -> float:
        return self._seconds

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a place for one request, or raise Overloaded (503) when all places are taken."""
        if self._active >= self.capacity:
            raise Overloaded(
                f"{self._active} requests are already in the service (queue size {self.capacity}); retry later",
                self._retry_after(self._seconds),
            )
        self._active += 1
        self._inflight.inc()
        try:
            yield
        finally:
            self._active -= 1
            self._inflight.dec()

    @contextmanager
    def work(self, cost: Cost) -> Iterator[None]:
        """Admit one image's enhancement, or refuse it now: 413 if it alone cannot meet the deadline,
        503 + Retry-After if it could after the work ahead of it drains."""
        own = cost.seconds or 0.0
        if own > self.deadline_s:
            raise TooSlowForDeadline(
                f"this image needs about {own:.0f} s of compute here, more than the {self.deadline_s:g} s "
                f"request limit; send a smaller image (or raise FRLIE_REQUEST_TIMEOUT_S)"
            )
        over_time = self._seconds + own - self.deadline_s
        over_pixels = self._pixels > 0 and self._pixels + cost.pixels > self.max_pixels
        if over_time > 0 or over_pixels:
            wait = max(over_time, 0.0) if not over_pixels else self._seconds
            raise Overloaded(
                f"{self._seconds:.0f} s of work ({self._pixels / 1e6:.1f} MP) is already queued; this image "
                f"would not finish within {self.deadline_s:g} s. Retry later",
                self._retry_after(wait),
            )
        self._pixels += cost.pixels
        self._seconds += own
        try:
            yield
        finally:
            self._pixels -= cost.pixels
            self._seconds -= own

    def _retry_after(self, seconds: float) -> int:
        return max(self.retry_after_s, math.ceil(seconds))
