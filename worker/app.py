"""The Celery app (`celery -A worker worker`, `celery -A worker flower`), configured for I/O-bound LLM calls."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, bootsteps
from celery.signals import worker_shutdown, worker_shutting_down

from contract.messaging import make_celery
from contract.settings import Settings

from .housekeeping import Housekeeper
from .runtime import runtime

log = logging.getLogger(__name__)
# One INFO line per HTTP request from the openai client's HTTP stack drowns the task log at 400 jobs/s.
for noisy in ("httpx", "httpx2", "httpcore", "openai"):
    logging.getLogger(noisy).setLevel(logging.WARNING)

settings = Settings.from_env()
app: Celery = make_celery(settings, "worker")
app.conf.update(
    # An LLM call is mostly waiting: one process with many threads holds hundreds of requests in
    # flight on 2 cores, shares one openai connection pool, and keeps memory bounded.
    worker_pool="threads",
    # Each Celery thread waits on one message's jobs, which run in the runtime's pool of
    # SUMMARIZE_CONCURRENCY threads; twice the messages needed to fill it covers slow stragglers.
    worker_concurrency=max(2, 2 * -(-settings.concurrency // settings.jobs_per_message)),
    # One message per free thread: nothing sits reserved in a busy worker while another idles.
    worker_prefetch_multiplier=1,
    # Ack after the task ran, and give the message back if the worker dies under it.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # Flower needs events; 'sent' events show jobs as soon as they are queued.
    worker_send_task_events=True,
    task_track_started=True,
    worker_hijack_root_logger=False,
    broker_pool_limit=32,
)


class HousekeepingStep(bootsteps.StartStopStep):
    """Starts lease renewal and the reaper with the worker.

    Steps stop in reverse order, so this one stops *before* the pool drains its running tasks: leases must
    keep being renewed until then, so the thread is closed only at `worker_shutdown` (after the drain).
    """

    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.keeper: Housekeeper | None = None
        _keepers.append(self)

    def start(self, parent: Any) -> None:
        rt = runtime(settings)
        self.keeper = Housekeeper(rt.store, rt.leases, app, rt.stop)
        self.keeper.start()
        log.info("summarize worker ready: %s", {k: v for k, v in settings.public().items()
                                                 if k in ("openai_base_url", "model", "concurrency", "rpm", "tpm")})

    def close_keeper(self) -> None:
        if self.keeper is not None:
            self.keeper.close()


app.steps["worker"].add(HousekeepingStep)
_keepers: list[HousekeepingStep] = []


@worker_shutdown.connect
def _close_housekeeping(**_: Any) -> None:
    for step in _keepers:
        step.close_keeper()


@worker_shutting_down.connect
def _hand_back_on_shutdown(**_: Any) -> None:
    runtime(settings).stop.set()


from . import tasks  # noqa: E402,F401  (registers the task with the app)
