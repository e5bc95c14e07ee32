"""What happens to a job when its summarize call raised: hand back, defer, fail, or halt the batch."""

from __future__ import annotations

import logging
import time

import redis

from contract.errors import HandBack, ProviderRejected, TransientLLMError
from contract.job import ClaimedJob
from contract.store import JobStore

from .retry import defer_delay

log = logging.getLogger(__name__)


def settle_failure(store: JobStore, job: ClaimedJob, exc: Exception, attempts: int) -> str:
    """Record a failed run; returns the outcome name the task reports to Flower."""
    horizon = store.settings.retry_horizon
    if isinstance(exc, redis.RedisError):
        # Nowhere to record anything: let the lease lapse and the reaper re-enqueue the job later.
        raise exc
    if isinstance(exc, HandBack):
        store.defer(job, 0.0, exc, attempts, failure=False)
        return "handed-back"
    if isinstance(exc, TransientLLMError):
        first = job.first_failure or time.time()
        if time.time() - first < horizon:
            delay = defer_delay(job.deferrals, exc.retry_after, store.settings.defer_base)
            store.defer(job, delay, exc, attempts)
            log.warning("job %s/%s deferred %.0fs after %s", job.batch_id, job.job_id, delay, exc)
            return "deferred"
        exc = type(exc)(f"gave up after {horizon:.0f}s of retries; last error: {exc}", exc.status)
    if isinstance(exc, ProviderRejected) and not job.halted:
        # Thousands of jobs would fail the same way: stop paying for the discovery one at a time.
        store.halt(job.batch_id, exc)
        log.error("batch %s halted: %s", job.batch_id, exc)
    store.fail(job, exc, attempts)
    return "failed"
