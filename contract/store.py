"""Job state in Redis. Every transition is one Lua script, so counters never drift from job statuses
and a job delivered twice is stored and counted once."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from .errors import BatchNotFound
from .job import COUNTERS, ClaimedJob, JobResult
from .keys import Keys
from .settings import Settings

# Status -> public counter, and a counter move that is a no-op inside the same bucket.
_PRELUDE = """
local function bucket(s)
  if s == 'running' or s == 'done' or s == 'failed' then return s end
  return 'queued'
end
local function move(batch, from, to)
  if bucket(from) ~= bucket(to) then
    redis.call('HINCRBY', batch, bucket(from), -1)
    redis.call('HINCRBY', batch, bucket(to), 1)
  end
end
"""

# KEYS batch, ids, orphans, dead | ARGV job_key_prefix, member_prefix, now, ttl, due_at, model, max_words,
#   then per job: job_id, seq, text, meta, error ('' for a valid record)
# One call per chunk of jobs: a job key is the prefix (from Keys.job) plus the id. Returns 1 per job
# created, 0 per id that already exists (a resumed submit skips it).
_CREATE = """
local jp, mp, now, ttl, due_at = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local out, queued, failed = {}, 0, 0
for i = 8, #ARGV, 5 do
  local id, seq, err = ARGV[i], ARGV[i + 1], ARGV[i + 4]
  local jk = jp .. id
  if redis.call('EXISTS', jk) == 1 then
    out[#out + 1] = 0
  else
    local status = (err == '') and 'queued' or 'failed'
    redis.call('HSET', jk, 'status', status, 'seq', seq, 'text', ARGV[i + 2], 'meta', ARGV[i + 3],
      'created', now, 'updated', now, 'model', ARGV[6], 'max_words', ARGV[7], 'attempts', 0)
    redis.call('EXPIRE', jk, ttl)
    redis.call('ZADD', KEYS[2], 'NX', seq, id)
    if status == 'queued' then
      -- The reaper's safety net: if the message never reaches the queue (the producer died between
      -- this and publishing), the job is published again once the queue has drained and the grace passed.
      redis.call('ZADD', KEYS[3], due_at, mp .. id)
      queued = queued + 1
    else
      redis.call('HSET', jk, 'error', err, 'error_type', 'InputError', 'finished', now)
      redis.call('SADD', KEYS[4], id)
      failed = failed + 1
    end
    out[#out + 1] = 1
  end
end
redis.call('HINCRBY', KEYS[1], 'total', queued + failed)
redis.call('HINCRBY', KEYS[1], 'queued', queued)
redis.call('HINCRBY', KEYS[1], 'failed', failed)
for _, k in ipairs({KEYS[1], KEYS[2], KEYS[4]}) do redis.call('EXPIRE', k, ttl) end
return out
"""

# KEYS job, batch, due, halt, orphans | ARGV now, lease_until, token, member
_CLAIM = """
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return {'missing'} end
if s == 'done' or s == 'failed' then return {s} end
local now = tonumber(ARGV[1])
if s == 'running' and tonumber(redis.call('HGET', KEYS[1], 'lease') or '0') > now then return {'busy'} end
if s == 'deferred' and tonumber(redis.call('ZSCORE', KEYS[3], ARGV[4]) or '0') > now then return {'early'} end
move(KEYS[2], s, 'running')
redis.call('HSET', KEYS[1], 'status', 'running', 'token', ARGV[3], 'lease', ARGV[2], 'updated', ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[4])
redis.call('ZREM', KEYS[5], ARGV[4])
local f = redis.call('HMGET', KEYS[1], 'text', 'model', 'max_words', 'attempts', 'first_failure', 'deferrals')
return {'claimed', f[1] or '', f[2] or '', f[3] or '0', f[4] or '0', f[5] or '', f[6] or '0',
  redis.call('GET', KEYS[4]) or ''}
"""

# KEYS job, batch, due, ids, dead | ARGV now, summary, model, usage, attempts_delta, member, ttl, job_id
# A late result for a job that failed meanwhile still wins: the user would rather have the summary.
_COMPLETE = """
local s = redis.call('HGET', KEYS[1], 'status')
if not s or s == 'done' then return 0 end
move(KEYS[2], s, 'done')
redis.call('HSET', KEYS[1], 'status', 'done', 'summary', ARGV[2], 'model', ARGV[3], 'usage', ARGV[4],
  'updated', ARGV[1], 'finished', ARGV[1], 'error', '', 'error_type', '')
redis.call('HINCRBY', KEYS[1], 'attempts', ARGV[5])
-- The text is needed no more; dropping it keeps Redis memory flat over millions of articles.
redis.call('HDEL', KEYS[1], 'text', 'lease', 'token')
redis.call('ZREM', KEYS[3], ARGV[6])
redis.call('SREM', KEYS[5], ARGV[8])
for _, k in ipairs({KEYS[1], KEYS[2], KEYS[4], KEYS[5]}) do redis.call('EXPIRE', k, ARGV[7]) end
return 1
"""

# KEYS job, batch, due, dead | ARGV now, error_type, error, attempts_delta, member, job_id, ttl
_FAIL = """
local s = redis.call('HGET', KEYS[1], 'status')
if not s or s == 'done' or s == 'failed' then return 0 end
move(KEYS[2], s, 'failed')
redis.call('HSET', KEYS[1], 'status', 'failed', 'error_type', ARGV[2], 'error', ARGV[3],
  'updated', ARGV[1], 'finished', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'attempts', ARGV[4])
redis.call('HDEL', KEYS[1], 'lease', 'token')
redis.call('ZREM', KEYS[3], ARGV[5])
redis.call('SADD', KEYS[4], ARGV[6])
redis.call('EXPIRE', KEYS[4], ARGV[7])
return 1
"""

# KEYS job, batch, due | ARGV now, due_at, error_type, error, attempts_delta, member, token, is_failure
_DEFER = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' or redis.call('HGET', KEYS[1], 'token') ~= ARGV[7] then
  return 0
end
move(KEYS[2], 'running', 'deferred')
redis.call('HSET', KEYS[1], 'status', 'deferred', 'error_type', ARGV[3], 'error', ARGV[4], 'updated', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'attempts', ARGV[5])
-- A worker handing a job back on shutdown is no failure: it must not start the retry horizon.
if ARGV[8] == '1' then
  redis.call('HSETNX', KEYS[1], 'first_failure', ARGV[1])
  redis.call('HINCRBY', KEYS[1], 'deferrals', 1)
end
redis.call('HDEL', KEYS[1], 'lease', 'token')
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[6])
return 1
"""

# KEYS job, due | ARGV token, lease_until, member
_HEARTBEAT = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' or redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'lease', ARGV[2])
redis.call('ZADD', KEYS[2], 'XX', ARGV[2], ARGV[3])
return 1
"""

# KEYS job, batch, due, stats, orphans | ARGV now, member, next_look
# For the `due` set (leases and deferrals). Returns 1 when the caller must publish a fresh message.
_REQUEUE_DUE = """
local s = redis.call('HGET', KEYS[1], 'status')
if not s or s == 'done' or s == 'failed' or s == 'queued' then
  redis.call('ZREM', KEYS[3], ARGV[2])
  return 0
end
if tonumber(redis.call('ZSCORE', KEYS[3], ARGV[2]) or '0') > tonumber(ARGV[1]) then return 0 end
if s == 'running' then redis.call('HINCRBY', KEYS[4], 'reclaimed', 1) end
move(KEYS[2], s, 'queued')
redis.call('HSET', KEYS[1], 'status', 'queued', 'updated', ARGV[1])
redis.call('HDEL', KEYS[1], 'lease', 'token')
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[2])
return 1
"""

# KEYS job, orphans, stats | ARGV now, member, next_look
# For the `orphans` set, looked at only while the queue is empty: a job still queued then has no message.
_REQUEUE_ORPHAN = """
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then
  redis.call('ZREM', KEYS[2], ARGV[2])
  return 0
