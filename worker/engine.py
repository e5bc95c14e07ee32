"""One asyncio event loop per worker process runs every job of every message as a coroutine.

A Celery task is a thin bridge: it hands its message to the loop and waits for the outcome (see
worker/tasks.py). On the loop, a message is claimed in one script call, its jobs run side by side
(at most SUMMARIZE_CONCURRENCY LLM requests in flight for the whole process), and their outcomes are
stored by the writer, many per call. Hundreds of requests in flight cost one thread, not hundreds
contending for the GIL.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery

from contract.errors import ProviderRejected
from contract.job import ClaimedJob
from contract.messaging import publish
from contract.redisconn import make_async_redis
from contract.settings import Settings
from contract.spec import BatchSpec
from contract.store import Message

from . import llm, outcome
from .batches import Batches
from .housekeeping import Housekeeper, Leases
from .ratelimit import RateLimiter
from .storage import WorkerStore
from .summarize import Provider, Tally, summarize
from .writer import Writer

log = logging.getLogger(__name__)


@dataclass
class Report:
    """What happened to a message's jobs: the task's result in Flower."""

    outcomes: Counter[str] = field(default_factory=Counter)
    #: job id -> error type of the jobs that failed for good
    failed: dict[str, str] = field(default_factory=dict)

    def as_result(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.outcomes)
        if self.failed:
            out["failed"] = self.failed
        return out


class Engine:
    def __init__(self, settings: Settings, app: Celery) -> None:
        self.settings, self.app = settings, app
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="summarize-loop", daemon=True)
        self.leases = Leases()

    # ---- called from Celery's threads ------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._open(), self.loop).result(timeout=60)

    def run_message(self, batch_id: str, job_ids: list[str], step: int) -> Report:
        future: Future[Report] = asyncio.run_coroutine_threadsafe(self.process(batch_id, job_ids, step), self.loop)
        return future.result()

    def begin_shutdown(self) -> None:
        """Warm shutdown began: jobs waiting for a slot, the limiter or a backoff are handed back."""
        self.loop.call_soon_threadsafe(self.stop.set)

    def close(self) -> None:
        """After Celery's pool drained: last writes, then the loop ends."""
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(timeout=60)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)

    # ---- on the loop -----------------------------------------------------------------------------

    async def _open(self) -> None:
        s = self.settings
        self.stop = asyncio.Event()
        self.redis = make_async_redis(s, max_connections=32)
        self.store = WorkerStore(self.redis, s)
        self.batches = Batches(self.redis, self.store.keys)
        worker = f"{socket.gethostname()}:{threading.get_native_id()}"
        self.limiter = RateLimiter(self.store, s, worker)
        self.provider = Provider(llm.make_client(s), self.limiter, s, self.stop)
        self.slots = asyncio.Semaphore(s.concurrency)
        self.writer = Writer(self.store)
        self.writer.start()
        self.housekeeper = Housekeeper(self.store, self.leases, self.limiter, self.stop, self._publish)
        await self.housekeeper.tick()  # limits in force before the first job, and leases of a restart reaped
        self.housekeeper.start()

    async def _close(self) -> None:
        await self.housekeeper.renew()
        await self.housekeeper.close()
        await self.writer.close()
        await self.provider.client.close()
        await self.redis.aclose()

    async def _publish(self, messages: list[Message]) -> None:
        # kombu's producer is synchronous: publish off the loop.
        await asyncio.get_running_loop().run_in_executor(None, publish, self.app, self.settings, messages)

    async def process(self, batch_id: str, job_ids: list[str], step: int) -> Report:
        report = Report()
        claimed = await self.store.claim(batch_id, job_ids, step, token=uuid.uuid4().hex)
        report.outcomes.update(f"skipped-{why}" for why in claimed.skipped.values())
        if not claimed.jobs:
            return report
        spec = await self.batches.spec(batch_id)
        started = time.monotonic()
        results = await asyncio.gather(
            *(self.run_job(spec, job, started) for job in claimed.jobs), return_exceptions=True
        )
        for job, result in zip(claimed.jobs, results, strict=True):
            if isinstance(result, BaseException):
                # Nowhere to record anything (Redis gone for good): the lease lapses and the reaper re-runs it.
                log.error("job %s/%s: %s", batch_id, job.job_id, result)
                report.outcomes["unsettled"] += 1
                continue
            name, error_type = result
            report.outcomes[name] += 1
            if error_type:
                report.failed[job.job_id] = error_type
        return report

    async def run_job(self, spec: BatchSpec, job: ClaimedJob, started: float) -> tuple[str, str | None]:
        """Load, summarize, store: one job's run."""
        tally = Tally()

        async def guard() -> None:
            await self.batches.check(job.batch_id)

        with self.leases.hold(job):
            try:
                async with self.slots:
                    summary = await summarize(
                        job.text,
                        spec,
                        self.provider.for_job(job.unusable, tally, guard),
                        self.settings.max_summary_chars,
                    )
            except redis.RedisError:
                raise
            except Exception as exc:
                if isinstance(exc, ProviderRejected):
                    self.batches.note(job.batch_id, "halted", f"{type(exc).__name__}: {exc}")
                op, name = outcome.failed(job, exc, tally, self.settings, time.monotonic() - started)
                await self.writer.settle(op)
                return name, type(exc).__name__ if name == "failed" else None
            await self.writer.settle(outcome.done(job, summary, tally))
        return "done", None


_lock = threading.Lock()
_engine: Engine | None = None


def engine(settings: Settings, app: Celery) -> Engine:
    """The process's engine, started on first use."""
    global _engine
    with _lock:
        if _engine is None:
            _engine = Engine(settings, app)
            _engine.start()
        return _engine


def current() -> Engine | None:
    return _engine
