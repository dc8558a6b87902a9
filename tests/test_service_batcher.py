"""The dynamic batcher with a fake model: grouping, limits, cancellation, failures."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref

import numpy as np
import pytest

from service.batcher import Batcher
from service.metrics import Metrics

pytestmark = pytest.mark.timeout(30)
SHAPE = (3, 4, 4)


class FakeModel:
    """Doubles its input after a short delay, recording every batch it sees and the thread it ran on."""

    def __init__(self, seconds: float = 0.02, fail: bool = False) -> None:
        self.seconds = seconds
        self.fail = fail
        self.batches: list[np.ndarray] = []
        self.threads: set[str] = set()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(batch.copy())
        self.threads.add(threading.current_thread().name)
        time.sleep(self.seconds)
        if self.fail:
            raise RuntimeError("model exploded")
        return batch * 2


def _batcher(model: FakeModel, **overrides: object) -> Batcher:
    max_batch_size = overrides.pop("max_batch_size", 4)
    options: dict[str, object] = dict(
        batch_limit=lambda height, width: max_batch_size,
        max_delay_s=0.05,
        workers=1,
        pad_batches=False,
        metrics=Metrics(),
    )
    options.update(overrides)
    return Batcher(model, **options)  # type: ignore[arg-type]


def _submit(batcher: Batcher, value: float, results: dict[float, float], shape: tuple[int, int, int] = SHAPE):
    def fill(slot: np.ndarray) -> None:
        slot[...] = value

    def store(output: np.ndarray) -> None:
        results[value] = float(output.mean())

    return batcher.submit(shape, fill, store)


def test_concurrent_items_share_batches_and_get_their_own_results() -> None:
    model = FakeModel()
    results: dict[float, float] = {}

    async def scenario() -> list:
        batcher = _batcher(model)
        reports = await asyncio.gather(*(_submit(batcher, float(v), results) for v in range(10)))
        await batcher.close()
        return reports

    reports = asyncio.run(scenario())
    assert results == {float(v): 2.0 * v for v in range(10)}
    assert [len(b) for b in model.batches] == [4, 4, 2]
    assert {r.size for r in reports} == {4, 2}
    assert model.threads and "MainThread" not in model.threads


def test_a_partial_batch_waits_for_the_delay_then_runs() -> None:
    model = FakeModel(seconds=0)

    async def scenario() -> float:
        batcher = _batcher(model, max_delay_s=0.2)
        started = time.perf_counter()
        await _submit(batcher, 1.0, {})
        await batcher.close()
        return time.perf_counter() - started

    assert 0.15 < asyncio.run(scenario()) < 2.0


def test_different_shapes_never_share_a_batch() -> None:
    model = FakeModel(seconds=0)

    async def scenario() -> None:
        batcher = _batcher(model)
        await asyncio.gather(_submit(batcher, 1.0, {}), _submit(batcher, 2.0, {}, shape=(3, 8, 8)))
        await batcher.close()

    asyncio.run(scenario())
    assert sorted(b.shape for b in model.batches) == [(1, 3, 4, 4), (1, 3, 8, 8)]


def test_batching_off_runs_items_one_by_one() -> None:
    model = FakeModel(seconds=0)

    async def scenario() -> None:
        batcher = _batcher(model, max_batch_size=1)
        await asyncio.gather(*(_submit(batcher, float(v), {}) for v in range(5)))
        await batcher.close()

    asyncio.run(scenario())
    assert [len(b) for b in model.batches] == [1] * 5


def test_padded_batches_are_filled_with_zeros() -> None:
    model = FakeModel(seconds=0)
    results: dict[float, float] = {}

    async def scenario() -> None:
        batcher = _batcher(model, pad_batches=True)
        await asyncio.gather(_submit(batcher, 3.0, results), _submit(batcher, 5.0, results))
        await batcher.close()

    asyncio.run(scenario())
    (batch,) = model.batches
    assert batch.shape == (4, *SHAPE) and batch[2:].max() == 0
    assert results == {3.0: 6.0, 5.0: 10.0}


def test_cancelled_items_are_withdrawn_before_they_run() -> None:
    model = FakeModel(seconds=0.2)
    metrics = Metrics()

    async def scenario() -> dict[float, float]:
        results: dict[float, float] = {}
        batcher = _batcher(model, max_batch_size=1, metrics=metrics)
        running = _submit(batcher, 1.0, results)
        await asyncio.sleep(0.05)  # item 1 is now in the model
        abandoned = [_submit(batcher, float(v), results) for v in (2, 3, 4)]
        assert metrics.registry.get_sample_value("frlie_queue_depth") == 3
        for future in abandoned:
            future.cancel()
        await asyncio.sleep(0)
        assert metrics.registry.get_sample_value("frlie_queue_depth") == 0 and batcher.depth == 0
        await running
        await batcher.close()
        return results

    assert asyncio.run(scenario()) == {1.0: 2.0}
    assert len(model.batches) == 1


def test_a_failing_model_fails_every_item_of_the_batch_and_the_batcher_survives() -> None:
    model = FakeModel(seconds=0, fail=True)

    async def scenario() -> None:
        batcher = _batcher(model)
        outcomes = await asyncio.gather(*(_submit(batcher, float(v), {}) for v in range(3)), return_exceptions=True)
        assert all(isinstance(o, RuntimeError) for o in outcomes)
        model.fail = False
        await _submit(batcher, 9.0, {})  # still serving
        await batcher.close()

    asyncio.run(scenario())


def test_finished_work_is_not_retained() -> None:
    """Items reference whole images (via their callbacks); nothing may keep them once done."""
    model = FakeModel(seconds=0)

    async def scenario() -> None:
        batcher = _batcher(model)
        image = np.ones(SHAPE, dtype=np.float32)
        image_ref = weakref.ref(image)

        def fill(slot: np.ndarray, source: np.ndarray = image) -> None:
            slot[...] = source

        future = batcher.submit(SHAPE, fill, lambda output: None)
        del image, fill
        await future
        await asyncio.sleep(0)
        gc.collect()
        assert image_ref() is None
        await batcher.close()

    asyncio.run(scenario())
