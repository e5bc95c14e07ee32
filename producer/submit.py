"""Bulk submit in two passes over the input: check everything, then store and publish in chunks.

Pass 1 counts, lists bad records, indexes ids (8 bytes each) and, when the batch already exists,
compares each id's text with what the batch has. By default nothing is enqueued if anything is wrong.
While the input is clean, pass 1 also hashes and compresses each article into a temporary file
(Prepared), so pass 2 of a clean input neither parses nor compresses again; otherwise pass 2 reads
the input again and resolves each record (Resolver). Pass 2 stores chunks of 500 jobs (one script
call each, which also groups them into messages) and publishes the messages, in a thread of its own
fed through a bounded queue. A job is stored (queued) before its message is published; a crash in
between leaves messages the reaper finds and publishes (see contract/lua/reap.lua). Resumable: ids
already in the batch with the same text are skipped.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import pickle
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from queue import Full, Queue
from typing import IO, Any

import redis

from contract.errors import InputError, InvalidInput
from contract.record import Article, compress_many, digest
from contract.redisconn import pinned, primary_address, primary_moved, wait_replicas
from contract.store import Created, JobStore, Message, NewJob, batched

from .reader import Record, id_hash

log = logging.getLogger(__name__)
CHUNK = 500
#: chunks read ahead of the one being stored
DEPTH = 2
#: records pass 2 reads from the input again before it takes the ones pass 1 prepared: a small input's
#: first job is not held back by compressing it all in pass 1 (its first request leaves as early as before)
PREPARE_AFTER = 10_000
#: seconds between two asks for room under SUMMARIZE_MAX_QUEUED
ROOM_POLL = 0.5
#: times a chunk is stored again when the primary was lost while waiting for a replica to have it
WAIT_RETRIES = 3
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
    #: chunks whose WAIT for SUMMARIZE_REDIS_WAIT_REPLICAS timed out (counted as stored anyway)
    wait_timeouts: int = 0
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
    #: the whole input hashed and compressed on the way (None: pass 2 reads the input again)
    prepared: Prepared | None = None

    @property
    def clean(self) -> bool:
        """Nothing for pass 2 to resolve: no bad record, no id twice, no text twice without an id."""
        return not (self.problems.count or self.repeated_ids or self.repeated_texts or self.conflicts)


#: one prepared record: (id, digest, place in its source, metadata, compressed text)
PreparedJob = tuple[str, str, str, dict[str, Any], bytes]


class Prepared:
    """Pass 1's by-product while the input is clean so far: each valid record hashed and its text compressed,
    written to an unnamed temporary file a chunk at a time (so memory stays flat), so that pass 2 of a clean
    input only stores and publishes: no second parse, validation, hashing or compression. A thread does the
    compression (zstd holds no GIL) and the writing while pass 1 goes on parsing. Nothing of it reaches Redis
    before pass 1 has seen the whole input; an input with anything to resolve drops it (pass 2 then reads the
    input again, as before)."""

    def __init__(self, start: int) -> None:
        #: how many records of the input come before the first prepared one
        self.start = start
        self.file: IO[bytes] | None = tempfile.TemporaryFile()  # noqa: SIM115 - closed by drop()
        self.pipe: Queue[list[Record] | None] = Queue(maxsize=DEPTH)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._write_all, name="submit-prepare", daemon=True)
        self.thread.start()

    @property
    def ok(self) -> bool:
        return self.file is not None and self.error is None

    def add(self, chunk: list[Record]) -> None:
        if self.ok:
            self.pipe.put(chunk)

    def _write_all(self) -> None:
        while (chunk := self.pipe.get()) is not None:
            if self.file is None or self.error is not None:
                continue  # dropped: only drain, so add() never blocks
            try:
                blobs = compress_many([r.text for r in chunk])
                rows = [
                    (r.job_id or "", digest(r.text), r.place or str(r.line), r.metadata, blob)
                    for r, blob in zip(chunk, blobs, strict=True)
                ]
                pickle.dump(rows, self.file, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:  # a full disk: pass 2 reads the input again, as without this
                self.error = exc

    def finish(self) -> bool:
        """Wait for the last chunk; True when every chunk was written."""
        self.pipe.put(None)
        self.thread.join()
        if not self.ok or self.file is None:
            return False
        self.file.seek(0)
        return True

    def chunks(self) -> Iterator[list[PreparedJob]]:
        assert self.file is not None
        while True:
            try:
                rows: list[PreparedJob] = pickle.load(self.file)  # our own file, written by this process
            except EOFError:
                return
            yield rows

    def drop(self) -> None:
        if self.thread.is_alive():
            self.file, f = None, self.file
            self.pipe.put(None)
            self.thread.join()
        else:
            f, self.file = self.file, None
        if f is not None:
            f.close()


class Checker:
    """Pass 1 over the input."""

    def __init__(self, store: JobStore, batch_id: str, resuming: bool, prepare_after: int = PREPARE_AFTER) -> None:
        self.store, self.batch_id, self.resuming = store, batch_id, resuming
        self.prepare_after = prepare_after

    def check(self, records: Iterable[Record], should_stop: Callable[[], bool]) -> Checked:
        from .reader import IdIndex

        out = Checked()
        given, derived = IdIndex(), IdIndex()
        prepared: Prepared | None = None
        try:
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
                prepared = self._prepare(prepared, chunk, out)
            out.repeated_ids, out.repeated_texts = given.repeated(), derived.repeated()
            if prepared is not None and out.clean and prepared.finish():
                out.prepared = prepared
            elif prepared is not None:
                prepared.drop()
        except BaseException:
            if prepared is not None:
                prepared.drop()
            raise
        return out

    def _prepare(self, prepared: Prepared | None, chunk: list[Record], out: Checked) -> Prepared | None:
        """A clean chunk from record `prepare_after` on goes to the prepared file; the first problem drops it."""
        if out.problems.count:
            if prepared is not None:
                prepared.drop()  # pass 2 resolves records from the input itself
            return prepared
        if prepared is None and out.records - len(chunk) >= self.prepare_after:
            prepared = Prepared(out.records - len(chunk))
        if prepared is not None:
            prepared.add(chunk)
        return prepared

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


@dataclass(frozen=True)
class PackedArticle(Article):
    """An article packed ahead (its chunk's texts compressed in one call): create_jobs stores `blob` as is.
    Its text is dropped once compressed, so a chunk in the pipeline holds each article once."""

    blob: bytes = b""

    @classmethod
    def of(cls, digest: str, origin: str, compressed: bytes) -> PackedArticle:
        """The article of `digest` at `origin` whose text is `compressed` (compress_many's output)."""
        return cls(digest, origin, "", Article(digest, origin, "").pack_compressed(compressed))

    def pack(self) -> bytes:
        return self.blob


def packed(jobs: list[NewJob]) -> list[NewJob]:
    """The chunk's valid articles compressed together (zstd holds no GIL meanwhile), each packed ahead."""
    valid = [j for j in jobs if j.error is None and not isinstance(j.article, PackedArticle)]
    blobs = iter(compress_many([j.article.text for j in valid]))
    out = []
    for j in jobs:
        if j.error is None and not isinstance(j.article, PackedArticle):
            a = j.article
            j = NewJob(j.job_id, PackedArticle.of(a.digest, a.origin, next(blobs)), j.metadata)
        out.append(j)
    return out


@dataclass
class Chunk:
    """A chunk of records on its way from the reading thread to the storing one."""

    records: int
    jobs: list[NewJob]
    #: bad records the resolver found in it (listed before what storing it finds, as the input has them)
    problems: list[InputError]


@dataclass
class Pipeline:
    """The storing thread's side of the hand-over: at most DEPTH chunks wait, so memory stays flat."""

    queue: Queue[Chunk | None] = field(default_factory=lambda: Queue(maxsize=DEPTH))
    #: set by the reader (Ctrl-C, an error) or the storer (stopped, waiting for room stopped): no more chunks
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    interrupted: bool = False


@dataclass
class Enqueuer:
    """Pass 2: store and publish chunk by chunk.

    Two threads: this one reads, resolves and hashes records into chunks; a storing thread compresses each
    chunk (zstd, no GIL), stores it (one create.lua call: Redis works, no GIL) and publishes its messages,
    in input order. While one thread waits on zstd or Redis the other runs, and a bounded queue between
    them keeps memory flat. Each chunk is stored whole or not at all (create.lua), so a submit stopped or
    killed anywhere is resumed as before."""

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
        prepared = resolver.checked.prepared
        try:
            size = min(CHUNK, self.store.settings.max_queued) or CHUNK
            if prepared is not None:  # a clean input, hashed and compressed by pass 1 after its start
                return self._run(self._from_both(records, resolver, prepared, size))
            return self._run(self._from_records(records, resolver, size))
        finally:
            # Given back however the submit ends: the batch may be over now (an interrupted submit
            # that is resumed takes a new lease). With Redis unreachable the lease lapses by itself.
            with contextlib.suppress(redis.RedisError):
                self.store.submitting(self.batch_id, 0)
            if prepared is not None:
                prepared.drop()

    def _from_records(self, records: Iterator[Record], resolver: Resolver, size: int) -> Iterator[Chunk]:
        for chunk in batched(records, size):
            jobs, problems = [], []
            for rec in map(resolver.resolve, chunk):
                if rec.error is not None:
                    problems.append(rec.error)
                    if not self.skip_invalid:
                        continue
                jobs.append(to_job(rec, self.source_index))
            yield Chunk(len(chunk), jobs, problems)

    def _from_both(
        self, records: Iterator[Record], resolver: Resolver, prepared: Prepared, size: int
    ) -> Iterator[Chunk]:
        """The input's first records read again, then the prepared rest (the input is read no further)."""
        yield from self._from_records(itertools.islice(records, prepared.start), resolver, size)
        close = getattr(records, "close", None)
        if close is not None:
            close()  # a generator over the input file: the file is closed now
        yield from self._from_prepared(prepared, size)

    def _from_prepared(self, prepared: Prepared, size: int) -> Iterator[Chunk]:
        def jobs() -> Iterator[NewJob]:
            for rows in prepared.chunks():
                for job_id, dg, place, metadata, blob in rows:
                    yield NewJob(job_id, PackedArticle.of(dg, f"{self.source_index}:{place}", blob), metadata)

        for chunk in batched(jobs(), size):
            yield Chunk(len(chunk), chunk, [])

    def _run(self, chunks: Iterator[Chunk]) -> SubmitReport:
        report = SubmitReport(self.batch_id)
        bound = self.store.settings.max_queued
        pipe = Pipeline()
        storer = threading.Thread(
            target=self._store_all, args=(pipe, report, bound), name=f"submit-{self.batch_id}", daemon=True
        )
        storer.start()
        try:
            for chunk in chunks:
                if pipe.stop.is_set():
                    break
                if self.should_stop():
                    pipe.interrupted = True
                    break
                self._hand_over(pipe, chunk)
        except BaseException:
            pipe.stop.set()  # the chunk being stored is finished (stored and published whole), no more
            raise
        finally:
            self._hand_over(pipe, None, wait=True)
            storer.join()
        if pipe.error is not None:
            raise pipe.error
        report.interrupted = pipe.interrupted
        return report

    @staticmethod
    def _hand_over(pipe: Pipeline, item: Chunk | None, wait: bool = False) -> None:
        """Queue a chunk, unless the storer has stopped (it takes nothing more: a full queue would block)."""
        while True:
            if pipe.stop.is_set() and not wait:
                return
            try:
                pipe.queue.put(item, timeout=0.1)
                return
            except Full:
                continue

    def _store_all(self, pipe: Pipeline, report: SubmitReport, bound: int) -> None:
        """The storing thread: each chunk in order until the reader's end mark; after a stop or an error it
        only drains the queue (so the reader never blocks on it)."""
        submit_id = uuid.uuid4().hex
        lease = self.store.settings.submit_lease
        renewed = time.monotonic()
        store = self._durable_store()
        try:
            self._store_chunks(pipe, report, bound, store, submit_id, lease, renewed)
        finally:
            if store is not self.store:
                store.r.close()  # gives the pinned connection back to the pool

    def _durable_store(self) -> JobStore:
        """With SUMMARIZE_REDIS_WAIT_REPLICAS, the store on one pinned connection: WAIT counts the writes of the
        connection it is sent on, so each chunk's WAIT must follow it there."""
        if not self.store.settings.wait_replicas:
            return self.store
        store = JobStore(pinned(self.store.r), self.store.settings)
        store._gens = self.store._gens  # the batch's generation, known from init_batch
        return store

    def _create_durably(self, store: JobStore, report: SubmitReport, jobs: list[NewJob], admit: str) -> Created:
        """create_jobs, then (with SUMMARIZE_REDIS_WAIT_REPLICAS) WAIT before its messages are published: a
        chunk counts as stored once its writes reached the replicas, or the wait timed out. A primary lost
        during the WAIT may have taken the chunk with it: the chunk is stored again (on the primary the
        retry reaches; create.lua skips what is already there), and the jobs of both tries count."""
        before = primary_address(store.r)
        created = store.create_jobs(self.batch_id, jobs, admit=admit)
        for attempt in range(1, WAIT_RETRIES + 1):
            try:
                if self._wait_for_replicas(store, report, before):
                    return created
                exc: Exception = redis.ConnectionError("the primary moved while the chunk waited for a replica")
            except (redis.ConnectionError, redis.TimeoutError) as lost:
                exc = lost
            if attempt == WAIT_RETRIES:
                raise exc
            log.warning(
                "batch %s: primary lost before a replica had the chunk (%s); storing it again", self.batch_id, exc
            )
            before = primary_address(store.r)
            again = store.create_jobs(self.batch_id, jobs, admit=admit)
            first = set(created.created)
            again.created = created.created + [j for j in again.created if j not in first]
            again.existing = [e for e in again.existing if e[0].job_id not in first]
            created = again
        return created

    def _wait_for_replicas(self, store: JobStore, report: SubmitReport, before: Any = None) -> bool:
        """A chunk counts as stored once its writes reached the replicas (or the wait timed out); False when
        the wait fell short because the primary moved (the chunk went to a demoted one: store it again)."""
        settings = store.settings
        if not settings.wait_replicas:
            return True
        reached = wait_replicas(store.r, settings.wait_replicas, int(settings.redis_wait_timeout * 1000))
        if reached < settings.wait_replicas and primary_moved(store.r, before):
            return False
        if reached < settings.wait_replicas:
            report.wait_timeouts += 1
            log.warning(
                "batch %s: a chunk reached %d of %d replica(s) within %gs; counted as stored",
                self.batch_id,
                reached,
                settings.wait_replicas,
                settings.redis_wait_timeout,
            )
        return True

    def _store_chunks(
        self,
        pipe: Pipeline,
        report: SubmitReport,
        bound: int,
        store: JobStore,
        submit_id: str,
        lease: float,
        renewed: float,
    ) -> None:
        while (item := pipe.queue.get()) is not None:
            if pipe.stop.is_set():
                continue
            try:
                if self.should_stop() or (bound and not self._wait_for_room(submit_id, item.records, pipe.stop)):
                    pipe.interrupted = True
                    pipe.stop.set()
                    continue
                for error in item.problems:
                    report.problems.add(error)
                jobs = packed(item.jobs)
                created = self._create_durably(store, report, jobs, admit=submit_id if bound else "")
                self.publish(created.messages)
                # The lease outlives many chunks: renewed every quarter of it, not every chunk.
                if time.monotonic() - renewed > lease / 4:
                    store.submitting(self.batch_id, lease)
                    renewed = time.monotonic()
                self._account(report, jobs, created.created, created.existing)
                report.records += item.records
                if self.on_chunk:
                    self.on_chunk(item.records)
            except BaseException as exc:  # handed to the reading thread, which raises it
                pipe.error = exc
                pipe.stop.set()

    def _wait_for_room(self, submit_id: str, jobs: int, ended: threading.Event) -> bool:
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
                if self.should_stop() or ended.is_set():  # stopped, or the reading thread failed
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
