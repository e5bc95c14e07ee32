"""The Celery app (`celery -A worker worker`, `celery -A worker flower`), configured for I/O-bound LLM calls."""

from __future__ import annotations

import logging
import time
from os import EX_CONFIG
from typing import Any

from celery import Celery, bootsteps
from celery.signals import worker_shutdown, worker_shutting_down
from celery.worker import state as worker_state

from contract.errors import BrokerUnavailable, EvictingRedis
from contract.messaging import make_celery
from contract.redisconn import check_eviction, make_redis, ping
from contract.settings import Settings, redact_url

from . import engine, metrics

log = logging.getLogger(__name__)
#: a worker started before Redis tries it this often, and says it is waiting at most this often
REDIS_RETRY, REDIS_WAIT_NOTE = 1.0, 30.0


def _survive_redis_restart() -> None:
    """kombu 5.7's Redis transport, touching a channel after Celery dropped the broken connection (Redis
    restarted with messages delivered and not yet acked), rebuilds a pool from a transport (or channel)
    whose connection is already None: AttributeError, which Celery's ignore_errors and the ack's error
    handling do not catch, so the worker exits with "Unrecoverable error" instead of reconnecting. Two
    places do it: restoring the unacked messages when the channel closes, and acking a task that finished
    after the loss. Those messages stay in kombu's unacked hash in Redis (a late redelivery finds their
    jobs settled), and their jobs come back through our leases and the reaper either way: skip there."""
    from kombu.transport import redis as kombu_redis

    def gone(qos: Any) -> bool:
        connection = getattr(qos.channel, "connection", None)
        return connection is None or getattr(connection, "client", None) is None

    restore, ack = kombu_redis.QoS.restore_unacked, kombu_redis.QoS.ack

    def restore_unacked(self: Any, client: Any = None) -> Any:
        try:
            return restore(self, client)
        except AttributeError:
            if not gone(self):
                raise
            log.warning("broker connection gone while closing: unacked messages left for the reaper")
            self._delivered.clear()
            return None

    def ack_after_loss(self: Any, delivery_tag: Any) -> None:
        try:
            ack(self, delivery_tag)
        except AttributeError:
            if not gone(self):
                raise
            log.warning("broker connection gone: the ack of a finished task is left (its jobs are settled)")

    kombu_redis.QoS.restore_unacked = restore_unacked  # type: ignore[method-assign]
    kombu_redis.QoS.ack = ack_after_loss  # type: ignore[method-assign]


_survive_redis_restart()
# One INFO line per HTTP request from the openai client's HTTP stack drowns the task log at 400 jobs/s.
for noisy in ("httpx", "httpx2", "httpcore", "openai"):
    logging.getLogger(noisy).setLevel(logging.WARNING)

settings = Settings.from_env()
app: Celery = make_celery(settings, "worker")
app.conf.update(
    # An LLM call is mostly waiting: the jobs run as coroutines on one event loop per process
    # (worker/engine.py). Celery's threads only carry messages to it and wait for their outcome.
    worker_pool="threads",
    # A thread only waits on its message's future. Threads are many (twice the old 3 x concurrency / 20 at
    # the defaults) so that messages waiting for their one slow job never keep the next message from being
    # claimed: under a long-tailed latency most messages in progress are down to a straggler or two
    # (bench/tail.py). Threads x jobs a message = the engine's claim bound, so a message delivered here is
    # claimed (leased) at once: one held back unclaimed would, on a kill -9, wait for the reaper's
    # SUMMARIZE_QUEUED_GRACE instead of a lease.
    worker_concurrency=max(2, -(-engine.claim_bound(settings) // settings.jobs_per_message)),
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


class EngineStep(bootsteps.StartStopStep):
    """Starts the process's event loop with the worker, after refusing a Redis that may evict jobs.

    Steps stop in reverse order, so this one stops *before* the pool drains its running tasks: leases must
    keep being renewed until then, so the engine is closed only at `worker_shutdown` (after the drain).
    """

    requires = ("celery.worker.components:Pool",)

    def start(self, parent: Any) -> None:
        wait_for_redis()
        engine.engine(settings, app)
        metrics.start(settings.worker)
        log.info(
            "summarize worker ready: %s",
            {
                k: v
                for k, v in settings.public().items()
                if k in ("openai_base_url", "model", "concurrency", "rpm", "tpm")
            },
        )


app.steps["worker"].add(EngineStep)


def wait_for_redis() -> None:
    """Until Redis answers (a worker may start before it, or while it restarts), saying so in one line every
    REDIS_WAIT_NOTE seconds. What waiting can't cure stops the worker with EX_CONFIG and one line: an
    evicting Redis, credentials it rejects, a certificate that doesn't verify."""
    noted = None
    while True:
        probe = make_redis(settings, max_connections=1, attempts=0)
        try:
            ping(probe, settings)
            check_eviction(probe, settings)
            if noted is not None:
                log.warning("summarize worker: Redis at %s answers now; starting", redact_url(settings.redis_url))
            return
        except EvictingRedis as exc:
            refuse(exc)
        except BrokerUnavailable as exc:
            if "is unreachable" not in str(exc) or "certificate verify failed" in str(exc).lower():
                refuse(exc)
            if noted is None or time.monotonic() - noted >= REDIS_WAIT_NOTE:
                log.warning("summarize worker: waiting for Redis (trying every %gs): %s", REDIS_RETRY, exc)
                noted = time.monotonic()
        finally:
            probe.close()
        for _ in range(10):  # Celery's SIGTERM/SIGINT handlers only set a flag: a stop ends the wait here
            worker_state.maybe_shutdown()
            time.sleep(REDIS_RETRY / 10)


def refuse(exc: Exception) -> None:
    log.critical("summarize worker refuses to start: %s", exc)
    raise SystemExit(EX_CONFIG) from None  # Celery stops with this code, no traceback


@worker_shutdown.connect
def _close_engine(**_: Any) -> None:
    running = engine.current()
    if running is not None:
        running.close()


@worker_shutting_down.connect
def _hand_back_on_shutdown(**_: Any) -> None:
    running = engine.current()
    if running is not None:
        running.begin_shutdown()


from . import tasks  # noqa: E402,F401  (registers the task with the app)
