"""Job and batch state in Redis, producer and reader side. Every change is one Lua script of
contract/lua/ (the worker's own calls are in worker/storage.py): counters never drift from job
statuses, and a job delivered twice is stored and counted once."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
import redis

from . import scripts
from .checks import FLAGS
from .errors import BatchNotFound, ConfigError
from .job import COUNTERS, unfinished
from .keys import Keys
from .record import Article, Final, JobResult, pack, public_columns, public_row, text
from .schema import (
    ADMIT_REPLY,
    BATCH,
    CONTROL_REPLY,
    CREATE_REPLY,
    CREATED,
    INIT_REPLY,
    JOB,
    MESSAGE,
    NEW_JOB,
    PACK,
    REQUEUE_REPLY,
)
from .settings import Settings
from .spec import BatchSpec

T = TypeVar("T")
#: a message as published: (kombu priority step, member string of the orphans set)
Message = tuple[int, str]


def messages_of(rows: Iterable[Any]) -> list[Message]:
    """The messages of a script's reply (contract/schema.py MESSAGE records), read by name."""
    return [(int(m["step"]), text(m["member"])) for m in map(MESSAGE.read, rows)]


@dataclass(frozen=True)
class NewJob:
    """One record on its way into Redis: a valid article, or an invalid record kept as a failed job."""

    job_id: str
    article: Article
    metadata: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # set for invalid records kept as failed jobs (--skip-invalid)


