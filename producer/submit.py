"""Bulk submit in two passes over the input: check everything, then store and publish in chunks.

Pass 1 counts, lists bad records, indexes ids (8 bytes each) and, when the batch already exists,
compares each id's text with what the batch has. By default nothing is enqueued if anything is wrong.
Pass 2 stores chunks of 500 jobs (one script call each, which also groups them into messages) and
publishes the messages. A job is stored (queued) before its message is published; a crash in between
leaves messages the reaper finds and publishes (see contract/lua/reap.lua). Resumable: ids already
in the batch with the same text are skipped.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import redis

from contract.errors import InputError, InvalidInput
from contract.record import Article, digest
from contract.store import JobStore, Message, NewJob, batched

from .reader import Record, id_hash

CHUNK = 500
#: seconds between two asks for room under SUMMARIZE_MAX_QUEUED
ROOM_POLL = 0.5
#: how many bad records an error message lists before it only counts them
MAX_LISTED_ERRORS = 100


@dataclass
class Problems:
    """Bad records: all counted, the first MAX_LISTED_ERRORS kept to show."""

    listed: list[InputError] = field(default_factory=list)
    count: int = 0

    def add(self, error: InputError) -> None:
        self.count += 1
        if len(self.listed) < MAX_LISTED_ERRORS:
            self.listed.append(error)


@dataclass
class SubmitReport:
    batch_id: str
    records: int = 0
    enqueued: int = 0
    skipped_existing: int = 0
    interrupted: bool = False
    problems: Problems = field(default_factory=Problems)

    @property
    def invalid(self) -> int:
        return self.problems.count

    @property
    def errors(self) -> list[InputError]:
        return self.problems.listed


@dataclass
class Checked:
    """What pass 1 found."""

    records: int = 0
    problems: Problems = field(default_factory=Problems)
    #: hashes of ids a record brought more than once (the second and later are errors)
    repeated_ids: set[int] = field(default_factory=set)
    #: hashes of ids derived from a text seen more than once (each gets its own id: '-2', '-3'...)
    repeated_texts: set[int] = field(default_factory=set)
    #: id hash -> why the batch refuses it (an id it already has with another text)
    conflicts: dict[int, str] = field(default_factory=dict)


class Checker:
    """Pass 1 over the input."""

    def __init__(self, store: JobStore, batch_id: str, resuming: bool) -> None:
        self.store, self.batch_id, self.resuming = store, batch_id, resuming

    def check(self, records: Iterable[Record], should_stop: Callable[[], bool]) -> Checked:
        from .reader import IdIndex

        out = Checked()
        given, derived = IdIndex(), IdIndex()
        for chunk in batched(records, CHUNK):
            if should_stop():
                raise KeyboardInterrupt  # nothing is enqueued before this pass ends, so stopping is free
            for rec in chunk:
                out.records += 1
                if rec.error is not None:
                    out.problems.add(rec.error)
                elif rec.job_id is not None:
                    (derived if rec.derived else given).add(rec.job_id)
            if self.resuming:
                self._compare(chunk, out)
        out.repeated_ids, out.repeated_texts = given.repeated(), derived.repeated()
        return out

    def _compare(self, chunk: list[Record], out: Checked) -> None:
        """Ids the batch already has must come with the same text (then they are a resume)."""
        mine = [r for r in chunk if r.error is None and not r.derived and r.job_id is not None]
        stored = self.store.lookup(self.batch_id, [r.job_id for r in mine if r.job_id is not None])
        for rec in mine:
            assert rec.job_id is not None
            before = stored.get(rec.job_id)
            if before is not None and before[0] != digest(rec.text):
                reason = (
                    f"id {rec.job_id!r} is already in batch {self.batch_id} with a different text "
                    f"(from {self.store.where(self.batch_id, before[1])}); give this record another id"
                )
                out.conflicts[id_hash(rec.job_id)] = reason
                out.problems.add(InputError(rec.source, rec.line, rec.job_id, reason))


def note_repeated(records: Iterable[Record], checked: Checked) -> None:
    """A third, short pass only when ids repeat: name each repeat and the line it was first seen on."""
    first: dict[str, int] = {}
    for rec in records:
        if (
            rec.error is None
            and not rec.derived
            and rec.job_id is not None
            and id_hash(rec.job_id) in checked.repeated_ids
        ):
            if rec.job_id in first:
                checked.problems.add(
                    InputError(
                        rec.source,
                        rec.line,
                        rec.job_id,
                        f"duplicate id {rec.job_id!r}: first seen at line {first[rec.job_id]}",
                    )
                )
            else:
                first[rec.job_id] = rec.line


def raise_if_invalid(checked: Checked, skip_invalid: bool) -> None:
    """Validate first: raise InvalidInput (so nothing is enqueued) unless the user chose --skip-invalid."""
    if checked.problems.count and not skip_invalid:
        raise InvalidInput(checked.problems.listed, checked.problems.count)


class Resolver:
    """Pass 2's view of each record: the id it is stored under, or the error it is kept with."""

    def __init__(self, checked: Checked) -> None:
        self.checked = checked
        self.first_line: dict[str, int] = {}
        self.text_counts: dict[str, int] = {}

    def resolve(self, rec: Record) -> Record:
        if rec.error is not None or rec.job_id is None:
            return rec
        h = id_hash(rec.job_id)
        if rec.derived:
            if h in self.checked.repeated_texts:
                n = self.text_counts[rec.job_id] = self.text_counts.get(rec.job_id, 0) + 1
                if n > 1:  # the same text again: a row of its own, with an id that is the same on resume
                    return Record(
                        rec.source, rec.line, f"{rec.job_id}-{n}", rec.text, rec.metadata, None, True, rec.place
                    )
            return rec
        if h in self.checked.conflicts:
            return Record.invalid(rec.source, rec.line, rec.job_id, self.checked.conflicts[h], rec.place)
        if h in self.checked.repeated_ids:
            first = self.first_line.setdefault(rec.job_id, rec.line)
            if first != rec.line:
                return Record.invalid(
                    rec.source,
                    rec.line,
                    rec.job_id,
                    f"duplicate id {rec.job_id!r}: first seen at line {first}",
                    rec.place,
                )
        return rec


