"""Repeat-until-budget timing, so one script can time 20 ms and 20 s cases without hand-tuned counts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of each timed run; warm-up runs are kept apart (first-run costs show there)."""

    samples_s: tuple[float, ...]
    warmup_s: tuple[float, ...]

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples_s)

    @property
    def mean_s(self) -> float:
        return statistics.fmean(self.samples_s)

    @property
    def min_s(self) -> float:
        return min(self.samples_s)

    def to_dict(self) -> dict[str, object]:
        return {
            "median_s": self.median_s,
            "mean_s": self.mean_s,
            "min_s": self.min_s,
            "repeats": len(self.samples_s),
            "samples_s": list(self.samples_s),
            "warmup_s": list(self.warmup_s),
        }


def measure(
    run: Callable[[], object], *, warmup: int = 1, min_repeats: int = 1, max_repeats: int = 10, budget_s: float = 3.0
) -> Timing:
    """Run ``warmup`` times untimed, then at least ``min_repeats`` timed runs and more while within ``budget_s``."""
    warmups = []
    for _ in range(warmup):
        started = time.perf_counter()
        run()
        warmups.append(time.perf_counter() - started)
    samples: list[float] = []
    spent = 0.0
    while len(samples) < max_repeats and (len(samples) < min_repeats or spent + _expected_next(samples) <= budget_s):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
        spent += samples[-1]
    return Timing(tuple(samples), tuple(warmups))


def _expected_next(samples: list[float]) -> float:
    """Stop before a run that would overshoot the budget, not after it."""
    return statistics.median(samples) if samples else 0.0
