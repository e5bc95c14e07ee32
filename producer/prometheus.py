"""`summarize exporter`: Prometheus metrics of what Redis holds, read on each scrape, from one place.

Every worker process serves its own /metrics (worker/metrics.py): what it did. What is shared lives in
Redis and would be the same on every worker, so one exporter reports it: messages waiting on the queue
per priority, the backlog of unfinished jobs, unfinished jobs per batch, the jobs waiting for a time
(running under a lease, deferred until a retry, waiting for a twin's call), submits waiting for room
under SUMMARIZE_MAX_QUEUED, and batch mode's open provider batches. Nothing is cached between
scrapes; a scrape while Redis is unreachable answers `summarize_redis_up 0` and nothing else of Redis.

    summarize exporter [--host 0.0.0.0] [--port 9809]     # http://HOST:PORT/metrics

Reads only, through contract's Keys and JobStore, so it needs no more than the producer's access.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from types import FrameType

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric

from contract.errors import ConfigError
from contract.keys import PRIORITIES, PRIORITY_STEPS
from contract.record import text
from contract.redisconn import make_redis
from contract.settings import Settings, redact_url
from contract.store import JobStore, batched

log = logging.getLogger(__name__)

DEFAULT_PORT = 9809
#: members of the due set whose status is read per scrape; the rest count as status="uncounted"
DUE_STATUS_LIMIT = 50_000
#: commands per pipeline round trip when reading many batches or jobs
CHUNK = 1000
#: a submit waiting for room under SUMMARIZE_MAX_QUEUED asks again within this; one silent longer has gone
#: (admit.lua's STALE_MS)
SUBMIT_STALE_MS = 10_000
#: statuses of the due set always exported (0 when none), so dashboards have a series to draw
DUE_STATUSES = ("running", "deferred", "waiting")
#: priority label of each kombu priority step: the name a batch asks for, else the step number
PRIORITY_NAMES = {step: name for name, step in PRIORITIES.items()}


def priority_label(step: int) -> str:
    return PRIORITY_NAMES.get(step, str(step))


class RedisCollector:
    """A custom collector: each collect() reads Redis once and yields fresh gauges."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.keys = store.keys

    def describe(self) -> Iterable[Metric]:
        """The metric names, without reading Redis (registration must not depend on it)."""
        return list(self._families().values())

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        fam = self._families()
        try:
            self._read(fam)
            fam["redis_up"].add_metric([], 1)
        except redis.RedisError as exc:
            log.warning("exporter: Redis at %s: %s", redact_url(self.store.settings.redis_url), exc)
            fam = {"redis_up": fam["redis_up"], "scrape_seconds": fam["scrape_seconds"]}
            fam["redis_up"].add_metric([], 0)
        fam["scrape_seconds"].add_metric([], time.monotonic() - started)
        yield from fam.values()

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily]:
        return {
            "queue": GaugeMetricFamily(
                "summarize_queue_messages",
                "Task messages waiting on the Celery queue, by priority (each carries up to "
                "SUMMARIZE_JOBS_PER_MESSAGE jobs of one batch)",
                labels=["priority"],
            ),
            "backlog": GaugeMetricFamily(
                "summarize_backlog_jobs", "Unfinished jobs of every batch: queued, running, deferred, waiting, parked"
            ),
            "batch": GaugeMetricFamily(
                "summarize_batch_unfinished_jobs",
                "Jobs of a batch not yet done, failed or cancelled (only batches with some)",
                labels=["batch"],
            ),
            "due": GaugeMetricFamily(
                "summarize_due_jobs",
                "Jobs waiting for a time, by status: running (until its lease ends), deferred (until its "
                "retry), waiting (for an identical article's call)",
                labels=["status"],
            ),
            "overdue": GaugeMetricFamily(
                "summarize_due_overdue_jobs",
                "Jobs whose lease or retry time has passed: the reaper's next work (growing: no worker reaps)",
            ),
            "submits": GaugeMetricFamily(
                "summarize_submits_waiting",
                "Submits waiting for room under SUMMARIZE_MAX_QUEUED (the backlog's bound) for their next chunk",
            ),
            "packs": GaugeMetricFamily(
                "summarize_packs_open", "Provider batches (--mode batch) not finished yet: being created, in progress"
            ),
            "pack_tokens": GaugeMetricFamily(
                "summarize_packs_enqueued_tokens",
                "Tokens (prompt + max_tokens) of the provider batches not finished yet: what the provider's "
                "enqueued-token limit counts",
            ),
            "cooldown": GaugeMetricFamily(
                "summarize_limiter_cooldown_seconds",
                "Seconds left of the pause every worker keeps after the provider's 429 with Retry-After",
            ),
            "redis_up": GaugeMetricFamily("summarize_redis_up", "1 if the exporter read Redis on this scrape, else 0"),
            "scrape_seconds": GaugeMetricFamily(
                "summarize_exporter_scrape_duration_seconds", "Seconds this scrape spent reading Redis"
            ),
        }

    def _read(self, fam: dict[str, GaugeMetricFamily]) -> None:
        r, k = self.store.r, self.keys
        with r.pipeline(transaction=False) as p:
            p.time()
            for step in PRIORITY_STEPS:
                p.llen(k.broker_queue(step))
            p.get(k.backlog)
            p.zcard(k.due)
            p.pttl(k.cooldown)
            p.hvals(k.admission_seen)
            p.zcard(k.packs_due)
            p.get(k.packs_tokens)
            (seconds, micros), *lengths, backlog, due_total, cooldown_ms, seen, packs, pack_tokens = p.execute()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        for step, length in zip(PRIORITY_STEPS, lengths, strict=True):
            fam["queue"].add_metric([priority_label(step)], int(length))
        fam["backlog"].add_metric([], max(0, int(backlog or 0)))
        fam["cooldown"].add_metric([], max(0, int(cooldown_ms)) / 1000)
        fam["submits"].add_metric([], sum(1 for ms in seen if int(ms) >= now_ms - SUBMIT_STALE_MS))
        fam["packs"].add_metric([], int(packs))
        fam["pack_tokens"].add_metric([], max(0, int(pack_tokens or 0)))
        for batch_id, unfinished in self._unfinished_batches():
            fam["batch"].add_metric([batch_id], unfinished)
        for status, n in sorted(self._due_statuses(int(due_total)).items()):
            fam["due"].add_metric([status], n)
        fam["overdue"].add_metric([], int(r.zcount(k.due, "-inf", now_ms)))  # type: ignore[arg-type]

    def _unfinished_batches(self) -> Iterator[tuple[str, int]]:
        """(batch id, unfinished jobs) of the batches in `Keys.batches` that have any; a batch whose
        hash has expired (its results' TTL passed) is skipped."""
        r, k = self.store.r, self.keys
        ids = [text(b) for b in r.zrange(k.batches, 0, -1)]  # type: ignore[union-attr]
        for chunk in batched(ids, CHUNK):
            with r.pipeline(transaction=False) as p:
                for batch_id in chunk:
                    p.hmget(k.batch(batch_id), ["queued", "running"])
                rows = p.execute()
            for batch_id, (queued, running) in zip(chunk, rows, strict=True):
                unfinished = int(queued or 0) + int(running or 0)
                if unfinished > 0:
                    yield batch_id, unfinished

    def _due_statuses(self, total: int) -> Counter[str]:
        """Members of the due set by their job's status, the earliest DUE_STATUS_LIMIT of them read."""
        r, k = self.store.r, self.keys
        counts: Counter[str] = Counter(dict.fromkeys(DUE_STATUSES, 0))
        if total == 0:
            return counts
        members = [text(m) for m in r.zrange(k.due, 0, DUE_STATUS_LIMIT - 1)]  # type: ignore[union-attr]
        for chunk in batched(members, CHUNK):
            with r.pipeline(transaction=False) as p:
                for member in chunk:
                    batch_id, job_ids = k.split_member(member)
                    p.hget(k.job(batch_id, job_ids[0] if job_ids else ""), "s")
                counts.update(text(s) if s else "unknown" for s in p.execute())
        if total > len(members):
            counts["uncounted"] += total - len(members)
        return counts


def registry(settings: Settings) -> CollectorRegistry:
    """A registry holding only the Redis collector (no process metrics: the workers have those)."""
    # Few retries: a scrape must answer `summarize_redis_up 0` quickly, not wait out a Redis restart.
    client = make_redis(settings, max_connections=4, attempts=2, decode=False)
    reg = CollectorRegistry()
    reg.register(RedisCollector(JobStore(client, settings)))
    return reg


def serve(settings: Settings, host: str = "0.0.0.0", port: int = DEFAULT_PORT) -> int:
    """Serve /metrics until SIGTERM or SIGINT (exit code 0); a port it can't listen on is a ConfigError."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    try:
        server, thread = start_http_server(port, addr=host, registry=registry(settings))
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from None
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    print(
        f"summarize exporter: http://{host}:{server.server_port}/metrics "
        f"(Redis {redact_url(settings.redis_url)}, prefix {settings.key_prefix})",
        file=sys.stderr,
        flush=True,
    )
    stop.wait()
    server.shutdown()
    server.server_close()
    thread.join(5)
    return 0
