"""Batch mode: a batch's jobs go to the provider's Batch API (half the price, within 24 hours) in packs,
on the same job state, counters, cache, budget and results as the online path.

A pack is one provider batch. Its life, journaled in Redis before each external step (contract/lua/
pack_take.lua, pack_state.lua), so that a worker killed at any point leaves it for another to carry on:

    new --build, upload--> uploaded --create--> created --poll...--> fetching --settle--> done

The step that could pay twice is create: a worker killed after the provider created the batch but
before it was recorded. So `creating` is journaled first, and a pack found in it is looked up in the
provider's batch list by the metadata naming it before anything is created. Jobs move into a pack
atomically and leave it only once its results are settled: a request is never in two provider
batches at once. Lines that failed, came back unusable or never ran go into a later pack (or online
after a few tries), within the usual bounds.

These run as Celery tasks (summarize.pack, summarize.poll, summarize.fetch: Flower shows them), in
worker threads: synchronous code, a synchronous openai client.
"""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import openai
from celery import Celery
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from contract.errors import MalformedResponse, PermanentLLMError, UnusableAnswers
from contract.job import ClaimedJob
from contract.messaging import FETCH_TASK, publish
from contract.models import known_context
from contract.openai_shapes import BATCH_CANCELLED, BATCH_EXPIRED, TERMINAL_BATCH_STATUSES, batch_request_line
from contract.record import Article, Final, pack, text
from contract.redisconn import make_redis
from contract.settings import Settings
from contract.spec import BatchSpec
from contract.store import JobStore, batched

from . import llm, metrics
from .batches import cache_key, fingerprint
from .prompt import WHOLE as _WHOLE
from .ratelimit import token_counter
from .storage import Op, pack_lease_ms
from .summarize import CONTEXT_MARGIN, request

log = logging.getLogger(__name__)

#: metadata key naming our pack in the provider's batch (how a crashed create is found again)
PACK_METADATA = "summarize_pack"
#: failed lines of a job before it is tried online instead
MAX_PACK_TRIES = 3
#: how far back the provider's batch list is searched for a pack created by a worker that died
LIST_PAGES = 20
T = TypeVar("T")


@dataclass
class Outcomes:
    """A pack's results turned into settle.lua ops."""

    ops: list[Op] = field(default_factory=list)
    done: int = 0
    retried: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