end
if tonumber(redis.call('ZSCORE', KEYS[2], ARGV[2]) or '0') > tonumber(ARGV[1]) then return 0 end
redis.call('HINCRBY', KEYS[3], 'republished', 1)
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
return 1
"""

# KEYS job, batch, due, dead | ARGV now, member, next_look, job_id
_RETRY_FAILED = """
-- An invalid input record (kept by --skip-invalid) has nothing to summarize: retrying can't help.
if redis.call('HGET', KEYS[1], 'error_type') == 'InputError' then return 0 end
redis.call('SREM', KEYS[4], ARGV[4])
if redis.call('HGET', KEYS[1], 'status') ~= 'failed' then return 0 end
if redis.call('HEXISTS', KEYS[1], 'text') == 0 then return 0 end
move(KEYS[2], 'failed', 'queued')
redis.call('HSET', KEYS[1], 'status', 'queued', 'updated', ARGV[1])
redis.call('HDEL', KEYS[1], 'first_failure', 'deferrals', 'error', 'error_type', 'finished')
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
return 1
"""

RESULT_FIELDS = ("status", "summary", "error", "error_type", "model", "usage", "attempts", "meta")


@dataclass(frozen=True)
class NewJob:
    """One validated record on its way into Redis."""

    job_id: str
    seq: int
    text: str
    metadata: dict[str, Any]
    error: str | None = None  # set for invalid records kept as failed jobs (--skip-invalid)


class JobStore:
    """All reads and writes of job and batch state, shared by the producer and the worker."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.r = client
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self._create = client.register_script(_CREATE)
        self._claim = client.register_script(_PRELUDE + _CLAIM)
        self._complete = client.register_script(_PRELUDE + _COMPLETE)
        self._fail = client.register_script(_PRELUDE + _FAIL)
        self._defer = client.register_script(_PRELUDE + _DEFER)
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._requeue_due = client.register_script(_PRELUDE + _REQUEUE_DUE)
        self._requeue_orphan = client.register_script(_REQUEUE_ORPHAN)
        self._retry_failed = client.register_script(_PRELUDE + _RETRY_FAILED)

    # ---- producer side -------------------------------------------------------------------------

    def init_batch(self, batch_id: str, model: str, max_words: int) -> None:
        k = self.keys.batch(batch_id)
        with self.r.pipeline() as p:
            for name in COUNTERS:
                p.hsetnx(k, name, 0)
            p.hsetnx(k, "model", model)
            p.hsetnx(k, "max_words", max_words)
            p.hsetnx(k, "created", time.time())
            p.expire(k, self.settings.result_ttl)
            p.execute()

    def create_jobs(self, batch_id: str, jobs: Sequence[NewJob], model: str, max_words: int) -> list[str]:
        """Store a chunk in one script call. Returns the ids that now need a message published."""
        if not jobs:
            return []
        now = time.time()
        args: list[Any] = [self.keys.job(batch_id, ""), Keys.member(batch_id, ""), now, self.settings.result_ttl,
                           now + self.settings.queued_grace, model, max_words]
        for job in jobs:
            args += [job.job_id, job.seq, job.text, json.dumps(job.metadata, ensure_ascii=False), job.error or ""]
        keys = [self.keys.batch(batch_id), self.keys.batch_ids(batch_id), self.keys.orphans, self.keys.dead(batch_id)]
        created = self._create(keys=keys, args=args)
        return [job.job_id for job, rc in zip(jobs, created, strict=True) if rc == 1 and job.error is None]

    def retry_failed(self, batch_id: str) -> list[str]:
        """Move the batch's dead-lettered jobs back to queued; returns the ids to publish."""
        self.require_batch(batch_id)
        self.r.delete(self.keys.halt(batch_id))
        now = time.time()
        next_look = now + self.settings.queued_grace
        dead = self.keys.dead(batch_id)
        ids: list[str] = sorted(self.r.smembers(dead))  # type: ignore[arg-type]
        out: list[str] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            with self.r.pipeline(transaction=False) as p:
                for job_id in chunk:
                    self._retry_failed(
                        keys=[self.keys.job(batch_id, job_id), self.keys.batch(batch_id), self.keys.orphans, dead],
                        args=[now, Keys.member(batch_id, job_id), next_look, job_id], client=p)
                out.extend(j for j, rc in zip(chunk, p.execute(), strict=True) if rc == 1)
        return out

    # ---- worker side ---------------------------------------------------------------------------

    def claim(self, batch_id: str, job_id: str, token: str) -> ClaimedJob | str:
        """Take the job for this run, or say why not ('done', 'failed', 'busy', 'early', 'missing')."""
        now = time.time()
        reply = self._claim(
            keys=[self.keys.job(batch_id, job_id), self.keys.batch(batch_id), self.keys.due,
                  self.keys.halt(batch_id), self.keys.orphans],
            args=[now, now + self.settings.lease_seconds, token, Keys.member(batch_id, job_id)],
        )
        if reply[0] != "claimed":
            return str(reply[0])
        _, text, model, max_words, attempts, first_failure, deferrals, halted = reply
        return ClaimedJob(
            batch_id=batch_id, job_id=job_id, token=token, text=text, model=model or self.settings.model,
            max_words=int(max_words) or self.settings.max_words, attempts=int(attempts),
            deferrals=int(deferrals), first_failure=float(first_failure) if first_failure else None,
            halted=halted,
        )

    def complete(self, job: ClaimedJob, summary: str, model: str, usage: dict[str, int], attempts: int) -> bool:
        b, j = job.batch_id, job.job_id
        return bool(self._complete(
            keys=[self.keys.job(b, j), self.keys.batch(b), self.keys.due, self.keys.batch_ids(b), self.keys.dead(b)],
            args=[time.time(), summary, model, json.dumps(usage), attempts, Keys.member(b, j),
                  self.settings.result_ttl, j],
        ))

    def fail(self, job: ClaimedJob, error: BaseException, attempts: int) -> bool:
        b, j = job.batch_id, job.job_id
        return bool(self._fail(
            keys=[self.keys.job(b, j), self.keys.batch(b), self.keys.due, self.keys.dead(b)],
            args=[time.time(), type(error).__name__, str(error)[:2000], attempts, Keys.member(b, j), j,
                  self.settings.result_ttl],
        ))

    def defer(self, job: ClaimedJob, delay: float, error: BaseException, attempts: int,
              failure: bool = True) -> bool:
        """Give the job back to run again after `delay`; `failure=False` for a worker handing it back."""
        b, j = job.batch_id, job.job_id
        now = time.time()
        return bool(self._defer(
            keys=[self.keys.job(b, j), self.keys.batch(b), self.keys.due],
            args=[now, now + delay, type(error).__name__, str(error)[:2000], attempts, Keys.member(b, j),
                  job.token, "1" if failure else "0"],
        ))

    def halt(self, batch_id: str, error: BaseException) -> None:
        self.r.set(self.keys.halt(batch_id), f"{type(error).__name__}: {error}"[:2000],
                   ex=self.settings.result_ttl)

    def heartbeat(self, jobs: Iterable[ClaimedJob]) -> None:
        lease_until = time.time() + self.settings.lease_seconds
        with self.r.pipeline(transaction=False) as p:
            for job in jobs:
                self._heartbeat(keys=[self.keys.job(job.batch_id, job.job_id), self.keys.due],
                                args=[job.token, lease_until, Keys.member(job.batch_id, job.job_id)], client=p)
            p.execute()

    def requeue_due(self, limit: int = 1000) -> list[tuple[str, str]]:
        """Jobs whose time has come, now queued: expired leases and due deferrals always; queued jobs past
        their grace only while the queue is empty (their message was lost). The caller publishes one
        message for each pair returned. Run by one worker at a time."""
        now = time.time()
        next_look = now + self.settings.queued_grace
        out: list[tuple[str, str]] = []
        due: list[str] = self.r.zrangebyscore(self.keys.due, "-inf", now, start=0, num=limit)  # type: ignore[assignment]
        if due:
            out += self._requeue(due, lambda b, j, m, p: self._requeue_due(
                keys=[self.keys.job(b, j), self.keys.batch(b), self.keys.due, self.keys.stats, self.keys.orphans],
                args=[now, m, next_look], client=p))
        if not self.r.llen(self.keys.broker_queue(self.settings.queue)):
            lost: list[str] = self.r.zrangebyscore(self.keys.orphans, "-inf", now, start=0, num=limit)  # type: ignore[assignment]
            if lost:
                out += self._requeue(lost, lambda b, j, m, p: self._requeue_orphan(
                    keys=[self.keys.job(b, j), self.keys.orphans, self.keys.stats], args=[now, m, next_look], client=p))
        return out

    def _requeue(self, members: list[str], call: Any) -> list[tuple[str, str]]:
        pairs = [Keys.split_member(m) for m in members]
        with self.r.pipeline(transaction=False) as p:
            for (b, j), m in zip(pairs, members, strict=True):
                call(b, j, m, p)
            replies = p.execute()
        return [pair for pair, rc in zip(pairs, replies, strict=True) if rc == 1]

    def try_reaper_lock(self, owner: str) -> bool:
        return bool(self.r.set(self.keys.reaper_lock, owner, nx=True, px=int(self.settings.reap_interval * 1000)))

    # ---- reading -------------------------------------------------------------------------------

    def require_batch(self, batch_id: str) -> dict[str, str]:
        h: dict[str, str] = self.r.hgetall(self.keys.batch(batch_id))  # type: ignore[assignment]
        if not h:
            raise BatchNotFound(batch_id)
        return h

    def status(self, batch_id: str) -> dict[str, Any]:
        h = self.require_batch(batch_id)
        out: dict[str, Any] = {name: int(h.get(name, 0)) for name in COUNTERS}
        out["batch"] = batch_id
        out["model"] = h.get("model")
        halted = self.r.get(self.keys.halt(batch_id))
        out["halted"] = halted or None
        return out

    def results(self, batch_id: str, chunk: int = 500) -> Iterator[JobResult]:
        """Every job of the batch in input order, read in pipelined chunks."""
        self.require_batch(batch_id)
        ids_key = self.keys.batch_ids(batch_id)
        start = 0
        while True:
            ids: list[str] = self.r.zrange(ids_key, start, start + chunk - 1)  # type: ignore[assignment]
            if not ids:
                return
            with self.r.pipeline(transaction=False) as p:
                for job_id in ids:
                    p.hmget(self.keys.job(batch_id, job_id), RESULT_FIELDS)
                rows = p.execute()
            for job_id, row in zip(ids, rows, strict=True):
                yield JobResult.from_hash(job_id, {k: v for k, v in zip(RESULT_FIELDS, row, strict=True) if v})
            start += chunk

    def dead_letters(self, batch_id: str, limit: int = 10) -> list[dict[str, Any]]:
        """Up to `limit` of the batch's failed jobs with their errors, straight from the dead-letter set."""
        ids: list[str] = []
        for job_id in self.r.sscan_iter(self.keys.dead(batch_id), count=limit):
            ids.append(job_id)
            if len(ids) >= limit:
                break
        with self.r.pipeline(transaction=False) as p:
            for job_id in ids:
                p.hmget(self.keys.job(batch_id, job_id), ("error_type", "error"))
            rows = p.execute()
        return [{"id": j, "error_type": t, "error": e} for j, (t, e) in zip(ids, rows, strict=True)]

    def existing_ids(self, batch_id: str) -> int:
        return int(self.r.zcard(self.keys.batch_ids(batch_id)))  # type: ignore[arg-type]
