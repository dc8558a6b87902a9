"""Asynchronous jobs (/jobs) against real servers: the embedded store on one process, and two replicas
sharing a real `redis-server` (FRLIE_JOB_STORE=redis://...), including one killed with SIGKILL mid-job.

The big upload is a 4000x3000 JPEG run in 512 px tiles with one model pass, so its progress passes
through many windows while the run stays a few seconds long on the tiny test model.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_helpers import RedisServer, redis_server
from service_helpers import GRACEFUL_EXIT_CODES, ServerProcess, dark_image, encode_image, export_tiny_model

pytestmark = pytest.mark.timeout(300)
BIG = (3000, 4000)  # height, width: 12 MP
JOB_SETTINGS: dict[str, object] = {"tile_size": 512, "self_ensemble": 1, "queue_size": 2}
TIMEOUT_S = 120.0
# Timing-free fields: X-Inference-Time-Ms is the model time of that run, the only header that differs.
TIMED_HEADERS = {"x-inference-time-ms", "date", "content-length", "server"}


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as running:
        yield running


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    return encode_image(dark_image(*BIG, seed=3), "JPEG", quality=90)


def _start(model_path: Path, log: Path, **settings: object) -> ServerProcess:
    return ServerProcess(model_path, log, **(JOB_SETTINGS | settings)).start()


@pytest.fixture(scope="module", params=["embedded", "redis"])
def replicas(
    request: pytest.FixtureRequest, model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """(where jobs are submitted, where they are read): one process for the embedded store, two
    replicas sharing one Redis otherwise."""
    logs = tmp_path_factory.mktemp("logs")
    if request.param == "embedded":
        server = _start(model_path, logs / "embedded.log")
        yield server, server
        assert server.stop() in GRACEFUL_EXIT_CODES
        return
    shared = request.getfixturevalue("shared_redis")
    first = _start(model_path, logs / "a.log", job_store=shared.url())
    second = _start(model_path, logs / "b.log", job_store=shared.url())
    yield first, second
    for server in (first, second):
        assert server.stop() in GRACEFUL_EXIT_CODES


def submit(server: ServerProcess, data: bytes, **fields: str) -> str:
    response = server.client.post("/jobs", files={"image": ("big.jpg", data)}, data=fields)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued" and body["progress"] == 0
    assert response.headers["location"] == f"/jobs/{body['id']}"
    return str(body["id"])


def status(server: ServerProcess, job_id: str) -> dict[str, object]:
    response = server.client.get(f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_for(server: ServerProcess, job_id: str, accept: set[str], timeout: float = TIMEOUT_S) -> list[dict]:
    """Poll until the job's status is in ``accept``; every state seen, in order."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    while not seen or seen[-1]["status"] not in accept:
        assert time.monotonic() < deadline, f"job {job_id} still {seen[-1] if seen else None}"
        seen.append(status(server, job_id))
        time.sleep(0.05)
    return seen


def wait_running(server: ServerProcess, job_id: str) -> dict:
    """Poll until the job has done some model work."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        state = status(server, job_id)
        if state["status"] == "running" and float(state["progress"]) > 0:  # type: ignore[arg-type]
            return state
        assert state["status"] in {"queued", "running"} and time.monotonic() < deadline, state
        time.sleep(0.05)


def test_progress_rises_and_the_answer_is_what_enhance_gives(
    replicas: tuple[ServerProcess, ServerProcess], big_jpeg: bytes
) -> None:
    """Submitted to one replica, followed and fetched from the other: progress never falls and passes
    through at least 3 values; the image and headers are POST /enhance's (timing apart)."""
    accepting, reading = replicas
    job_id = submit(accepting, big_jpeg)
    seen = wait_for(reading, job_id, {"done", "failed", "cancelled"})
    assert seen[-1]["status"] == "done", seen[-1]
    progress = [float(state["progress"]) for state in seen]  # type: ignore[arg-type]
    assert progress == sorted(progress), progress
    assert progress[-1] == 1.0
    assert len({value for value in progress if 0 < value < 1}) >= 3, progress
    running = [state for state in seen if state["status"] == "running" and float(state["progress"]) > 0]  # type: ignore[arg-type]
    assert running and all(state["eta_s"] is not None and float(state["eta_s"]) >= 0 for state in running)  # type: ignore[arg-type]
    assert seen[-1]["error"] is None and seen[-1]["eta_s"] is None

    result = reading.client.get(f"/jobs/{job_id}/result")
    direct = accepting.client.post("/enhance", files={"image": ("big.jpg", big_jpeg)}, timeout=TIMEOUT_S)
    assert result.status_code == direct.status_code == 200, (result.text[:200], direct.text[:200])
    assert result.content == direct.content
    headers = {k: v for k, v in result.headers.items() if k not in TIMED_HEADERS}
    assert headers == {k: v for k, v in direct.headers.items() if k not in TIMED_HEADERS}
    assert headers["x-tile-count"] == str(6 * 8)  # 512 px tiles: progress had 48 windows to count


