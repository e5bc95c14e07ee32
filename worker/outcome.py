"""What a run of a job comes to, as one op for settle.lua: done, or hand back, defer, fail, halt the batch."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from contract import checks
from contract.errors import FlaggedSummary, HandBack, PermanentLLMError, ProviderRejected, TransientLLMError
from contract.job import ClaimedJob
from contract.ops import Cancel, Defer, Done, Fail, Op, Park, Run
from contract.record import Final
from contract.settings import Settings
from contract.spec import BatchSpec

from . import metrics
from .retry import defer_delay
from .summarize import Accept, Summary, Tally

log = logging.getLogger(__name__)


def _final(job: ClaimedJob, tally: Tally, status: str, **fields: Any) -> Final:
    bill = job.bill + tally.billed
    counts = Final(
        status,
        job.article.digest,
        job.article.origin,
        prompt_tokens=bill.prompt_tokens,
        completion_tokens=bill.completion_tokens,
        attempts=job.attempts + tally.requests,
        unusable=job.unusable + tally.unusable,
        finished_ms=int(time.time() * 1000),
        # Null, never 0, once some call's price was unknown.
        cost_usd=round(bill.cost_usd, 9) if bill.cost_known else None,
    )
    return replace(counts, **fields)


def checked(text: str, summary: str, spec: BatchSpec) -> checks.Checks:
    """The checks of an answer to the article `text` under the batch's spec (contract/checks.py)."""
    return checks.check(text, summary, spec.max_words, spec.language, spec.json_schema is not None)


def required(text: str, spec: BatchSpec) -> Accept | None:
    """What a final answer must pass when its batch requires checks (--require-checks): a flagged one
    raises FlaggedSummary, an unusable answer, asked again within SUMMARIZE_MAX_UNUSABLE. None: no gate."""
    if not spec.require_checks:
        return None
    need = checks.bits(spec.require_checks)

    def accept(summary: str) -> None:
        flags = checked(text, summary, spec).flags & need
        if flags:
            metrics.REFUSED_BY_CHECKS.inc()
            raise FlaggedSummary(checks.names_of(flags))

    return accept


def done(
    job: ClaimedJob,
    summary: Summary,
    tally: Tally,
    cache_key: str | None = None,
    spec: BatchSpec | None = None,
    found: checks.Checks | None = None,
) -> Done:
    """`cache_key`: what the answer is cached under (the job's own, unless a fallback model wrote it);
    `spec`: the batch's, to check the answer under (contract/checks.py; None: not checked), unless
    `found` has its checks already."""
    key = job.cache_key if cache_key is None else cache_key
    if found is None:
        found = checked(job.text, summary.text, spec) if spec is not None else checks.Checks()
    if spec is not None:
        metrics.checked(found.names)
    final = _final(
        job,
        tally,
        "done",
        summary=summary.text,
        model=summary.model,
        chunks=summary.chunks,
        cache_key=key,
        flags=found.flags,
        copied=found.copied,
    )
    # Only what a part's op did not already store: billing is counted once (so for every op below).
    return Done(run=Run.of(job), counts=tally.unflushed(), final=final)


def parked(job: ClaimedJob, tally: Tally) -> Park:
    """The batch was paused (by the user or its budget): the job waits, failed by nothing."""
    return Park(run=Run.of(job), counts=tally.unflushed())


def cancelled(job: ClaimedJob, tally: Tally) -> Cancel:
    return Cancel(run=Run.of(job), counts=tally.unflushed())


def failed(job: ClaimedJob, exc: Exception, tally: Tally, settings: Settings, running_for: float) -> tuple[Op, str]:
    """The op for a run that raised, and the outcome name the task reports to Flower."""
    if isinstance(exc, HandBack):
        op: Op = Defer(
            run=Run.of(job),
            counts=tally.unflushed(),
            delay_ms=0,
            error_type=type(exc).__name__,
            error=str(exc),
            counts_as_failure=False,
        )
        return op, "handed-back"
    if isinstance(exc, TransientLLMError):
        failing_for = (job.failing_for or 0.0) + running_for
        if failing_for < settings.retry_horizon:
            delay = defer_delay(job.deferrals, exc.retry_after, settings.defer_base)
            log.warning("job %s/%s deferred %.0fs after %s", job.batch_id, job.job_id, delay, exc)
            op = Defer(
                run=Run.of(job),
                counts=tally.unflushed(),
                delay_ms=int(delay * 1000),
                error_type=type(exc).__name__,
                error=str(exc),
                counts_as_failure=True,
            )
            return op, "deferred"
        exc = type(exc)(f"gave up after {settings.retry_horizon:.0f}s of retries; last error: {exc}")
    # Thousands of jobs would fail the same way: stop paying for the discovery one at a time.
    halt = f"{type(exc).__name__}: {exc}"[:2000] if isinstance(exc, ProviderRejected) else ""
    record = _final(job, tally, "failed", error=str(exc)[:2000], error_type=type(exc).__name__)
    op = Fail(run=Run.of(job), counts=tally.unflushed(), final=record, halt=halt, signature=same_error_signature(exc))
    return op, "failed"


def same_error_signature(exc: Exception) -> str:
    """What makes two failures 'the same permanent error' for halting a batch whose first calls all fail
    alike (a gateway answering every request with one 400): a provider's 4xx answer, by status and
    message. Failures that depend on the article (context, unusable answers, a request over the TPM)
    never count. '' for those."""
    if type(exc) is not PermanentLLMError or exc.status is None:
        return ""
    return f"{exc.status} {exc}"[:300]
