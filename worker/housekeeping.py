"""Background duties of every worker process: renew the leases of jobs it holds, and reap.

Why our own leases: Redis has no real acks. A message kombu popped but had not yet recorded as unacked
is lost on a crash (celery#7950), and unacked messages of a killed worker come back only after the
visibility timeout. A job whose lease runs out is re-enqueued by the reaper within about
lease_seconds + reap_interval, whatever happened to its message.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from celery import Celery

from contract.job import ClaimedJob
from contract.messaging import publish
from contract.store import JobStore

log = logging.getLogger(__name__)


class Leases:
    """The jobs this process is working on, so one thread can renew all their leases at once."""

    def __init__(self) -> None:
        self._held: dict[str, ClaimedJob] = {}
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, job: ClaimedJob) -> Iterator[None]:
        with self._lock:
            self._held[job.token] = job
        try:
            yield
        finally:
            with self._lock:
                self._held.pop(job.token, None)

    def snapshot(self) -> list[ClaimedJob]:
        with self._lock:
            return list(self._held.values())


class Housekeeper(threading.Thread):
    def __init__(self, store: JobStore, leases: Leases, app: Celery, stop: threading.Event) -> None:
        super().__init__(name="summarize-housekeeper", daemon=True)
        self.store, self.leases, self.app, self.stop = store, leases, app, stop
        self.owner = f"{socket.gethostname()}:{threading.get_native_id()}"
        s = store.settings
        self.period = max(0.1, min(s.lease_seconds / 3, s.reap_interval))
        # Renewing every held lease costs one script call per job: do it as rarely as the lease allows.
        self.renew_every = max(1, round((s.lease_seconds / 3) / self.period))
        self.ticks = 0
        self.finished = threading.Event()

    def run(self) -> None:
        while not self.finished.wait(self.period):
            try:
                self.tick()
            except Exception:  # a Redis outage must not kill the thread; it retries next tick
                log.exception("housekeeping tick failed")

    def tick(self) -> None:
        self.ticks += 1
        if self.ticks % self.renew_every == 0:
            self._renew()
        # A stopping worker keeps renewing its leases but leaves reaping to the others.
        if not self.stop.is_set() and self.store.try_reaper_lock(self.owner):
            due = self.store.requeue_due()
            if due:
                publish(self.app, self.store.settings, due)
                log.info("reaper re-enqueued %d job(s)", len(due))

    def _renew(self) -> None:
        held = self.leases.snapshot()
        if held:
            self.store.heartbeat(held)

    def close(self) -> None:
        """Called at worker_shutdown, after the pool drained, so no running job's lease lapses meanwhile."""
        self.finished.set()