def test_delete_stops_a_running_job(replicas: tuple[ServerProcess, ServerProcess], big_jpeg: bytes) -> None:
    accepting, reading = replicas
    job_id = submit(accepting, big_jpeg)
    wait_running(reading, job_id)
    cancelled = reading.client.delete(f"/jobs/{job_id}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    for server in {accepting.url: accepting, reading.url: reading}.values():
        server.wait_for_metric("frlie_jobs_running", 0, timeout=10)  # the runner let it go
    final = status(accepting, job_id)
    assert final["status"] == "cancelled" and float(final["progress"]) < 1  # type: ignore[arg-type]
    refused = accepting.client.get(f"/jobs/{job_id}/result")
    assert refused.status_code == 409 and refused.json()["error"] == "job_not_done"


def test_unknown_ids_are_404_and_unfinished_results_409(
    replicas: tuple[ServerProcess, ServerProcess], big_jpeg: bytes
) -> None:
    accepting, reading = replicas
    for method, path in (("GET", "/jobs/nope"), ("GET", "/jobs/nope/result"), ("DELETE", "/jobs/nope")):
        response = reading.client.request(method, path)
        assert response.status_code == 404 and response.json()["error"] == "not_found", (method, path)
    job_id = submit(accepting, big_jpeg)
    early = reading.client.get(f"/jobs/{job_id}/result")
    assert early.status_code == 409 and early.json()["detail"]["status"] in {"queued", "running"}
    assert reading.client.delete(f"/jobs/{job_id}").json()["status"] == "cancelled"


def test_bad_uploads_are_refused_as_enhance_refuses_them(replicas: tuple[ServerProcess, ServerProcess]) -> None:
    """What /enhance can tell from the form and the image header is refused at submission; what only the
    decoder finds (a truncated JPEG) fails the job with /enhance's error body."""
    accepting, reading = replicas
    for data, fields in ((b"not an image at all", {}), (b"x", {"strength": "2"})):
        refused = accepting.client.post("/jobs", files={"image": ("x.jpg", data)}, data=fields)
        direct = accepting.client.post("/enhance", files={"image": ("x.jpg", data)}, data=fields)
        assert refused.status_code == direct.status_code and refused.json() == direct.json()
        assert refused.status_code in {400, 422}
    whole = encode_image(dark_image(200, 300), "JPEG")
    truncated = whole[: len(whole) // 2]
    job_id = submit(accepting, truncated)
    final = wait_for(reading, job_id, {"done", "failed", "cancelled"})[-1]
    direct = accepting.client.post("/enhance", files={"image": ("x.jpg", truncated)})
    assert direct.status_code == 400 and final["status"] == "failed" and final["error"] == direct.json()


def test_a_full_queue_answers_503_with_retry_after(
    replicas: tuple[ServerProcess, ServerProcess], big_jpeg: bytes
) -> None:
    """FRLIE_QUEUE_SIZE=2 jobs may wait; running ones do not count."""
    accepting, reading = replicas
    accepted: list[str] = []
    try:
        for _ in range(6):  # at most one running per replica, then two queued
            response = accepting.client.post("/jobs", files={"image": ("big.jpg", big_jpeg)})
            if response.status_code != 202:
                break
            accepted.append(response.json()["id"])
            time.sleep(0.5)  # let an idle replica claim it
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "overloaded" and int(response.headers["retry-after"]) >= 1
        assert "2 jobs are already queued (limit 2)" in response.json()["detail"]
        assert 2 <= len(accepted) <= 4
        accepting.wait_for_metric("frlie_jobs_queued", lambda queued: queued >= 1)  # the gauge sees the queue
    finally:
        for job_id in accepted:
            reading.client.delete(f"/jobs/{job_id}")


def test_a_killed_replica_does_not_leave_its_job_running(
    shared_redis: RedisServer, model_path: Path, big_jpeg: bytes, tmp_path: Path
) -> None:
    """SIGKILL the only replica mid-job; another one, started after, re-runs it once the lease lapses."""
    store = {"job_store": shared_redis.url(db=1)}
    victim = _start(model_path, tmp_path / "victim.log", **store)
    job_id = submit(victim, big_jpeg)
    wait_running(victim, job_id)
    os.kill(victim.process.pid, signal.SIGKILL)
    victim.process.wait(timeout=10)
    victim.client.close()
    survivor = _start(model_path, tmp_path / "survivor.log", **store)
    try:
        final = wait_for(survivor, job_id, {"done", "failed", "cancelled"})[-1]
        assert final["status"] == "done", final  # re-run here, after its lease lapsed
        assert survivor.client.get(f"/jobs/{job_id}/result").status_code == 200
    finally:
        assert survivor.stop() in GRACEFUL_EXIT_CODES


def test_a_replica_stopped_with_sigterm_gives_its_job_back(
    shared_redis: RedisServer, model_path: Path, big_jpeg: bytes, tmp_path: Path
) -> None:
    """A rolling update: the stopping replica puts its running job back first in line at once, without
    spending one of its attempts, instead of leaving it to the lease."""
    import redis

    url = shared_redis.url(db=2)
    stopping = _start(model_path, tmp_path / "stopping.log", job_store=url)
    job_id = submit(stopping, big_jpeg)
    wait_running(stopping, job_id)
    assert stopping.stop() in GRACEFUL_EXIT_CODES
    with redis.Redis.from_url(url) as store:
        state = store.hgetall(f"frlie:job:{job_id}")
        assert state[b"status"] == b"queued" and state[b"attempts"] == b"0", state
        assert store.lrange("frlie:jobs:queue", -1, -1) == [job_id.encode()]  # next to be claimed
        assert not store.exists(f"frlie:job:{job_id}:lease")
        store.flushdb()
