"""How fast the model runs here: seconds per computed pixel, for admission control and /readyz.

A ratio of sums, total seconds over total pixels, in which older calls fade with the compute time
that followed them (time constant ``memory_s``). Weighting by compute time rather than by call
matters on a shared CPU: while another upload is being decoded, a few hundred small tile calls
run slower; an estimate that gave each call a fixed weight would follow them within a fraction of
a second and refuse the very next image as "too slow for the deadline".
"""

from __future__ import annotations

import math
import threading

DEFAULT_MEMORY_S = 10.0  # seconds of model compute over which old measurements fade to 1/e
MIN_PIXELS = 64 * 64  # smaller calls are dominated by fixed per-call costs: they say little


class ThroughputEstimate:
    """Seconds per pixel from the ORT calls observed so far; thread-safe."""

    def __init__(self, memory_s: float = DEFAULT_MEMORY_S) -> None:
        if memory_s <= 0:
            raise ValueError(f"memory_s must be positive, got {memory_s}")
        self.memory_s = memory_s
        self._lock = threading.Lock()
        self._seconds = 0.0
        self._pixels = 0.0

    @property
    def seconds_per_pixel(self) -> float | None:
        """The estimate, or None before any call has been observed."""
        with self._lock:
            return self._seconds / self._pixels if self._pixels else None

    def observe(self, pixels: int, seconds: float) -> None:
        """Fold in one call: what came before fades by exp(-seconds / memory_s)."""
        if pixels < MIN_PIXELS:
            return
        fade = math.exp(-seconds / self.memory_s)
        with self._lock:
            self._seconds = fade * self._seconds + seconds
            self._pixels = fade * self._pixels + pixels

    def reset(self) -> None:
        """Forget everything (after set-up calls whose cost is not the steady-state cost)."""
        with self._lock:
            self._seconds = 0.0
            self._pixels = 0.0
