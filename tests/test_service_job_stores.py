"""The job store contract (service.jobs.JobStore), run against both stores: the embedded one and Redis
(a real `redis-server` on a loopback port). The HTTP tests (test_service_jobs.py) cover the routes and
the runner; these cover the bounds, expiry and ownership rules that are slow or racy to reach through
HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

import pytest
from deploy_helpers import redis_server

from service.errors import Overloaded
from service.jobs import Bounds, EnhanceOptions, JobResult, JobStore, MemoryJobStore

pytestmark = pytest.mark.timeout(60)
RESULT = JobResult(b"0123456789", "image/png", {"X-Tile-Count": "1"})


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as running:
        yield running.url(db=3)


StoreFactory = Callable[[Bounds], JobStore]


@pytest.fixture(params=["embedded", "redis"])
def make_store(request: pytest.FixtureRequest) -> StoreFactory:
    if request.param == "embedded":
        return MemoryJobStore
    from service.job_store_redis import RedisJobStore

    url = request.getfixturevalue("redis_url")
    return lambda bounds: RedisJobStore(url, bounds)


def run(make_store: StoreFactory, bounds: Bounds, scenario: Callable[[JobStore], Awaitable[None]]) -> None:
    async def main() -> None:
        store = make_store(bounds)
        if hasattr(store, "redis"):
            await store.redis.flushdb()  # each scenario starts from an empty Redis database
        try:
            await scenario(store)
        finally:
            await store.close()

    asyncio.run(main())


def test_one_claim_per_job_and_the_answer_round_trips(make_store: StoreFactory) -> None:
    async def scenario(store: JobStore) -> None:
        options = EnhanceOptions(None, 80, 0.5, True)
        job = await store.submit(b"upload", options)
        claimed = await store.claim("w1")
        assert claimed is not None and claimed.job.id == job.id and claimed.job.status == "running"
        assert claimed.upload == b"upload" and claimed.options == options and claimed.job.attempts == 1
        assert await store.claim("w2") is None  # nobody else gets it
        assert await store.heartbeat(job.id, "w1", 0.5, 3.0)
        assert not await store.heartbeat(job.id, "w2", 0.9, 1.0)  # not w2's
        assert await store.heartbeat(job.id, "w1", 0.25, 2.0)  # an older reading never lowers progress
        seen = await store.get(job.id)
        assert seen is not None and seen.progress == 0.5 and seen.eta_s == 2.0
        done = await store.finish(job.id, "w1", RESULT, None)
        assert done.status == "done" and done.progress == 1 and done.eta_s is None
        assert await store.result(job.id) == RESULT
        assert await store.get("unknown") is None and await store.result("unknown") is None

    run(make_store, Bounds(4, 1000, 60), scenario)


def test_a_cancelled_job_stays_cancelled(make_store: StoreFactory) -> None:
    async def scenario(store: JobStore) -> None:
        queued = await store.submit(b"a", EnhanceOptions())
        running = await store.submit(b"b", EnhanceOptions())
        cancelled = await store.cancel(queued.id)
        assert cancelled is not None and cancelled.status == "cancelled"
        claimed = await store.claim("w1")
        assert claimed is not None and claimed.job.id == running.id  # the cancelled one never runs
        assert await store.queued() == 0
        await store.cancel(running.id)
        assert not await store.heartbeat(running.id, "w1", 0.5, 1.0)  # the runner stops here
        late = await store.finish(running.id, "w1", RESULT, None)
        assert late.status == "cancelled" and await store.result(running.id) is None
        assert await store.cancel("unknown") is None

    run(make_store, Bounds(4, 1000, 60), scenario)


def test_queue_and_result_bytes_are_bounded(make_store: StoreFactory) -> None:
    async def scenario(store: JobStore) -> None:
        first = await store.submit(b"a", EnhanceOptions())
        await store.submit(b"b", EnhanceOptions())
        with pytest.raises(Overloaded, match="2 jobs are already queued") as full:
            await store.submit(b"c", EnhanceOptions())
        assert int(full.value.headers["Retry-After"]) >= 1
        claimed = await store.claim("w1")
        assert claimed is not None and claimed.job.id == first.id  # oldest first
        await store.finish(first.id, "w1", RESULT, None)  # 10 bytes held: the limit
        with pytest.raises(Overloaded, match="finished results hold 10 bytes"):
            await store.submit(b"d", EnhanceOptions())

    run(make_store, Bounds(2, 10, 60), scenario)


def test_everything_expires_after_the_ttl(make_store: StoreFactory) -> None:
    async def scenario(store: JobStore) -> None:
        job = await store.submit(b"a", EnhanceOptions())
        claimed = await store.claim("w1")
        assert claimed is not None
        await store.finish(job.id, "w1", RESULT, None)
        assert await store.result(job.id) == RESULT
        await asyncio.sleep(1.3)
        assert await store.get(job.id) is None and await store.result(job.id) is None
        await store.submit(b"b", EnhanceOptions())  # the expired result no longer counts against the bound

    run(make_store, Bounds(4, 10, 1.0), scenario)


def test_a_released_job_is_next_and_keeps_its_attempts(make_store: StoreFactory) -> None:
    async def scenario(store: JobStore) -> None:
        first = await store.submit(b"a", EnhanceOptions())
        await store.submit(b"b", EnhanceOptions())
        claimed = await store.claim("w1")
        assert claimed is not None and claimed.job.id == first.id
        await store.release(first.id, "w2")  # not w2's: nothing happens
        assert (await store.get(first.id)).status == "running"  # type: ignore[union-attr]
        await store.release(first.id, "w1")
        again = await store.claim("w2")
        assert again is not None and again.job.id == first.id and again.job.attempts == 1

    run(make_store, Bounds(4, 1000, 60), scenario)
