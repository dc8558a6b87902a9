"""The shared job store (FRLIE_JOB_STORE=redis://...): job state, uploads, progress and results in Redis.

Every replica sees every job and takes queued ones from one Redis list, so a job runs on whichever
replica is free, and status and results are readable from any of them. Each step that reads and
writes several keys is one Lua script (Redis runs a script atomically), so two replicas never claim
the same job, and a late answer from a replica that lost its lease never overwrites what happened
since. The client is redis-py's asyncio API. A single Redis (or a primary with replicas); the scripts
name keys they compute, which Redis Cluster does not allow.

Keys, under ``frlie:``: ``job:ID`` (a hash: the state), ``job:ID:input``, ``job:ID:result``,
``job:ID:lease`` (the running replica's name, with a PX of LEASE_S); ``jobs:queue`` (a list: LPUSH
to submit, RPOP to claim), ``jobs:running`` (a set, for the reaper), ``jobs:results`` and
``jobs:result-bytes`` (expiry and size of each held result, for the bytes bound).
"""

from __future__ import annotations

import json
import time
from typing import Any, cast

from redis.asyncio import Redis

from service.jobs import (
    LEASE_S,
    MAX_ATTEMPTS,
    Bounds,
    Claimed,
    EnhanceOptions,
    Job,
    JobResult,
    JobStatus,
    lost_error,
    new_job_id,
    queue_full,
    results_full,
)

PREFIX = "frlie:"
QUEUE = PREFIX + "jobs:queue"
RUNNING = PREFIX + "jobs:running"
RESULTS = PREFIX + "jobs:results"
RESULT_BYTES = PREFIX + "jobs:result-bytes"

