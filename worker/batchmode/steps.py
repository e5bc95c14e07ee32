"""A pack's steps after it was taken: upload, create (never twice), poll, and closing a pack that must make
no further call. Every step first looks at the batch (cancelled, gone) and at the pack's endpoint: a pack
of a cancelled batch makes no call but the provider batch's cancel, and a pack belongs to the endpoint
it was made for."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace

from contract.errors import BatchCancelled, PermanentLLMError, TransientLLMError
from contract.job import ClaimedJob
from contract.models import known_context
from contract.openai_shapes import TERMINAL_BATCH_STATUSES
from contract.ops import Fail, Op
from contract.schema import PACK
from contract.settings import Settings
from contract.spec import BatchSpec

from .. import metrics, outcome
from ..retry import defer_delay
from ..summarize import Tally, prompt_bound_counter
from .client import CreateRequest, Guard, call_seconds, counts_of
from .journal import Move, PackInfo
from .lines import Built, LineBuilder, Room
from .parts import Parts
from .reader import repack

log = logging.getLogger(__name__)


class PackGone(Exception):
    """The pack's batch was purged or made again: nothing of the pack may be written."""


class Steps:
    def __init__(self, parts: Parts) -> None:
        self.parts, self.j, self.s = parts, parts.journal, parts.settings

    def guard(self, info: PackInfo) -> Guard:
        async def check() -> None:
            state = await self.j.batch_state(info.batch_id, info.gen)
            if state == "cancelled":
                raise BatchCancelled(f"batch {info.batch_id} was cancelled")
            if state == "gone":
                raise PackGone(info.batch_id)

        return check

    def builder(self, spec: BatchSpec) -> LineBuilder:
        return LineBuilder(spec, self.s.max_summary_chars, prompt_bound_counter(self.s.provider))

    def room(self, spec: BatchSpec, tokens_left: float) -> Room:
        context = self.s.context_tokens or known_context(spec.model) or 0
        limit = self.s.batch_enqueued_tokens
        return Room(self.s.batch_max_requests, self.s.batch_max_bytes, tokens_left, limit, context)

    async def move(self, m: Move) -> bool:
        moved = await self.j.move(m)
        if moved:
            metrics.PACKS.labels(m.to).inc()
        return moved

    # ---- upload ----------------------------------------------------------------------------------------

    async def upload(self, info: PackInfo, spec: BatchSpec, built: Built | None = None) -> str:
        """Upload the pack's lines (rebuilt from its jobs when resumed: the same lines, the same hold)."""
        if built is None:  # resumed: leased again for the call, then the same lines rebuilt from its jobs
            await self.move(Move(info.pack_id, "new", "new", call_seconds(self.s, int(info.number(PACK.bytes)))))
            held, twins = await self.j.held(info), await self.j.twins(info.pack_id)
            waiting = [(job_id, job.article) for job_id, job in held.items() if job_id not in twins]
            built = self.builder(spec).build(waiting, self.room(spec, float("inf")))
        try:
            file_id = await self.parts.client.upload(f"{info.pack_id}.jsonl", built.body(), self.guard(info))
        except TransientLLMError as exc:
            return await self.later(info, "new", exc)
        fields = {PACK.file_id: file_id, PACK.lines: len(built.lines), PACK.bytes: built.size}
        if not await self.move(Move(info.pack_id, "new", "uploaded", 0, fields)):
            return (await self.j.info(info.pack_id)).state
        return "uploaded"

    # ---- create, never twice ---------------------------------------------------------------------------

    async def create(self, info: PackInfo) -> str:
        lease = call_seconds(self.s)  # the look-ups and creates, each attempt cut off at its timeout
        # A worker died creating it, or an earlier create call's last attempt went unanswered (a 502 after
        # the provider made the batch): look before creating. The mark is journaled before any attempt.
        looked = info.state == "creating" or info.get(PACK.create_tried) == "1"
        mark: dict[str, object] = {PACK.lease_ms: int(lease * 1000), PACK.create_tried: 1}
        if not await self.move(Move(info.pack_id, info.state, "creating", lease, mark)):
            return (await self.j.info(info.pack_id)).state
        req = CreateRequest(info.pack_id, info.batch_id, info.get(PACK.file_id))
        try:
            found = await self.parts.client.create(req, self.guard(info), looked=looked)
        except TransientLLMError as exc:  # 429 token_limit_exceeded included: wait for room
            return await self.later(info, "creating", exc, back_to="uploaded")
        fields = {PACK.provider_batch: found.id, PACK.status: found.status, PACK.counts: counts_of(found)}
        await self.move(Move(info.pack_id, "creating", "created", self.s.batch_poll, fields))
        log.info("pack %s: provider batch %s (%s lines)", info.pack_id, found.id, info.get(PACK.lines))
        return "created"

    async def adopt(self, info: PackInfo) -> str:
        """A cancelled batch's pack caught creating: its provider batch, if the create got through, is
        recorded (the next poll cancels it); else the pack closes with no further call."""
        found = await self.parts.client.find(info.pack_id)
        if found is None:
            return await self.cancel(info)
        fields = {PACK.provider_batch: found.id, PACK.status: found.status, PACK.counts: counts_of(found)}
        await self.move(Move(info.pack_id, "creating", "created", 0, fields))
        return "created"

    async def stalled(self, info: PackInfo, exc: Exception) -> str:
        """A permanent error (401/403/404...) while polling or fetching a provider batch that exists: it runs
        and is billed whatever we do, so the pack is never given up for it (failing its jobs would make
        `retry` pay for them twice). It is looked at again with the backoff; `status` shows the error until
        the cause is fixed, or the user cancels the batch."""
        return await self.later(info, info.state, exc, give_up=False)

    async def later(self, info: PackInfo, state: str, exc: Exception, back_to: str = "", give_up: bool = True) -> str:
        """A step that failed for now: tried again later, with the online path's backoff, until the retry
        horizon has passed since its first failure; then the pack fails with that error."""
        since = info.number(PACK.failing_since) or time.time()
        if give_up and time.time() - since >= self.s.retry_horizon:
            error = PermanentLLMError(f"gave up after {self.s.retry_horizon:.0f}s of retries; last error: {exc}")
            return await self.fail(info, error)
        tries = int(info.number(PACK.failures))
        delay = defer_delay(tries, getattr(exc, "retry_after", None), min(self.s.defer_base, self.s.batch_poll))
        log.warning("pack %s: %s; trying again in %.0fs", info.pack_id, exc, delay)
        fields = {PACK.failures: tries + 1, PACK.failing_since: since, PACK.error: str(exc)[:500]}
        await self.move(Move(info.pack_id, state, back_to or state, delay, fields))
        return back_to or state

    # ---- poll ------------------------------------------------------------------------------------------

    async def poll(self, info: PackInfo, cancelled: bool) -> str:
        guard = self.guard(info) if not cancelled else no_guard
        batch = await self.parts.client.retrieve(info.get(PACK.provider_batch), guard)
        if cancelled and batch.status not in TERMINAL_BATCH_STATUSES | {"cancelling"}:
            batch = await self.parts.client.cancel(batch.id)
        fields: dict[str, object] = {PACK.status: batch.status, PACK.counts: counts_of(batch)}
        if batch.errors and batch.errors.data:
            fields[PACK.errors] = [e.model_dump() for e in batch.errors.data]
        if batch.status not in TERMINAL_BATCH_STATUSES:
            await self.move(Move(info.pack_id, "created", "created", self.s.batch_poll, fields))
            return "created"
        fields.update({PACK.output_file: batch.output_file_id or "", PACK.error_file: batch.error_file_id or ""})
        lease = call_seconds(self.s)
        await self.move(Move(info.pack_id, "created", "fetching", lease, fields, release=True))
        return "fetching"

    # ---- closing a pack that makes no further call ------------------------------------------------------

    async def fail(self, info: PackInfo, error: Exception) -> str:
        """A permanent error on upload or create: the pack's jobs fail with it and the batch halts (`summarize
        retry` sends them again after the fix); `status` shows the error with the pack."""
        halt = f"batch mode: {type(error).__name__}: {error}"[:2000]
        log.error("pack %s failed: %s", info.pack_id, error)
        ops = [_fail_op(job, error, halt, self.s) for job in (await self.j.held(info)).values()]
        return await self.close(info, ops, {PACK.error: str(error)[:2000], PACK.errors: [_error_entry(error)]})

    async def go_online(self, info: PackInfo, error: Exception) -> str:
        """A permanent error on upload or create, and the batch asked for `--fallback-mode online`: the pack's
        jobs go on as online requests (`status` still shows why the pack was given up)."""
        log.warning("pack %s: %s; its jobs go online (--fallback-mode online)", info.pack_id, error)
        ops = [
            repack(job, Tally(), True, type(error).__name__, str(error)) for job in (await self.j.held(info)).values()
        ]
        fields: dict[str, object] = {
            PACK.error: f"{error} (its jobs went online)"[:2000],
            PACK.errors: [_error_entry(error)],
        }
        return await self.close(info, ops, fields)

    async def cancel(self, info: PackInfo) -> str:
        ops = [outcome.cancelled(job, Tally()) for job in (await self.j.held(info)).values()]
        return await self.close(info, ops, {PACK.status: "cancelled before its provider batch was created"})

    async def close(self, info: PackInfo, ops: Sequence[Op], fields: dict[str, object]) -> str:
        await self.parts.settle(ops)
        await self.parts.release(info, 0.0, 0)
        await self.move(Move(info.pack_id, info.state, "done", -1, fields, release=True))
        return "done"


async def no_guard() -> None:
    return None


def _error_entry(error: Exception) -> dict[str, object]:
    return {"code": type(error).__name__, "message": str(error)[:500]}


def _fail_op(job: ClaimedJob, error: Exception, halt: str, settings: Settings) -> Op:
    op, _ = outcome.failed(job, error, Tally(), settings, 0.0)
    # A pack's failure is permanent (Fail), its halt the pack's; anything else goes as failed() made it.
    return replace(op, halt=halt) if isinstance(op, Fail) else op
