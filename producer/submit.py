"""Bulk submit: validate everything first, then store texts and publish messages in pipelined chunks.

Resumable without double enqueueing: ids already stored under the batch are skipped. A job is stored
(queued) before its message is published, so a crash in between leaves at most one chunk stored without
a message; the worker's reaper publishes those once the queue has drained (see contract/store.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from celery import Celery

from contract.errors import InputError, InvalidInput
from contract.messaging import publish
from contract.store import JobStore, NewJob

from .reader import INVALID_ID_PREFIX, Record

CHUNK = 500
#: how many bad records an error message lists before it only counts them
MAX_LISTED_ERRORS = 100


@dataclass
class SubmitReport:
    batch_id: str
    records: int = 0
    enqueued: int = 0
    skipped_existing: int = 0
    invalid: int = 0
    interrupted: bool = False
    errors: list[InputError] = field(default_factory=list)


def validate(records: Iterable[Record], should_stop: Callable[[], bool] = lambda: False,
             ) -> tuple[int, list[InputError], int]:
    """(valid count, first errors, bad count) over the whole input, holding nothing but the errors."""
    valid = bad = 0
    errors: list[InputError] = []
    for rec in records:
        if should_stop():
            raise KeyboardInterrupt  # nothing is enqueued before validation ends, so stopping is free
        if rec.error is None:
            valid += 1
        else:
            bad += 1
            if len(errors) < MAX_LISTED_ERRORS:
                errors.append(rec.error)
    return valid, errors, bad


def to_job(seq: int, rec: Record) -> NewJob:
    if rec.error is None:
        assert rec.job_id is not None
        return NewJob(rec.job_id, seq, rec.text, rec.metadata)
    # Invalid records kept as failed jobs get an id in a namespace valid ids can't use (reader.check_id).
    where = f"line{rec.line}" if rec.line else Path(rec.source).name
    meta = {"source": rec.source, "line": rec.line, "id": rec.job_id}
    return NewJob(f"{INVALID_ID_PREFIX}{where}", seq, "", meta, error=rec.error.reason)


def enqueue(
    store: JobStore,
    app: Celery,
    batch_id: str,
    records: Iterator[Record],
    model: str,
    max_words: int,
    skip_invalid: bool,
    on_chunk: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> SubmitReport:
    report = SubmitReport(batch_id)
    store.init_batch(batch_id, model, max_words)
    numbered = enumerate(records)
    while not should_stop() and (chunk := list(itertools.islice(numbered, CHUNK))):
        jobs = []
        for seq, rec in chunk:
            if rec.error is not None:
                report.invalid += 1
                if len(report.errors) < MAX_LISTED_ERRORS:
                    report.errors.append(rec.error)
                if not skip_invalid:
                    continue
            jobs.append(to_job(seq, rec))
        to_publish = store.create_jobs(batch_id, jobs, model, max_words)
        publish(app, store.settings, ((batch_id, job_id) for job_id in to_publish))
        report.records += len(chunk)
        report.enqueued += len(to_publish)
        report.skipped_existing += sum(1 for j in jobs if j.error is None) - len(to_publish)
        if on_chunk:
            on_chunk(len(chunk))
    report.interrupted = should_stop()
    return report


def check_or_raise(records: Iterable[Record], skip_invalid: bool,
                   should_stop: Callable[[], bool] = lambda: False) -> int:
    """Validate first; raise InvalidInput (so nothing is enqueued) unless the user chose --skip-invalid."""
    valid, errors, bad = validate(records, should_stop)
    if bad and not skip_invalid:
        raise InvalidInput(errors, bad)
    return valid + bad
