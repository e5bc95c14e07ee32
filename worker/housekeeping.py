"""Background duties of every worker process, on its event loop: renew the leases of the jobs it holds,
keep the fleet's rate limits in step, and (one worker at a time) reap.

Why our own leases: Redis has no real acks. A message kombu popped but had not yet recorded as unacked
is lost on a crash (celery#7950), and unacked messages of a killed worker come back only after the
visibility timeout. A job whose lease runs out is re-enqueued by the reaper within about
lease_seconds + reap_interval, whatever happened to its message. Each tick renews before it reaps, and
leases are judged on Redis' clock (see contract/lua/reap.lua), so neither a slow tick nor a fast clock
reaps a live job.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

from contract.job import ClaimedJob
from contract.messaging import PACK_TASK, POLL_TASK
from contract.store import Message

from . import metrics
from .ratelimit import RateLimiter
from .storage import WorkerStore

log = logging.getLogger(__name__)


class Leases:
    """The jobs this process is working on, so one call can renew all their leases at once."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, str, str], ClaimedJob] = {}

    @contextmanager
    def hold(self, job: ClaimedJob) -> Iterator[None]:
        key = (job.batch_id, job.job_id, job.token)
        self._held[key] = job
        try:
            yield
        finally:
            self._held.pop(key, None)

    def snapshot(self) -> list[ClaimedJob]:
        return list(self._held.values())

    def __len__(self) -> int:
        return len(self._held)


class Housekeeper:
    def __init__(
        self,
        store: WorkerStore,
        leases: Leases,
        limiter: RateLimiter,
        stop: asyncio.Event,
        publish: Callable[[list[Message]], Awaitable[None]],
        send: Callable[[list[tuple[str, str]]], Awaitable[None]],
    ) -> None:
        self.store, self.leases, self.limiter, self.stop, self.publish = store, leases, limiter, stop, publish
        #: (task name, argument) pairs to publish as Celery tasks
        self.send = send
        self.owner = f"{socket.gethostname()}:{threading.get_native_id()}"
        s = store.settings
        self.period = max(0.05, min(s.lease_seconds / 3, s.reap_interval))
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="housekeeping")

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # a Redis outage must not end housekeeping; it tries again next tick
                log.exception("housekeeping tick failed")
            await asyncio.sleep(self.period)

    async def tick(self) -> None:
        await self.renew()
        await self.limiter.refresh_limits(ttl_s=3 * self.period + 5)
        # A stopping worker keeps renewing its leases but leaves reaping to the others.
        if not self.stop.is_set() and await self.store.try_reaper_lock(self.owner):
            reaped = await self.store.reap()
            for reason, n in (("lease", reaped.reclaimed), ("due", reaped.due), ("lost", reaped.republished)):
                if n:
                    metrics.RECOVERED.labels(reason).inc(n)
            if reaped.messages:
                await self.publish(reaped.messages)
                log.info(
                    "reaper re-enqueued %d message(s): %d lease(s) lapsed, %d retries due, %d job(s) "
                    "whose message was lost",
                    len(reaped.messages),
                    reaped.reclaimed,
                    reaped.due,
                    reaped.republished,
                )
            await self.batch_mode()

    async def batch_mode(self) -> None:
        """Publish the batch-mode work that is due: packing batches, moving packs on (Flower shows them)."""
        batches, packs = await self.store.packs_due()
        if batches or packs:
            await self.send([(PACK_TASK, b) for b in batches] + [(POLL_TASK, p) for p in packs])

    async def renew(self) -> None:
        held = self.leases.snapshot()
        if held:
            lost = await self.store.renew(held)
            if lost:
                log.warning("%d job(s) were taken over by another run (their leases had lapsed)", len(lost))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