# KEYS: queue, job, input, results, result-bytes. ARGV: id, max queued, max result bytes, ttl ms, now ms,
# options, created, upload. Returns {0, queued} (queue full), {1, bytes held} (results full) or {2, 0}.
SUBMIT = """
local queued = redis.call('LLEN', KEYS[1])
if queued >= tonumber(ARGV[2]) then return {0, queued} end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', ARGV[5])) do redis.call('HDEL', KEYS[5], id) end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[5])
local held = 0
for _, size in ipairs(redis.call('HVALS', KEYS[5])) do held = held + tonumber(size) end
if held >= tonumber(ARGV[3]) then return {1, held} end
redis.call('HSET', KEYS[2], 'status', 'queued', 'progress', '0', 'eta_s', '', 'error', '', 'created', ARGV[7],
  'finished', '', 'attempts', '0', 'options', ARGV[6], 'owner', '')
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('SET', KEYS[3], ARGV[8], 'PX', ARGV[4])
redis.call('LPUSH', KEYS[1], ARGV[1])
return {2, 0}
"""
# KEYS: queue, running. ARGV: prefix, worker, lease ms, ttl ms. Returns the claimed id or nil; skips ids
# whose job was cancelled or expired while queued.
CLAIM = """
while true do
  local id = redis.call('RPOP', KEYS[1])
  if not id then return false end
  local job = ARGV[1] .. 'job:' .. id
  if redis.call('HGET', job, 'status') == 'queued' and redis.call('EXISTS', job .. ':input') == 1 then
    redis.call('HSET', job, 'status', 'running', 'owner', ARGV[2])
    redis.call('HINCRBY', job, 'attempts', 1)
    redis.call('PEXPIRE', job, ARGV[4])
    redis.call('PEXPIRE', job .. ':input', ARGV[4])
    redis.call('SET', job .. ':lease', ARGV[2], 'PX', ARGV[3])
    redis.call('SADD', KEYS[2], id)
    return id
  end
end
"""
# ARGV: prefix, id, worker, progress, eta, lease ms, ttl ms. 1: still ours and running; 0: stop.
HEARTBEAT = """
local job = ARGV[1] .. 'job:' .. ARGV[2]
if redis.call('HGET', job, 'status') ~= 'running' or redis.call('HGET', job, 'owner') ~= ARGV[3] then return 0 end
redis.call('SET', job .. ':lease', ARGV[3], 'PX', ARGV[6])
local progress = math.max(tonumber(redis.call('HGET', job, 'progress')) or 0, tonumber(ARGV[4]))
redis.call('HSET', job, 'progress', tostring(progress), 'eta_s', ARGV[5])
redis.call('PEXPIRE', job, ARGV[7])
redis.call('PEXPIRE', job .. ':input', ARGV[7])
return 1
"""
# KEYS: running, results, result-bytes. ARGV: prefix, id, worker, status, error, finished, ttl ms,
# result expiry (ms since the epoch), data, media type, headers. 1: recorded; 0: not ours any more.
FINISH = """
local job = ARGV[1] .. 'job:' .. ARGV[2]
if redis.call('HGET', job, 'status') ~= 'running' or redis.call('HGET', job, 'owner') ~= ARGV[3] then return 0 end
redis.call('SREM', KEYS[1], ARGV[2])
redis.call('DEL', job .. ':lease', job .. ':input')
redis.call('HSET', job, 'status', ARGV[4], 'error', ARGV[5], 'finished', ARGV[6], 'eta_s', '')
if ARGV[4] == 'done' then
  redis.call('HSET', job, 'progress', '1', 'media_type', ARGV[10], 'headers', ARGV[11])
  redis.call('SET', job .. ':result', ARGV[9], 'PX', ARGV[7])
  redis.call('ZADD', KEYS[2], ARGV[8], ARGV[2])
  redis.call('HSET', KEYS[3], ARGV[2], string.len(ARGV[9]))
end
redis.call('PEXPIRE', job, ARGV[7])
return 1
"""
# KEYS: queue, running. ARGV: prefix, id, finished, ttl ms. 0: unknown id; 1: known (cancelled if it was
# queued or running; a running job's replica sees it at its next heartbeat and stops).
CANCEL = """
local job = ARGV[1] .. 'job:' .. ARGV[2]
local status = redis.call('HGET', job, 'status')
if not status then return 0 end
if status == 'queued' or status == 'running' then
  redis.call('LREM', KEYS[1], 0, ARGV[2])
  redis.call('SREM', KEYS[2], ARGV[2])
  redis.call('DEL', job .. ':input', job .. ':lease')
  redis.call('HSET', job, 'status', 'cancelled', 'eta_s', '', 'finished', ARGV[3])
  redis.call('PEXPIRE', job, ARGV[4])
end
return 1
"""
# KEYS: running, queue. ARGV: prefix, id, worker. A running job of this worker goes back to the queue,
# first in line, and the attempt it was on is not counted.
RELEASE = """
local job = ARGV[1] .. 'job:' .. ARGV[2]
if redis.call('HGET', job, 'status') ~= 'running' or redis.call('HGET', job, 'owner') ~= ARGV[3] then return 0 end
redis.call('SREM', KEYS[1], ARGV[2])
redis.call('DEL', job .. ':lease')
redis.call('HSET', job, 'status', 'queued', 'owner', '', 'eta_s', '')
redis.call('HINCRBY', job, 'attempts', -1)
redis.call('RPUSH', KEYS[2], ARGV[2])
return 1
"""
# KEYS: running, queue. ARGV: prefix, max attempts, error, finished, ttl ms. Returns the ids changed:
# running jobs without a lease are queued again (next in line) or, past max attempts, failed.
REAP = """
local changed = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local job = ARGV[1] .. 'job:' .. id
  if redis.call('EXISTS', job .. ':lease') == 0 then
    redis.call('SREM', KEYS[1], id)
    if redis.call('HGET', job, 'status') == 'running' then
      local attempts = tonumber(redis.call('HGET', job, 'attempts')) or 0
      if attempts >= tonumber(ARGV[2]) or redis.call('EXISTS', job .. ':input') == 0 then
        redis.call('HSET', job, 'status', 'failed', 'eta_s', '', 'error', ARGV[3], 'finished', ARGV[4])
        redis.call('DEL', job .. ':input')
      else
        redis.call('HSET', job, 'status', 'queued', 'owner', '', 'eta_s', '')
        redis.call('RPUSH', KEYS[2], id)
      end
      redis.call('PEXPIRE', job, ARGV[5])
      table.insert(changed, id)
    end
  end
end
return changed
"""


Arg = bytes | str | int | float  # what a script argument may be


def _job_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def _text(value: bytes | None) -> str:
    return value.decode() if value else ""


def _job(job_id: str, fields: dict[bytes, bytes]) -> Job:
    eta, error, finished = (_text(fields.get(name)) for name in (b"eta_s", b"error", b"finished"))
    status: JobStatus = _text(fields[b"status"])  # type: ignore[assignment]  # written only by the scripts
    return Job(
        job_id,
        status,
        float(_text(fields.get(b"progress")) or 0.0),
        float(eta) if eta else None,
        json.loads(error) if error else None,
        float(_text(fields.get(b"created")) or 0.0),
        float(finished) if finished else None,
        int(_text(fields.get(b"attempts")) or 0),
    )