@dataclass
class Created:
    """What create_jobs did with a chunk."""

    created: list[str] = field(default_factory=list)
    #: jobs already in the batch: (job, stored digest, stored origin)
    existing: list[tuple[NewJob, str, str]] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of up to `size` items (itertools.batched arrives in Python 3.12)."""
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


class JobStore:
    """Reads and producer-side writes. `client` must not decode responses (articles are compressed)."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.r = client
        self.settings = settings
        self.keys = Keys(settings.key_prefix, settings.queue)
        self._scripts = {name: client.register_script(scripts.load(name).source) for name in scripts.names()}
        #: batch id -> the generation init_batch made or resumed
        self._gens: dict[str, str] = {}

    def run(self, name: str, **params: Any) -> Any:
        keys, args = scripts.load(name).call(self.keys, **params)
        return self._scripts[name](keys=keys, args=args)

    # ---- producer side -------------------------------------------------------------------------

    def init_batch(self, batch_id: str, spec: BatchSpec, source: str) -> int:
        """Create the batch, or check a resume asks for the same spec; returns the source's index. The
        batch's generation is kept for create_jobs and submitting (see contract/lua/init_batch.lua)."""
        reply = INIT_REPLY.read(
            self.run(
                "init_batch",
                batch=batch_id,
                spec=spec.to_json(),
                step=spec.step,
                source=source,
                ttl=self.settings.result_ttl,
            )
        )
        self._gens[batch_id] = text(reply["gen"])
        before = BatchSpec.from_json(reply["spec"])
        if before != spec:
            diff = "; ".join(before.differences(spec))
            raise ConfigError(
                f"batch {batch_id!r} was submitted with another spec ({diff}): resume it with the "
                "same options, or submit under a new --batch-id"
            )
        return int(reply["index"])

    def admit(self, submit_id: str, jobs: int, step: int) -> tuple[bool, int, int]:
        """Ask for room for a chunk under SUMMARIZE_MAX_QUEUED: (let in, backlog, place in line)."""
        reply = ADMIT_REPLY.read(
            self.run("admit", submit=submit_id, jobs=jobs, max=self.settings.max_queued, step=step)
        )
        if int(reply["admitted"]) == 1:  # let in: the reply says nothing else
            return True, 0, 0
        return False, int(reply["backlog"]), int(reply["place"] or 0)

    def create_jobs(self, batch_id: str, jobs: Sequence[NewJob], admit: str = "") -> Created:
        """Store a chunk in one script call; returns what was created and the messages to publish."""
        out = Created()
        if not jobs:
            return out
        payload = [
            NEW_JOB.row(
                id=j.job_id,
                article=j.article.pack() if j.error is None else b"",
                metadata=json.dumps(j.metadata, ensure_ascii=False) if j.metadata else "",
                final=b"" if j.error is None else self.invalid_record(j),
            )
            for j in jobs
        ]
        try:
            reply = CREATE_REPLY.read(
                self.run(
                    "create",
                    batch=batch_id,
                    per_message=self.settings.jobs_per_message,
                    admit=admit,
                    jobs=pack(payload),
                    gen=self._gens.get(batch_id, ""),
                )
            )
        except redis.ResponseError as exc:
            if "NOBATCH" in str(exc):
                raise BatchNotFound(
                    batch_id, "it is gone (purged, or expired while this submit was stopped): submit again"
                ) from None
            raise
        for job, raw in zip(jobs, reply["results"], strict=True):
            row = CREATED.read(raw)
            if row["created"] == 1:
                out.created.append(job.job_id)
            else:
                out.existing.append((job, text(row["digest"]), text(row["origin"])))
        out.messages = messages_of(reply["messages"])
        return out

    def respec(self, batch_id: str, spec: BatchSpec) -> None:
        """Replace the batch's spec (retry with another model, fallback or prices); workers re-read it."""
        try:
            self.run("respec", batch=batch_id, spec=spec.to_json())
        except redis.ResponseError as exc:
            if "NOBATCH" in str(exc):
                raise BatchNotFound(batch_id) from None
            raise

    def submitting(self, batch_id: str, lease_s: float) -> None:
        """Hold (renew) the submit's lease on its batch for `lease_s` seconds; 0 gives it back (the batch may
        then be over). See contract/lua/submitting.lua."""
        self.run("submitting", batch=batch_id, gen=self._gens.get(batch_id, ""), lease_ms=int(lease_s * 1000))

    @staticmethod
    def invalid_record(job: NewJob) -> bytes:
        return Final("failed", job.article.digest, job.article.origin, error=job.error, error_type="InputError").pack()

    def lookup(self, batch_id: str, job_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """Digest and origin of those of `job_ids` the batch already has (for resume checks)."""
        if not job_ids:
            return {}
        with self.r.pipeline(transaction=False) as p:
            for job_id in job_ids:
                p.get(self.keys.text(batch_id, job_id))
            p.hmget(self.keys.batch_out(batch_id), list(job_ids))
            *blobs, finals = p.execute()
        found: dict[str, tuple[str, str]] = {}
        for job_id, blob, final in zip(job_ids, blobs, finals, strict=True):
            if blob:
                found[job_id] = Article.where(blob)
            elif final:
                found[job_id] = Final.where(final)
        return found

    def sources(self, batch_id: str) -> list[str]:
        return [text(s) for s in self.r.lrange(self.keys.sources(batch_id), 0, -1)]  # type: ignore[union-attr]

    def where(self, batch_id: str, origin: str) -> str:
        """`file:line` of an origin ('INDEX:LINE'), for messages that name both places of a conflict."""
        index, _, line = origin.partition(":")
        names = self.sources(batch_id)
        name = names[int(index)] if index.isdigit() and int(index) < len(names) else "?"
        return f"{name}:{line}" if line and line != "0" else name

    def control(
        self, batch_id: str, action: str, budget_usd: float | None = None, budget_tokens: int | None = None
    ) -> tuple[str, str]:
        """pause | resume | cancel | budget (caps only); returns the batch's (state, reason)."""
        try:
            reply = CONTROL_REPLY.read(
                self.run(
                    "control",
                    batch=batch_id,
                    action=action,
                    budget_usd="" if budget_usd is None else budget_usd,
                    budget_tokens="" if budget_tokens is None else budget_tokens,
                )
            )
        except redis.ResponseError as exc:
            if "NOBATCH" in str(exc):
                raise BatchNotFound(batch_id) from None
            raise
        return text(reply["state"]), text(reply["reason"])

    def unpark(self, batch_id: str) -> tuple[list[Message], int]:
        """Queue a resumed batch's parked jobs again, streaming the parked set."""
        per = self.settings.jobs_per_message
        return self._requeue(
            self.keys.parked(batch_id), lambda ids: self.run("unpark", batch=batch_id, per_message=per, ids=ids)
        )

    def _requeue(self, members: str, requeue: Callable[[bytes], Any], chunk: int = 500) -> tuple[list[Message], int]:
        """Requeue (unpark.lua, retry.lua: `requeue` calls one on packed ids) the ids of the set `members`,
        streamed a chunk at a time so a set of millions never sits in memory. SSCAN may return a member
        twice while the set shrinks under it; the scripts skip whatever is no longer theirs to requeue.
        Returns the messages to publish and how many jobs were requeued."""
        messages: list[Message] = []
        total = 0
        for ids in batched(self.r.sscan_iter(members, count=chunk), chunk):
            reply = REQUEUE_REPLY.read(requeue(pack([text(i) for i in ids])))
            messages += messages_of(reply["messages"])
            total += int(reply["count"])
        return messages, total

    def _id_pages(self, batch_id: str, start: int = 0, chunk: int = 1000) -> Iterator[list[bytes]]:
        """The batch's job ids in input order, a page at a time. The list only grows, so a position in it
        is a stable cursor: a batch extended while it is walked is neither skipped nor repeated."""
        ids_key = self.keys.batch_ids(batch_id)
        while True:
            raw: list[bytes] = self.r.lrange(ids_key, start, start + chunk - 1)  # type: ignore[assignment]
            if not raw:
                return
            yield raw
            start += len(raw)

    def cancel_waiting(self, batch_id: str) -> int:
        """End a cancelled batch's jobs that have not started, walking its ids a page at a time."""
        return sum(
            int(self.run("cancel", batch=batch_id, ids=pack([text(i) for i in raw])))
            for raw in self._id_pages(batch_id)
        )

    def purge(self, batch_id: str, force: bool = False) -> int:
        """Remove the batch and its jobs from Redis (results exported first). Refuses, naming a job, while
        one is unfinished, unless `force`. Returns how many jobs it removed."""
        left = unfinished(self.require_batch(batch_id))
        if left and not force:
            raise ConfigError(
                f"batch {batch_id!r} has {left} unfinished job(s): wait for it, cancel it, or purge with --force"
            )
        removed = sum(
            self._purge(batch_id, [text(i) for i in raw], force, last=False) for raw in self._id_pages(batch_id)
        )
        self._purge(batch_id, [], force, last=True)
        return removed

    def _purge(self, batch_id: str, ids: list[str], force: bool, last: bool) -> int:
        try:
            return int(
                self.run(
                    "purge",
                    batch=batch_id,
                    ids=pack(ids),
                    force="1" if force else "0",
                    last="1" if last else "0",
                    cache_ttl=self.settings.cache_ttl,
                )
            )
        except redis.ResponseError as exc:
            if "UNFINISHED" in str(exc):
                raise ConfigError(
                    f"batch {batch_id!r}: {str(exc).split('UNFINISHED', 1)[1].strip()}; purge with "
                    "--force to remove it anyway"
                ) from None
            raise

    def retry_flagged(self, batch_id: str, job_ids: list[str], chunk: int = 500) -> tuple[list[Message], int]:
        """Requeue the batch's done jobs among `job_ids` that the checks flagged (retry_flagged.lua); returns
        messages and count."""
        self.require_batch(batch_id)
        per, messages, total = self.settings.jobs_per_message, [], 0
        for ids in batched(job_ids, chunk):
            reply = REQUEUE_REPLY.read(
                self.run(
                    "retry_flagged",
                    batch=batch_id,
                    per_message=per,
                    ids=pack(list(ids)),
                    cache_ttl=self.settings.cache_ttl,
                )
            )
            messages += messages_of(reply["messages"])
            total += int(reply["count"])
        return messages, total

    def flagged_ids(self, batch_id: str, chunk: int = 1000) -> Iterator[str]:
        """The ids of the batch's done jobs some check flagged, in input order (their records read a page
        at a time, only the flags unpacked)."""
        for raw_ids in self._id_pages(batch_id, 0, chunk):
            finals: list[bytes | None] = self.r.hmget(self.keys.batch_out(batch_id), raw_ids)  # type: ignore[assignment]
            for raw_id, final in zip(raw_ids, finals, strict=True):
                if final is not None and Final.flags_of(final):
                    yield raw_id.decode("utf-8")

    def retry_failed(self, batch_id: str) -> tuple[list[Message], int]:
        """Requeue the batch's failed jobs, streaming the dead-letter set; returns messages and count."""
        self.require_batch(batch_id)
        per = self.settings.jobs_per_message
        return self._requeue(
            self.keys.dead(batch_id), lambda ids: self.run("retry", batch=batch_id, per_message=per, ids=ids)
        )

    # ---- reading -------------------------------------------------------------------------------

    def require_batch(self, batch_id: str) -> dict[str, str]:
        raw: dict[bytes, bytes] = self.r.hgetall(self.keys.batch(batch_id))  # type: ignore[assignment]
        if not raw:
            raise BatchNotFound(batch_id)
        h = {text(k): text(v) for k, v in raw.items()}
        if "spec" not in h:
            # Written by nothing of this version (ops for a batch that is gone write nothing): a hash left
            # over from an older one, or made by hand.
            raise BatchNotFound(batch_id, "its record in Redis has no spec (damaged); purge it with --force")
        return h

    def invariants(self, batch_id: str) -> list[str]:
        """What is wrong with the batch's state, checked atomically (contract/lua/invariants.lua): counters
        against job statuses, holds against live runs. Empty when all holds."""
        ids = [text(i) for i in self.r.lrange(self.keys.batch_ids(batch_id), 0, -1)]  # type: ignore[union-attr]
        return [text(v) for v in self.run("invariants", batch=batch_id, ids=pack(ids))]

    def spec(self, batch_id: str) -> BatchSpec:
        return BatchSpec.from_json(self.require_batch(batch_id)["spec"])

    def status(self, batch_id: str) -> dict[str, Any]:
        """Counters, state (running, paused, cancelled, halted, finished), tokens, cost, cache, budget."""
        h = self.require_batch(batch_id)
        out: dict[str, Any] = {name: int(h.get(name, 0)) for name in COUNTERS}
        spec = BatchSpec.from_json(h["spec"])
        out.update(
            batch=batch_id,
            model=spec.model,
            spec=json.loads(h["spec"]),
            state=h.get("state", "running"),
            reason=h.get("reason") or None,
            halted=h.get("halt") if h.get("state") == "halted" else None,
            prompt_tokens=int(h.get("prompt_tokens", 0)),
            completion_tokens=int(h.get("completion_tokens", 0)),
            calls=int(h.get("calls", 0)),
            unusable=int(h.get("unusable", 0)),
            cached=int(h.get("cached", 0)),
            # Unknown when a model's price is: null, never 0.
            cost_usd=round(float(h.get("cost_usd", 0)), 6) if spec.price(spec.model) is not None else None,
            budget_usd=float(h["budget_usd"]) if h.get("budget_usd") else None,
            budget_tokens=int(h["budget_tokens"]) if h.get("budget_tokens") else None,
            spent_usd=round(float(h.get("spent_usd", 0)), 6),
            spent_tokens=int(h.get("spent_tokens", 0)),
            # Held by calls in flight now, and counted at their bound for runs that died with calls in
            # flight (what the provider billed for those is unknown; the bound keeps the cap).
            held_usd=round(max(0.0, float(h.get("held_usd", 0))), 6),
            held_tokens=max(0, int(h.get("held_tokens", 0))),
            estimated_usd=round(max(0.0, float(h.get("est_usd", 0))), 6),
            estimated_tokens=max(0, int(h.get("est_tokens", 0))),
        )
        out["total_tokens"] = out["prompt_tokens"] + out["completion_tokens"]
        # The checks' flags on done answers (contract/checks.py), counted by settle.lua as they land.
        out["flagged"] = int(h.get(BATCH.flagged, 0))
        out["flags"] = {name: int(h.get(BATCH.fields[f"flag_{name}"], 0)) for name in FLAGS}
        # A submit still storing chunks holds the batch open (its lease: contract/lua/submitting.lua).
        out["submitting"] = "submitting" in h
        if unfinished(out) <= 0 and out["state"] == "running" and not out["submitting"]:
            out["state"] = "finished"
        if spec.mode == "batch":
            out["packs"] = self.packs(batch_id)
        return out

    def packs(self, batch_id: str) -> list[dict[str, Any]]:
        """Batch mode: each provider batch of the batch: pack id, provider batch id and status, request counts,
        what it holds of the budget, and the error that failed it (open packs, then the settled ones' log)."""
        journals: dict[str, dict[str, str]] = {}
        for raw in self.r.smembers(self.keys.packs(batch_id)):  # type: ignore[union-attr]
            info = {text(k): text(v) for k, v in self.r.hgetall(self.keys.pack(text(raw))).items()}  # type: ignore[union-attr]
            if info:
                journals[text(raw)] = info
        for pk, logged in self.r.hgetall(self.keys.packlog(batch_id)).items():  # type: ignore[union-attr]
            journals.setdefault(text(pk), json.loads(logged))
        out = [
            {
                "pack": pk,
                "provider_batch": info.get(PACK.provider_batch),
                "state": info.get(PACK.state),
                "status": info.get(PACK.status),
                "lines": int(info.get(PACK.lines, 0)),
                "request_counts": json.loads(info[PACK.counts]) if info.get(PACK.counts) else None,
                "errors": json.loads(info[PACK.errors]) if info.get(PACK.errors) else None,
                "error": info.get(PACK.error) or None,
                "held_usd": float(info.get(PACK.held_usd, 0)) if info.get(PACK.state) != "done" else 0.0,
                "held_tokens": int(info.get(PACK.held_tokens, 0)) if info.get(PACK.state) != "done" else 0,
            }
            for pk, info in journals.items()
        ]
        return sorted(out, key=lambda p: (str(p["state"]) == "done", str(p["pack"])))

    def results(self, batch_id: str, start: int = 0, chunk: int = 2000) -> Iterator[JobResult]:
        """Every job of the batch in input order (see rows)."""
        for row in self.rows(batch_id, start, chunk):
            yield JobResult.from_row(row)

    def rows(
        self, batch_id: str, start: int = 0, chunk: int = 2000, raw_metadata: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Every job of the batch in input order, as public row dicts, paged by a stable cursor (_id_pages).
        raw_metadata: each row's metadata as an orjson.Fragment of its stored JSON (for orjson to write
        out again without parsing it)."""
        structured = self.spec(batch_id).json_schema is not None
        for raw_ids in self._id_pages(batch_id, start, chunk):
            yield from self._rows(batch_id, raw_ids, structured, raw_metadata)

    def column_pages(self, batch_id: str, start: int = 0, chunk: int = 2000) -> Iterator[dict[str, list[Any]]]:
        """rows() as columns, a page at a time (contract/record.py public_columns): what a columnar
        writer (Parquet) takes without a dict a row."""
        structured = self.spec(batch_id).json_schema is not None
        for raw_ids in self._id_pages(batch_id, start, chunk):
            yield public_columns(raw_ids, *self._page(batch_id, raw_ids), structured)

    def follow(
        self, batch_id: str, after: str = "0-0", block_ms: int = 1000, stop_when_over: bool = True
    ) -> Iterator[tuple[str, JobResult]]:
        """(stream position, row) of each job as it finishes, in finishing order (see follow_pages)."""
        for page in self.follow_pages(batch_id, after, block_ms, stop_when_over):
            yield from page

    def follow_pages(
        self, batch_id: str, after: str = "0-0", block_ms: int = 1000, stop_when_over: bool = True
    ) -> Iterator[list[tuple[str, JobResult]]]:
        """Pages of (stream position, row) as jobs finish, from the batch's events stream after `after`.
        Ends once the batch is over and every event is read (or, with stop_when_over=False, once the
        events so far are read)."""
        structured = self.spec(batch_id).json_schema is not None
        events = self.keys.events(batch_id)
        while True:
            over = self._over(batch_id)  # before reading: a batch over now has written its last event
            block = None if over or not stop_when_over else block_ms
            # redis-py's XREAD reply: [(stream, entries)] for the one stream read, not a record of ours
            streams = self.r.xread({events: after}, count=1000, block=block)
            entries: list[tuple[bytes, dict[bytes, bytes]]] = streams[0][1] if streams else []  # type: ignore[index,assignment]
            if entries:
                rows = self._rows(batch_id, [fields[b"id"] for _, fields in entries], structured)
                yield [(text(position), JobResult.from_row(r)) for (position, _), r in zip(entries, rows, strict=True)]
                after = text(entries[-1][0])
            elif over or not stop_when_over:
                return

    def _over(self, batch_id: str) -> bool:
        return unfinished(self.require_batch(batch_id)) <= 0

    def _rows(
        self, batch_id: str, raw_ids: list[bytes], structured: bool = False, raw_metadata: bool = False
    ) -> Iterator[dict[str, Any]]:
        finals, metas, states = self._page(batch_id, raw_ids)
        for raw_id, final, meta in zip(raw_ids, finals, metas, strict=True):
            job_id = raw_id.decode("utf-8")
            metadata: Any = (orjson.Fragment(meta) if raw_metadata else orjson.loads(meta)) if meta else {}
            if final is not None:
                yield public_row(job_id, final, metadata, structured)
            else:
                yield JobResult(job_id, states.get(job_id, "missing"), None, None, None, None, 0, metadata).to_dict()

    def _page(
        self, batch_id: str, raw_ids: list[bytes]
    ) -> tuple[list[bytes | None], list[bytes | None], dict[str, str]]:
        """(final records, stored metadata, {id: status} of the unfinished ones) of a page of job ids."""
        with self.r.pipeline(transaction=False) as p:
            p.hmget(self.keys.batch_out(batch_id), raw_ids)
            p.hmget(self.keys.batch_meta(batch_id), raw_ids)
            finals: list[bytes | None]
            metas: list[bytes | None]
            finals, metas = p.execute()
        pending = [raw_ids[i] for i, f in enumerate(finals) if f is None]
        return finals, metas, self._unfinished_states(batch_id, pending) if pending else {}

    def _unfinished_states(self, batch_id: str, raw_ids: list[bytes]) -> dict[str, str]:
        with self.r.pipeline(transaction=False) as p:
            for raw_id in raw_ids:
                p.hget(self.keys.job(batch_id, text(raw_id)), JOB.status)
            states = p.execute()
        return {text(i): text(s) if s else "queued" for i, s in zip(raw_ids, states, strict=True)}

    def dead_letters(self, batch_id: str, limit: int = 10) -> list[dict[str, Any]]:
        """Up to `limit` of the batch's failed jobs with their errors, straight from the dead-letter set."""
        ids: list[bytes] = []
        for job_id in self.r.sscan_iter(self.keys.dead(batch_id), count=limit):
            ids.append(job_id)
            if len(ids) >= limit:
                break
        finals: list[bytes | None] = self.r.hmget(self.keys.batch_out(batch_id), ids) if ids else []  # type: ignore[assignment]
        out = []
        for job_id, final in zip(ids, finals, strict=True):
            f = Final.unpack(final) if final else Final("failed")
            out.append({"id": text(job_id), "error_type": f.error_type, "error": f.error})
        return out

    def failures(self, batch_id: str, chunk: int = 1000) -> dict[str, dict[str, Any]]:
        """Every failed job of the batch counted by error_type, with the first error text seen of each:
        {error_type: {"count": n, "error": text}}, most frequent first (the dead-letter set, read in pages)."""
        out: dict[str, dict[str, Any]] = {}
        for ids in batched(self.r.sscan_iter(self.keys.dead(batch_id), count=chunk), chunk):
            finals: list[bytes | None] = self.r.hmget(self.keys.batch_out(batch_id), ids)  # type: ignore[assignment]
            for final in finals:
                f = Final.unpack(final) if final else Final("failed")
                seen = out.setdefault(f.error_type or "unknown", {"count": 0, "error": f.error})
                seen["count"] += 1
        return dict(sorted(out.items(), key=lambda kv: -int(kv[1]["count"])))

    def batches(self, limit: int = 50, offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
        """(how many the index holds, a page of them newest first): each batch's state, counts, created and
        finished times (ms), cost, mode and priority. Reads only: the batches index and each batch's hash."""
        index = self.keys.batches
        total = int(self.r.zcard(index))  # type: ignore[arg-type]
        # Without scores: redis-py's parsing of them costs more than the hashes (the hash has `created`).
        page: list[bytes] = self.r.zrevrange(index, offset, offset + limit - 1)  # type: ignore[assignment]
        fields = ["spec", "state", "reason", "created", "finished", "submitting", "cost_usd", *COUNTERS]
        with self.r.pipeline(transaction=False) as p:
            for raw_id in page:
                p.hmget(self.keys.batch(text(raw_id)), fields)
            hashes: list[list[bytes | None]] = p.execute()
        out = []
        for raw_id, values in zip(page, hashes, strict=True):
            h = {k: text(v) for k, v in zip(fields, values, strict=True) if v is not None}
            if "spec" not in h:
                continue  # expired or purged since it was indexed (the reaper drops it from the index)
            spec = BatchSpec.from_json(h["spec"])
            row: dict[str, Any] = {"batch": text(raw_id)}
            row.update({name: int(h.get(name, 0)) for name in COUNTERS})
            state = h.get("state", "running")
            if unfinished(row) <= 0 and state == "running" and not h.get("submitting"):
                state = "finished"
            row.update(
                state=state,
                reason=h.get("reason") or None,
                created_ms=int(h.get("created") or 0),
                finished_ms=int(h["finished"]) if h.get("finished") else None,
                cost_usd=round(float(h.get("cost_usd", 0)), 6) if spec.price(spec.model) is not None else None,
                model=spec.model,
                mode=spec.mode,
                priority=spec.priority,
            )
            out.append(row)
        return total, out

    def existing_ids(self, batch_id: str) -> int:
        return int(self.r.llen(self.keys.batch_ids(batch_id)))  # type: ignore[arg-type]
