"""Asyncio dynamic batcher: same-shape work from concurrent requests shares one ORT call.

Work is grouped by input shape. A group is dispatched when it holds as many items as
``batch_limit`` allows for that shape or its oldest item has waited ``max_delay_s``, and only
when an inference worker is free, so work that arrives while the model is busy joins the next
batch instead of queueing behind it. The ORT call runs in a worker thread; the event loop never
blocks.

Each item brings two callbacks that run in the worker thread: ``fill`` writes the model input
into its batch slot and ``store`` consumes its slice of the output. Tile extraction and
stitching therefore cost the event loop nothing, and no tile exists outside its batch.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.metrics import Metrics

log = logging.getLogger(__name__)

Shape = tuple[int, int, int]  # channels, height, width of one item


@dataclass(frozen=True)
class BatchReport:
    """What one ORT call did, handed to every item it carried."""

    batch_id: int
    size: int
    inference_seconds: float


@dataclass(eq=False)
class _Item:
    shape: Shape
    fill: Callable[[np.ndarray], None]
    store: Callable[[np.ndarray], None]
    future: asyncio.Future[BatchReport]
    enqueued_at: float = field(default_factory=time.perf_counter)


class Batcher:
    """Collects work items into batches and runs them on ``run_batch`` in worker threads."""

    def __init__(
        self,
        run_batch: Callable[[np.ndarray], np.ndarray],
        *,
        batch_limit: Callable[[int, int], int],
        max_delay_s: float,
        workers: int,
        pad_batches: bool,
        metrics: Metrics,
    ) -> None:
        """``batch_limit(height, width)``: most items of that size per call; ``pad_batches``: always send that many."""
        self._run_batch = run_batch
        self._batch_limit = batch_limit
        self._max_delay_s = max_delay_s
        self._pad_batches = pad_batches
        self._metrics = metrics
        self._groups: dict[Shape, deque[_Item]] = {}
        self._wakeup = asyncio.Event()
        self._free_workers = asyncio.Semaphore(workers)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="frlie-infer")
        self._batch_ids = itertools.count(1)
        self._running: set[asyncio.Task[None]] = set()
        self._dispatcher = asyncio.create_task(self._dispatch_forever(), name="frlie-batcher")

    @property
    def depth(self) -> int:
        """Items waiting for an ORT call."""
        return sum(len(group) for group in self._groups.values())

    def submit(
        self, shape: Shape, fill: Callable[[np.ndarray], None], store: Callable[[np.ndarray], None]
    ) -> asyncio.Future[BatchReport]:
        """Queue one item; cancelling the returned future withdraws it if it has not started."""
        future: asyncio.Future[BatchReport] = asyncio.get_running_loop().create_future()
        item = _Item(shape, fill, store, future)
        self._groups.setdefault(shape, deque()).append(item)
        future.add_done_callback(lambda _: self._withdraw(item))
        self._metrics.queue_depth.inc()
        self._wakeup.set()
        return future

    def _withdraw(self, item: _Item) -> None:
        """Drop a cancelled item that is still waiting, so it costs neither compute nor memory."""
        group = self._groups.get(item.shape)
        if item.future.cancelled() and group is not None and item in group:
            group.remove(item)
            self._metrics.queue_depth.dec()
            if not group:
                del self._groups[item.shape]

    async def close(self) -> None:
        """Stop dispatching, fail whatever still waits, and let running batches finish."""
        self._dispatcher.cancel()
        await asyncio.gather(self._dispatcher, return_exceptions=True)
        await asyncio.gather(*self._running, return_exceptions=True)
        for group in list(self._groups.values()):
            for item in list(group):
                item.future.cancel()
        self._executor.shutdown(wait=True)

    async def _dispatch_forever(self) -> None:
        while True:
            await self._free_workers.acquire()
            try:
                # No local keeps the batch: its items reference whole images until it is dropped.
                self._start(await self._next_batch())
            except BaseException:
                self._free_workers.release()
                raise

    def _start(self, batch: list[_Item]) -> None:
        task = asyncio.create_task(self._run(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _next_batch(self) -> list[_Item]:
        """Wait until some group is full or its oldest item's delay has run out, then take it."""
        while True:
            self._wakeup.clear()
            if self._groups:
                # Serve the group whose oldest item has waited longest (FIFO across shapes).
                shape, group = min(self._groups.items(), key=lambda kv: kv[1][0].enqueued_at)
                wait = group[0].enqueued_at + self._max_delay_s - time.perf_counter()
                if len(group) >= self._batch_limit(*shape[1:]) or wait <= 0:
                    batch = self._take(shape, group)
                    if batch:
                        return batch
                    continue
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=wait)
                except TimeoutError:
                    pass
            else:
                await self._wakeup.wait()

    def _take(self, shape: Shape, group: deque[_Item]) -> list[_Item]:
        """Pop up to a batch of items, skipping ones cancelled since (their callback has not run yet)."""
        batch: list[_Item] = []
        now = time.perf_counter()
        limit = self._batch_limit(*shape[1:])
        while group and len(batch) < limit:
            item = group.popleft()
            self._metrics.queue_depth.dec()
            if not item.future.cancelled():
                self._metrics.queue_wait.observe(now - item.enqueued_at)
                batch.append(item)
        if not group:
            del self._groups[shape]
        return batch

    async def _run(self, batch: list[_Item]) -> None:
        try:
            loop = asyncio.get_running_loop()
            report = await loop.run_in_executor(self._executor, self._execute, batch)
            for item in batch:
                if not item.future.done():
                    item.future.set_result(report)
        except Exception as error:  # the whole call failed: every item learns why
            log.exception("batch of %d failed", len(batch))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
        finally:
            self._free_workers.release()

    def _execute(self, batch: list[_Item]) -> BatchReport:
        """Worker thread: fill the inputs, run ORT once, hand each item its output slice."""
        shape = batch[0].shape
        rows = self._batch_limit(*shape[1:]) if self._pad_batches else len(batch)
        inputs = np.zeros((rows, *shape), dtype=np.float32)
        for slot, item in zip(inputs, batch, strict=False):
            item.fill(slot)
        started = time.perf_counter()
        outputs = self._run_batch(inputs)
        seconds = time.perf_counter() - started
        del inputs
        for result, item in zip(outputs, batch, strict=False):
            item.store(result)
        self._metrics.inference_duration.observe(seconds)
        self._metrics.batch_size.observe(len(batch))
        return BatchReport(next(self._batch_ids), len(batch), seconds)