class Packs:
    """One per worker process, shared by its task threads."""

    def __init__(self, settings: Settings, app: Celery) -> None:
        self.settings, self.app = settings, app
        self.store = JobStore(make_redis(settings, decode=False), settings)
        self.keys = self.store.keys
        self.client = openai.OpenAI(
            base_url=settings.openai_base_url,
            api_key=settings.openai_api_key,
            max_retries=0,
            timeout=max(60.0, settings.llm_timeout),
        )
        self.count_tokens = token_counter(settings)

    # ---- pack: jobs -> provider batches ----------------------------------------------------------------

    def pack(self, batch_id: str) -> int:
        """Open packs of the batch's waiting jobs and send them; returns how many provider batches it made."""
        made = 0
        while self._room() > 0:
            pack_id = f"{batch_id}.{uuid.uuid4().hex[:10]}"
            ids = self.store.run(
                "pack_take",
                batch=batch_id,
                pack=pack_id,
                max=self.settings.batch_max_requests,
                lease_ms=pack_lease_ms(self.settings),
            )
            if not ids:
                break
            metrics.PACKS.labels("new").inc()
            made += self.advance(pack_id) in ("created", "done")
        return made

    def _room(self) -> float:
        limit = self.settings.batch_enqueued_tokens
        if not limit:
            return float("inf")
        return limit - int(self.store.r.get(self.keys.packs_tokens) or 0)

    def advance(self, pack_id: str) -> str:
        """Move the pack on from whatever state it is in (a worker may have died in any)."""
        state = self._state(pack_id)
        if state == "new":
            state = self._upload(pack_id)
        if state in ("uploaded", "creating"):
            state = self._create(pack_id, state)
        if state == "created":
            state = self._poll(pack_id)
        if state == "fetching":
            self.app.send_task(FETCH_TASK, args=(pack_id,), queue=self.settings.queue)
        return state

    def _state(self, pack_id: str) -> str:
        return text(self.store.r.hget(self.keys.pack(pack_id), "state") or b"gone")

    def _info(self, pack_id: str) -> dict[str, str]:
        raw: dict[bytes, bytes] = self.store.r.hgetall(self.keys.pack(pack_id))  # type: ignore[assignment]
        return {text(k): text(v) for k, v in raw.items()}

    def _move(self, pack_id: str, frm: str, to: str, due_s: float, tokens: int = 0, **fields: Any) -> bool:
        moved = bool(
            self.store.run(
                "pack_state",
                pack=pack_id,
                expect=frm,
                to=to,
                due_ms=-1 if due_s < 0 else int(due_s * 1000),
                fields=pack(fields),
                tokens=tokens,
            )
        )
        if moved:
            metrics.PACKS.labels(to).inc()
        return moved

    def _jobs(self, pack_id: str) -> list[str]:
        return [text(i) for i in self.store.r.lrange(self.keys.pack_jobs(pack_id), 0, -1)]  # type: ignore[union-attr]

    # ---- build and upload ------------------------------------------------------------------------------

    def _upload(self, pack_id: str) -> str:
        info = self._info(pack_id)
        batch_id = info["batch"]
        spec = self.store.spec(batch_id)
        lines, tokens, sent, leftover = self._lines(batch_id, pack_id, spec, self._jobs(pack_id))
        if leftover:
            self._settle([self._repack(batch_id, job_id, pack_id, online, "", "") for job_id, online in leftover])
        if not lines:
            self._move(pack_id, "new", "done", -1)
            return "done"
        held = self._hold(batch_id, pack_id, spec, tokens)
        if held is None:  # the budget stops here: every line waits, failed by nothing
            self._settle([self._repack(batch_id, j, pack_id, False, "", "") for j in sent])
            self._move(pack_id, "new", "done", -1)
            return "done"
        body = b"".join(json.dumps(line, ensure_ascii=False).encode("utf-8") + b"\n" for line in lines)
        uploaded = self._call(
            lambda: self.client.files.create(file=(f"{pack_id}.jsonl", io.BytesIO(body)), purpose="batch")
        )
        self._move(
            pack_id,
            "new",
            "uploaded",
            0,
            file_id=uploaded.id,
            lines=len(lines),
            tokens=tokens,
            bytes=len(body),
            held_usd=held[0],
            held_tokens=held[1],
        )
        return "uploaded"

    def _lines(
        self, batch_id: str, pack_id: str, spec: BatchSpec, ids: list[str]
    ) -> tuple[list[dict[str, Any]], int, list[str], list[tuple[str, bool]]]:
        """The pack's request lines within the provider's limits: (lines, tokens, job ids sent, left over
        (job id, online?)). Identical articles share one line; an article too long for one request goes
        online (where it is split and combined)."""
        context = self.settings.context_tokens or known_context(spec.model) or 0
        lines: list[dict[str, Any]] = []
        sent: list[str] = []
        leftover: list[tuple[str, bool]] = []
        twins: dict[str, str] = {}
        by_digest: dict[str, str] = {}
        size = tokens = 0
        room = self._room()
        blobs: list[bytes | None] = self.store.r.mget([self.keys.text(batch_id, j) for j in ids]) if ids else []  # type: ignore[assignment]
        for job_id, blob in zip(ids, blobs, strict=True):
            if blob is None:
                continue
            article = Article.unpack(blob)
            if not spec.no_cache and article.digest in by_digest:
                twins[job_id] = by_digest[article.digest]
                continue
            ask = request(article.text, spec, _WHOLE, self.settings.max_summary_chars)
            need = self.count_tokens(ask.messages, ask.max_tokens)
            line = batch_request_line(job_id, ask.body(ask.max_tokens))
            n = len(json.dumps(line, ensure_ascii=False).encode("utf-8")) + 1
            if context and need > context * CONTEXT_MARGIN:
                leftover.append((job_id, True))
            elif size + n > self.settings.batch_max_bytes or tokens + need > room:
                leftover.append((job_id, False))
            else:
                lines.append(line)
                sent.append(job_id)
                by_digest[article.digest] = job_id
                size, tokens = size + n, tokens + need
        if twins:  # journaled before the upload: a worker resuming the pack sees the same twins
            self.store.r.hset(self.keys.pack_twins(pack_id), mapping=twins)  # type: ignore[arg-type]
        return lines, tokens, sent, leftover

    def _hold(self, batch_id: str, pack_id: str, spec: BatchSpec, tokens: int) -> tuple[float, int] | None:
        """The pack's worst case held against the batch's budget, if it has one (None: over it)."""
        h = self.store.require_batch(batch_id)
        if not (h.get("budget_usd") or h.get("budget_tokens")):
            return 0.0, 0
        price = spec.price(spec.model)
        usd = price.cost(tokens, 0) * self.settings.batch_discount if price else 0.0
        if not self.store.run("pack_hold", batch=batch_id, pack=pack_id, usd=usd, tokens=tokens):
            return None
        return usd, tokens

    # ---- create, without ever twice -------------------------------------------------------------------

    def _create(self, pack_id: str, state: str) -> str:
        if state == "uploaded" and not self._move(pack_id, "uploaded", "creating", pack_lease_ms(self.settings) / 1000):
            return self._state(pack_id)
        info = self._info(pack_id)
        found = self._find(pack_id)  # a worker may have died between the provider's create and our record
        if found is None:
            try:
                found = self._call(
                    lambda: self.client.batches.create(
                        input_file_id=info["file_id"],
                        endpoint="/v1/chat/completions",
                        completion_window="24h",
                        metadata={PACK_METADATA: pack_id, "summarize_batch": info["batch"]},
                    )
                )
            except openai.RateLimitError as exc:  # token_limit_exceeded: wait for room, try again
                log.warning("pack %s: the provider refused the batch for now (%s); trying again later", pack_id, exc)
                self._move(pack_id, "creating", "uploaded", self.settings.batch_poll)
                return "uploaded"
        self._move(
            pack_id,
            "creating",
            "created",
            self.settings.batch_poll,
            tokens=int(info.get("tokens", 0)),
            provider_batch=found.id,
            status=found.status,
        )
        log.info("pack %s: provider batch %s (%s lines)", pack_id, found.id, info.get("lines"))
        return "created"

    def _find(self, pack_id: str) -> Any:
        after: str | openai.Omit = openai.omit
        for _ in range(LIST_PAGES):
            page = self._call(lambda cursor=after: self.client.batches.list(limit=100, after=cursor))  # type: ignore[misc]
            for batch in page.data:
                if (batch.metadata or {}).get(PACK_METADATA) == pack_id:
                    return batch
            if not page.has_more or not page.data:
                return None
            after = page.data[-1].id
        return None

    # ---- poll ---------------------------------------------------------------------------------------------

    def poll(self, pack_id: str) -> str:
        """A look at the pack (the reaper publishes this when it is due): resume it, or check its batch."""
        return self.advance(pack_id)

    def _poll(self, pack_id: str) -> str:
        info = self._info(pack_id)
        batch = self._call(lambda: self.client.batches.retrieve(info["provider_batch"]))
        our_state = self.store.require_batch(info["batch"]).get("state")
        if our_state == "cancelled" and batch.status not in TERMINAL_BATCH_STATUSES | {"cancelling"}:
            batch = self._call(lambda: self.client.batches.cancel(info["provider_batch"]))
        counts = batch.request_counts.model_dump() if batch.request_counts else {}
        errors = json.dumps([e.model_dump() for e in (batch.errors.data or [])]) if batch.errors else ""
        if batch.status in TERMINAL_BATCH_STATUSES:
            self._move(
                pack_id,
                "created",
                "fetching",
                pack_lease_ms(self.settings) / 1000,
                status=batch.status,
                counts=json.dumps(counts),
                errors=errors,
                output_file=batch.output_file_id or "",
                error_file=batch.error_file_id or "",
            )
            return "fetching"
        self._move(
            pack_id, "created", "created", self.settings.batch_poll, status=batch.status, counts=json.dumps(counts)
        )
        return "created"

    # ---- fetch and settle ---------------------------------------------------------------------------------

    def fetch(self, pack_id: str) -> dict[str, int]:
        """Settle every job of a finished provider batch by custom_id, with the online path's scripts."""
        info = self._info(pack_id)
        if info.get("state") != "fetching":
            return {}
        batch_id = info["batch"]
        spec = self.store.spec(batch_id)
        lines = {**self._read(info.get("error_file", "")), **self._read(info.get("output_file", ""))}
        out = Outcomes()
        twins = {text(k): text(v) for k, v in self.store.r.hgetall(self.keys.pack_twins(pack_id)).items()}  # type: ignore[union-attr]
        held = self._job_states(batch_id, pack_id, self._jobs(pack_id))  # those still waiting on this pack
        cancelled = self.store.require_batch(batch_id).get("state") == "cancelled"
        for job_id, job in held.items():
            if job_id not in twins:
                self._outcome(out, spec, batch_id, pack_id, job_id, lines.get(job_id), info, job, cancelled)
        for twin, leader in twins.items():
            self._twin(out, batch_id, pack_id, twin, leader, held.get(twin), out.ops, cancelled)
        self._settle(out.ops)
        self._release(batch_id, pack_id, info, out)
        self._move(pack_id, "fetching", "done", -1, tokens=-int(info.get("tokens", 0)))
        for key in (self.keys.pack(pack_id), self.keys.pack_jobs(pack_id), self.keys.pack_twins(pack_id)):
            self.store.r.expire(key, self.settings.result_ttl)
        return {"done": out.done, "retried": out.retried, "failed": out.failed}

    def _read(self, file_id: str) -> dict[str, dict[str, Any]]:
        if not file_id:
            return {}
        raw = self._call(lambda: self.client.files.content(file_id)).read()
        out: dict[str, dict[str, Any]] = {}
        for line in raw.decode("utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                out[str(row.get("custom_id"))] = row
        return out

    def _job_states(self, batch_id: str, pack_id: str, ids: list[str]) -> dict[str, ClaimedJob]:
        """The jobs the pack still holds, with their counts so far (attempts, unusable, tries in packs)."""
        out: dict[str, ClaimedJob] = {}
        for chunk in batched(ids, 500):
            with self.store.r.pipeline(transaction=False) as p:
                for job_id in chunk:
                    p.hmget(self.keys.job(batch_id, job_id), ["s", "tk", "a", "x", "bx", "pt", "ct", "c"])
                    p.get(self.keys.text(batch_id, job_id))
                replies = p.execute()
            for job_id, h, blob in zip(chunk, replies[::2], replies[1::2], strict=True):
                s, tk, *counts = (text(v) if v is not None else "0" for v in h)
                if blob is None or s != "packed" or tk != pack_id:
                    continue  # settled already (a fetch that died half way), or never sent here
                a, x, bx, pt, ct, c = counts
                out[job_id] = ClaimedJob(
                    batch_id,
                    job_id,
                    "",
                    Article.unpack(blob),
                    attempts=int(a),
                    unusable=int(x),
                    deferrals=int(bx),
                    prompt_tokens=int(pt),
                    completion_tokens=int(ct),
                    cost_usd=None if float(c) < 0 else float(c),
                )
        return out

    def _outcome(
        self,
        out: Outcomes,
        spec: BatchSpec,
        batch_id: str,
        pack_id: str,
        job_id: str,
        line: dict[str, Any] | None,
        info: dict[str, str],
        job: ClaimedJob | None,
        cancelled: bool,
    ) -> None:
        if job is None:
            return  # settled meanwhile (cancelled)
        response = (line or {}).get("response") or {}
        status = int(response.get("status_code") or 0)
        if status == 200:
            self._answered(out, spec, batch_id, pack_id, job, response.get("body"))
            return
        error = (line or {}).get("error") or {}
        body_error = (response.get("body") or {}).get("error") if isinstance(response.get("body"), dict) else None
        code = str(error.get("code") or (body_error or {}).get("code") or "")
        message = str(error.get("message") or (body_error or {}).get("message") or "")
        if line is None:
            code = {"failed": "batch_failed", "expired": BATCH_EXPIRED, "cancelled": BATCH_CANCELLED}.get(
                info.get("status", ""), "missing"
            )
            message = info.get("errors") or f"the provider batch ended {info.get('status')} without this line"
        self._unanswered(out, batch_id, pack_id, job, status, code, message, cancelled)

    def _answered(
        self, out: Outcomes, spec: BatchSpec, batch_id: str, pack_id: str, job: ClaimedJob, body: Any
    ) -> None:
        usage = llm.Usage.of(body)
        price = spec.price(spec.model)
        cost = price.cost(usage.prompt_tokens, usage.completion_tokens) * self.settings.batch_discount if price else -1
        out.prompt_tokens += usage.prompt_tokens
        out.completion_tokens += usage.completion_tokens
        out.cost_usd += max(cost, 0.0)
        counts = (1, 0, usage.prompt_tokens, usage.completion_tokens, cost)
        try:
            completion = llm.validated(body)
            ask = request(job.text, spec, _WHOLE, self.settings.max_summary_chars)
            content = ask.check(completion.content)
        except MalformedResponse as exc:
            if job.unusable + 1 >= self.settings.max_unusable:
                error = UnusableAnswers(f"{job.unusable + 1} paid answers could not be used; the last: {exc}")
                self._fail(out, batch_id, pack_id, job, error, counts, unusable=1)
            else:
                out.ops.append(
                    self._repack(batch_id, job.job_id, pack_id, False, type(exc).__name__, str(exc), counts, unusable=1)
                )
                out.retried += 1
            return
        final = Final(
            "done",
            job.article.digest,
            job.article.origin,
            summary=content,
            model=completion.model or spec.model,
            prompt_tokens=job.prompt_tokens + usage.prompt_tokens,
            completion_tokens=job.completion_tokens + usage.completion_tokens,
            attempts=job.attempts + 1,
            unusable=job.unusable,
            finished_ms=int(time.time() * 1000),
            cost_usd=None if cost < 0 or job.cost_usd is None else job.cost_usd + cost,
        )
        key = cache_key(fingerprint(spec, self.settings.openai_base_url), job.article.digest)
        final = replace(final, cache_key=key)
        out.ops.append(Op("done", batch_id, job.job_id, pack_id, *counts, final.pack(), key))
        out.done += 1

    def _unanswered(
        self,
        out: Outcomes,
        batch_id: str,
        pack_id: str,
        job: ClaimedJob,
        status: int,
        code: str,
        message: str,
        cancelled: bool,
    ) -> None:
        if cancelled:
            out.ops.append(Op("cancel", batch_id, job.job_id, pack_id))
            return
        transient = (
            code in (BATCH_EXPIRED, BATCH_CANCELLED, "missing", "batch_failed")
            or status in (0, 408, 409, 429)
            or status >= 500
        )
        if transient and not (code == "batch_failed" and job.deferrals >= 1):
            online = job.deferrals + 1 >= MAX_PACK_TRIES
            out.ops.append(self._repack(batch_id, job.job_id, pack_id, online, code or f"HTTP {status}", message))
            out.retried += 1
            return
        error = PermanentLLMError(f"the provider batch answered {code or status}: {message}"[:2000], status or None)
        self._fail(out, batch_id, pack_id, job, error, (1 if status else 0, 0, 0, 0, 0.0))

    def _fail(
        self,
        out: Outcomes,
        batch_id: str,
        pack_id: str,
        job: ClaimedJob,
        error: Exception,
        counts: tuple[int, int, int, int, float],
        unusable: int = 0,
    ) -> None:
        final = Final(
            "failed",
            job.article.digest,
            job.article.origin,
            error=str(error)[:2000],
            error_type=type(error).__name__,
            prompt_tokens=job.prompt_tokens + counts[2],
            completion_tokens=job.completion_tokens + counts[3],
            attempts=job.attempts + counts[0],
            unusable=job.unusable + unusable,
            finished_ms=int(time.time() * 1000),
        )
        out.ops.append(
            Op(
                "fail",
                batch_id,
                job.job_id,
                pack_id,
                counts[0],
                unusable,
                counts[2],
                counts[3],
                counts[4],
                [final.pack(), ""],
            )
        )
        out.failed += 1

    def _twin(
        self,
        out: Outcomes,
        batch_id: str,
        pack_id: str,
        twin: str,
        leader: str,
        job: ClaimedJob | None,
        ops: list[Op],
        cancelled: bool,
    ) -> None:
        """An identical article that shared its twin's line: the same outcome, no cost of its own."""
        if job is None:
            return
        led = next((op for op in ops if op.job_id == leader), None)
        if led is not None and led.kind == "done":
            f = Final.unpack(led.extra)
            final = replace(
                f,
                digest=job.article.digest,
                origin=job.article.origin,
                prompt_tokens=job.prompt_tokens,
                completion_tokens=job.completion_tokens,
                attempts=job.attempts,
                cached=True,
                cost_usd=job.cost_usd,
            )
            ops.append(Op("done", batch_id, twin, pack_id, extra=final.pack()))
            out.done += 1
        elif cancelled:
            ops.append(Op("cancel", batch_id, twin, pack_id))
        else:
            ops.append(self._repack(batch_id, twin, pack_id, False, "", ""))

    @staticmethod
    def _repack(
        batch_id: str,
        job_id: str,
        pack_id: str,
        online: bool,
        error_type: str,
        error: str,
        counts: tuple[int, int, int, int, float] = (0, 0, 0, 0, 0.0),
        unusable: int = 0,
    ) -> Op:
        requests, _, pt, ct, cost = counts
        return Op(
            "repack",
            batch_id,
            job_id,
            pack_id,
            requests,
            unusable,
            pt,
            ct,
            cost,
            [1 if online else 0, error_type, error[:200]],
        )

    def _settle(self, ops: list[Op]) -> None:
        for chunk in batched(ops, 500):
            _, messages = self.store.run(
                "settle",
                per_message=self.settings.jobs_per_message,
                cache_ttl=self.settings.cache_ttl,
                ops=pack([op.row() for op in chunk]),
                halt_after=self.settings.halt_after_same_errors,
            )
            if messages:
                publish(self.app, self.settings, [(int(s), text(m)) for s, m in messages])

    def _release(self, batch_id: str, pack_id: str, info: dict[str, str], out: Outcomes) -> None:
        """The pack's budget hold replaced by what it was billed."""
        held_usd, held_tokens = float(info.get("held_usd", 0)), int(info.get("held_tokens", 0))
        if held_usd or held_tokens:
            spend = Op(
                "spend",
                batch_id,
                "",
                pack_id,
                extra=[held_usd, held_tokens, out.cost_usd, out.prompt_tokens + out.completion_tokens],
            )
            self._settle([spend])

    def _call(self, fn: Callable[[], T]) -> T:
        """A provider call of the Batch API, retried on what may pass by itself (one retry layer: ours)."""
        for attempt in Retrying(
            retry=retry_if_exception_type((openai.APIConnectionError, openai.InternalServerError)),
            wait=wait_random_exponential(multiplier=0.5, max=10),
            stop=stop_after_attempt(4),
            reraise=True,
        ):
            with attempt:
                return fn()
        raise AssertionError("unreachable: tenacity re-raises the last error")
