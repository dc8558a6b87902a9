"""The throughput estimate behind admission control: a ratio of sums fading with compute time."""

from __future__ import annotations

import pytest

from service.throughput import ThroughputEstimate

TILE = 168 * 168


def test_the_first_calls_give_their_plain_average() -> None:
    estimate = ThroughputEstimate(memory_s=1e9)  # nothing fades: total seconds over total pixels
    assert estimate.seconds_per_pixel is None
    estimate.observe(TILE, 0.005)
    assert estimate.seconds_per_pixel == pytest.approx(0.005 / TILE)
    estimate.observe(3 * TILE, 0.030)
    assert estimate.seconds_per_pixel == pytest.approx(0.035 / (4 * TILE))


def test_calls_too_small_to_measure_are_ignored() -> None:
    estimate = ThroughputEstimate()
    estimate.observe(32 * 32, 1.0)
    assert estimate.seconds_per_pixel is None


def test_a_short_slow_spell_of_many_small_calls_barely_moves_it() -> None:
    """Half a second of tile calls at 2.5x the usual time (another upload being decoded on the same
    cores) after 5 s of steady work: a per-call average would follow them, this one moves ~10 %."""
    steady = 0.005 / TILE
    estimate = ThroughputEstimate(memory_s=10.0)
    for _ in range(1000):
        estimate.observe(TILE, 0.005)
    for _ in range(40):
        estimate.observe(TILE, 0.0125)
    assert estimate.seconds_per_pixel is not None
    assert 1.0 < estimate.seconds_per_pixel / steady < 1.15


def test_a_lasting_change_of_speed_takes_over_after_a_few_time_constants() -> None:
    estimate = ThroughputEstimate(memory_s=2.0)
    for _ in range(100):
        estimate.observe(TILE, 0.01)  # 1 s at the old speed
    for _ in range(400):
        estimate.observe(TILE, 0.02)  # 8 s (4 time constants) at half the speed
    assert estimate.seconds_per_pixel == pytest.approx(0.02 / TILE, rel=0.02)


def test_reset_forgets_set_up_calls() -> None:
    estimate = ThroughputEstimate()
    estimate.observe(TILE, 5.0)  # a first call paying one-off set-up
    estimate.reset()
    assert estimate.seconds_per_pixel is None
    estimate.observe(TILE, 0.005)
    assert estimate.seconds_per_pixel == pytest.approx(0.005 / TILE)


def test_memory_must_be_positive() -> None:
    with pytest.raises(ValueError, match="memory_s"):
        ThroughputEstimate(memory_s=0)