def to_job(rec: Record, source_index: int) -> NewJob:
    origin = f"{source_index}:{rec.place or rec.line}"
    if rec.error is None:
        assert rec.job_id is not None
        return NewJob(rec.job_id, Article(digest(rec.text), origin, rec.text), rec.metadata)
    # Invalid records kept as failed jobs get an id in a namespace valid ids can't use (reader.check_id).
    meta = {"source": rec.source, "line": rec.line, "id": rec.job_id}
    return NewJob(rec.invalid_id, Article("", origin, ""), meta, error=rec.error.reason)


@dataclass
class Enqueuer:
    """Pass 2: store and publish chunk by chunk."""

    store: JobStore
    #: publishes the messages a chunk's script grouped (contract.messaging.publish, bound to the broker)
    publish: Callable[[list[Message]], None]
    batch_id: str
    source_index: int
    skip_invalid: bool
    on_chunk: Callable[[int], None] | None = None
    should_stop: Callable[[], bool] = lambda: False
    #: the batch's priority step: waiting for room, higher priorities go first
    step: int = 3
    #: told how long the line is while it waits for room (the progress line says so)
    on_wait: Callable[[str], None] | None = None

    def run(self, records: Iterator[Record], resolver: Resolver) -> SubmitReport:
        lease = self.store.settings.submit_lease
        self.store.submitting(self.batch_id, lease)
        try:
            return self._run(records, resolver)
        finally:
            # Given back however the submit ends: the batch may be over now (an interrupted submit
            # that is resumed takes a new lease). With Redis unreachable the lease lapses by itself.
            with contextlib.suppress(redis.RedisError):
                self.store.submitting(self.batch_id, 0)

    def _run(self, records: Iterator[Record], resolver: Resolver) -> SubmitReport:
        report = SubmitReport(self.batch_id)
        bound = self.store.settings.max_queued
        submit_id = uuid.uuid4().hex
        lease = self.store.settings.submit_lease
        for chunk in batched(records, min(CHUNK, bound) if bound else CHUNK):
            if self.should_stop() or (bound and not self._wait_for_room(submit_id, len(chunk))):
                report.interrupted = True
                break
            jobs = []
            for rec in map(resolver.resolve, chunk):
                if rec.error is not None:
                    report.problems.add(rec.error)
                    if not self.skip_invalid:
                        continue
                jobs.append(to_job(rec, self.source_index))
            created = self.store.create_jobs(self.batch_id, jobs, admit=submit_id if bound else "")
            self.publish(created.messages)
            self.store.submitting(self.batch_id, lease)
            self._account(report, jobs, created.created, created.existing)
            report.records += len(chunk)
            if self.on_chunk:
                self.on_chunk(len(chunk))
        return report

    def _wait_for_room(self, submit_id: str, jobs: int) -> bool:
        """Block until SUMMARIZE_MAX_QUEUED lets this chunk in; False when the submit is stopped meanwhile."""
        waited = False
        while True:
            ok, backlog, place = self.store.admit(submit_id, jobs, self.step)
            if ok:
                if waited and self.on_wait:
                    self.on_wait("")
                return True
            if self.on_wait:
                self.on_wait(
                    f"waiting for room: {backlog} unfinished of SUMMARIZE_MAX_QUEUED "
                    f"{self.store.settings.max_queued}" + (f", {place} submit(s) ahead" if place else "")
                )
            waited = True
            self.store.submitting(self.batch_id, self.store.settings.submit_lease)
            for _ in range(5):  # a stop is seen within a tenth of a second
                if self.should_stop():
                    return False
                time.sleep(ROOM_POLL / 5)

    def _account(
        self, report: SubmitReport, jobs: list[NewJob], created: list[str], existing: list[tuple[NewJob, str, str]]
    ) -> None:
        new = set(created)
        report.enqueued += sum(1 for j in jobs if j.error is None and j.job_id in new)
        for job, stored_digest, origin in existing:
            if job.error is not None or stored_digest == job.article.digest:
                report.skipped_existing += 1
            else:  # stored by a concurrent submit between the passes
                reason = (
                    f"id {job.job_id!r} is already in batch {self.batch_id} with a different text "
                    f"(from {self.store.where(self.batch_id, origin)})"
                )
                report.problems.add(
                    InputError(self.store.where(self.batch_id, job.article.origin), 0, job.job_id, reason)
                )