class RedisJobStore:
    """Jobs in Redis, shared by every replica started with the same FRLIE_JOB_STORE."""

    def __init__(self, url: str, bounds: Bounds) -> None:
        self.bounds = bounds
        self.redis: Redis = Redis.from_url(url)
        self._ttl_ms = int(bounds.ttl_s * 1000)
        self._submit = self.redis.register_script(SUBMIT)
        self._claim = self.redis.register_script(CLAIM)
        self._heartbeat = self.redis.register_script(HEARTBEAT)
        self._finish = self.redis.register_script(FINISH)
        self._cancel = self.redis.register_script(CANCEL)
        self._reap = self.redis.register_script(REAP)
        self._release = self.redis.register_script(RELEASE)

    async def submit(self, upload: bytes, options: EnhanceOptions) -> Job:
        job = Job(new_job_id())
        key = _job_key(job.id)
        now_ms = int(time.time() * 1000)
        args: list[Arg] = [job.id, self.bounds.max_queued, self.bounds.max_result_bytes, self._ttl_ms, now_ms]
        outcome, count = await self._submit(
            keys=[QUEUE, key, key + ":input", RESULTS, RESULT_BYTES],
            args=[*args, options.to_json(), repr(job.created), upload],
        )
        if outcome == 0:
            raise queue_full(int(count), self.bounds)
        if outcome == 1:
            raise results_full(int(count), self.bounds)
        return job

    async def get(self, job_id: str) -> Job | None:
        fields = cast(dict[bytes, bytes], await self.redis.hgetall(_job_key(job_id)))
        return _job(job_id, fields) if fields else None

    async def result(self, job_id: str) -> JobResult | None:
        key = _job_key(job_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            for field in ("status", "media_type", "headers"):
                pipe.hget(key, field)
            pipe.get(key + ":result")
            status, media_type, headers, data = await pipe.execute()
        if status != b"done" or data is None:
            return None
        return JobResult(data, _text(media_type), json.loads(_text(headers) or "{}"))

    async def claim(self, worker: str) -> Claimed | None:
        claimed = await self._claim(keys=[QUEUE, RUNNING], args=[PREFIX, worker, int(LEASE_S * 1000), self._ttl_ms])
        if claimed is None:
            return None
        job_id = _text(claimed)
        key = _job_key(job_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(key)
            pipe.get(key + ":input")
            fields, upload = await pipe.execute()
        if not fields or upload is None:  # expired between the claim and now: nothing to run
            return None
        return Claimed(_job(job_id, fields), EnhanceOptions.from_json(_text(fields[b"options"])), upload)

    async def heartbeat(self, job_id: str, worker: str, progress: float, eta_s: float | None) -> bool:
        eta = "" if eta_s is None else repr(eta_s)
        args: list[Arg] = [PREFIX, job_id, worker, repr(progress), eta, int(LEASE_S * 1000), self._ttl_ms]
        return bool(await self._heartbeat(keys=[], args=args))

    async def finish(self, job_id: str, worker: str, result: JobResult | None, error: dict[str, Any] | None) -> Job:
        expiry_ms = int((time.time() + self.bounds.ttl_s) * 1000)
        status = "done" if result is not None else "failed"
        data, media_type, headers = (
            (result.data, result.media_type, json.dumps(result.headers)) if result else (b"", "", "")
        )
        args: list[Arg] = [PREFIX, job_id, worker, status, json.dumps(error) if error else "", repr(time.time())]
        args += [self._ttl_ms, expiry_ms, data, media_type, headers]
        await self._finish(keys=[RUNNING, RESULTS, RESULT_BYTES], args=args)
        return await self.get(job_id) or Job(job_id, "failed", error=error)

    async def cancel(self, job_id: str) -> Job | None:
        known = await self._cancel(keys=[QUEUE, RUNNING], args=[PREFIX, job_id, repr(time.time()), self._ttl_ms])
        return await self.get(job_id) if known else None

    async def release(self, job_id: str, worker: str) -> None:
        await self._release(keys=[RUNNING, QUEUE], args=[PREFIX, job_id, worker])

    async def reap(self) -> list[Job]:
        error = json.dumps(lost_error(MAX_ATTEMPTS))
        ids = await self._reap(
            keys=[RUNNING, QUEUE], args=[PREFIX, MAX_ATTEMPTS, error, repr(time.time()), self._ttl_ms]
        )
        jobs = [await self.get(_text(job_id)) for job_id in ids]
        return [job for job in jobs if job is not None]

    async def queued(self) -> int:
        return int(await self.redis.llen(QUEUE))

    async def close(self) -> None:
        await self.redis.aclose()
