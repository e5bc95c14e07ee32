"""Prometheus metrics of one worker process, served on SUMMARIZE_METRICS_PORT (the next free port when it
is taken, so several processes can share a host; 0 turns it off).

Only what this process sees: its jobs, its requests, its waits. What lives in Redis (queue length,
unfinished jobs per batch) is exported from one place, `summarize exporter` (producer/prometheus.py), not
from every worker. Labels are few and fixed: never a batch or job id on a per-job metric.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from contract.checks import FLAGS
from contract.models import Price
from contract.settings import WorkerSettings

log = logging.getLogger(__name__)

#: ports tried above SUMMARIZE_METRICS_PORT when it is taken
PORT_TRIES = 32

JOBS = Counter("summarize_jobs_total", "Jobs this worker settled, by outcome", ["outcome"])
REQUESTS = Counter(
    "summarize_llm_requests_total", "LLM requests, by HTTP status (or error: timeout, connection)", ["status"]
)
LATENCY = Histogram(
    "summarize_llm_request_duration_seconds",
    "Time from sending an LLM request to its answer",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120),
)
TOKENS = Counter("summarize_tokens_total", "Tokens billed by the provider, by kind", ["kind"])
COST = Counter("summarize_cost_usd_total", "USD billed, for calls whose price is known")
CACHE_HITS = Counter("summarize_cache_hits_total", "Jobs answered from the result cache or by a twin's call")
LIMITER_WAIT = Counter("summarize_limiter_wait_seconds_total", "Seconds requests waited for the shared rate limiter")
IN_FLIGHT = Gauge("summarize_jobs_in_flight", "LLM requests in flight in this worker")
RECOVERED = Counter(
    "summarize_reaper_requeued_total", "Jobs the reaper put back on the queue, by reason (lease, due, lost)", ["reason"]
)
PACKS = Counter(
    "summarize_batch_packs_total", "Provider batches (batch mode) this worker moved, by new state", ["state"]
)

REDIS_WAIT = Counter(
    "summarize_redis_wait_seconds_total", "Seconds settles of final outcomes waited for replicas (WAIT)"
)
REDIS_WAIT_TIMEOUTS = Counter(
    "summarize_redis_wait_timeouts_total",
    "Settles whose WAIT timed out before SUMMARIZE_REDIS_WAIT_REPLICAS replicas acknowledged them",
)


def note_wait(seconds: float, timed_out: bool) -> None:
    """One WAIT after a settle: how long it blocked, and whether the replicas fell short."""
    REDIS_WAIT.inc(seconds)
    if timed_out:
        REDIS_WAIT_TIMEOUTS.inc()


CHECKED = Counter("summarize_summaries_checked_total", "Answers the checks ran on (contract/checks.py)")
FLAGGED = Counter("summarize_summary_flags_total", "Answers each check flagged (contract/checks.py)", ["flag"])
REFUSED_BY_CHECKS = Counter(
    "summarize_flagged_unusable_total", "Answers refused as unusable by a check their batch requires (--require-checks)"
)
for _flag in FLAGS:
    FLAGGED.labels(_flag)  # every flag's series from the start, at 0


def checked(flags: tuple[str, ...]) -> None:
    """One answer checked, with the flags it got."""
    CHECKED.inc()
    for name in flags:
        FLAGGED.labels(name).inc()


def start(settings: WorkerSettings) -> int | None:
    """Serve /metrics; returns the port, or None when turned off or no port was free."""
    if not settings.metrics_port:
        return None
    for port in range(settings.metrics_port, settings.metrics_port + PORT_TRIES):
        try:
            start_http_server(port, addr="0.0.0.0")  # scraped from other hosts and containers
        except OSError:
            continue
        log.info("Prometheus metrics on :%d/metrics", port)
        return port
    log.warning(
        "no free port for metrics in %d..%d: metrics are off",
        settings.metrics_port,
        settings.metrics_port + PORT_TRIES - 1,
    )
    return None


def observe(failure: BaseException | None, seconds: float, billed: tuple[int, int], price: Price | None) -> None:
    """One LLM request: its status, how long it took, what it was billed."""
    REQUESTS.labels(request_status(failure)).inc()
    LATENCY.observe(seconds)
    if billed[0]:
        TOKENS.labels("prompt").inc(billed[0])
    if billed[1]:
        TOKENS.labels("completion").inc(billed[1])
    if price is not None and any(billed):
        COST.inc(price.cost(*billed))


def request_status(exc: BaseException | None) -> str:
    """The label of a request's outcome: its HTTP status, or what went wrong before one came."""
    if exc is None:
        return "200"
    status = getattr(exc, "status", None)
    if status:
        return str(status)
    text = str(exc)
    return "timeout" if "timed out" in text or "took longer" in text else "connection"
