"""Taking packs and moving them on: `pack` opens packs of a batch's waiting jobs while there is room,
`advance` moves one pack on from whatever state it is in (a worker may have died in any), `fetch`
settles a finished provider batch. A pack that cannot be made now is not made: with no room under the
enqueued-token limit the batch waits, writing nothing, until an open pack finishes (which packs again)."""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace

from contract.errors import BatchCancelled, PermanentLLMError
from contract.schema import PACK

from .client import call_seconds
from .journal import Move, PackInfo, Take
from .lines import Built
from .parts import Parts, scope_of
from .reader import Reader, parse
from .steps import PackGone, Steps, no_guard

log = logging.getLogger(__name__)

#: packs one call of `pack` may open (it stops earlier once there is no room or nothing waits)
MAX_TURNS = 1000


class Pilot:
    def __init__(self, parts: Parts) -> None:
        self.parts, self.j, self.s = parts, parts.journal, parts.settings
        self.steps = Steps(parts)
        #: lines built by this process for packs it took and is uploading (a resumed pack rebuilds them)
        self._built: dict[str, Built] = {}

    async def pack(self, batch_id: str) -> int:
        """Open packs of the batch's waiting jobs and send them; returns how many it opened."""
        made = 0
        for _ in range(MAX_TURNS):
            opened = await self._take(batch_id)
            if opened is None:
                break
            if opened:
                made += 1
                await self.advance(opened, own=True)
        return made

    async def _take(self, batch_id: str) -> str | None:
        """One pack taken (its id; '' : none this turn, look again; None: stop)."""
        gen = await self.j.generation(batch_id)
        spec = await self.parts.spec(batch_id, gen) if gen else None
        if spec is None:
            return None
        waiting, stale = await self.j.waiting(batch_id, self.s.batch_max_requests)
        if not waiting and not stale:
            return None
        scope = scope_of(self.s.openai_base_url, spec.model)
        limit = self.s.batch_enqueued_tokens
        left = float(limit - await self.j.enqueued(scope)) if limit else float("inf")
        built = self.steps.builder(spec).build(waiting, self.steps.room(spec, left))
        built.online.extend(stale)
        if not built.leaders and not built.online:
            return None  # no room now: the batch waits for open packs to finish
        pack_id = f"{batch_id}.{uuid.uuid4().hex[:10]}"
        usd = built.worst_usd(spec.price(spec.model), self.s.batch_discount)
        lease_ms = int(call_seconds(self.s, built.size) * 1000)
        self._built[pack_id] = built
        verdict, messages = await self.j.take(
            Take(batch_id, gen, pack_id, built, scope, limit, usd, lease_ms, self.parts.endpoint)
        )
        if messages:
            await self.parts.publish(messages)
        if verdict == "ok":
            return pack_id
        self._built.pop(pack_id, None)
        return "" if verdict in ("none", "busy") else None

    async def advance(self, pack_id: str, own: bool = False) -> str:
        """Move the pack on; `own`: this process just took it (it uploads the lines it built)."""
        try:
            try:
                return await self._advance(await self.j.info(pack_id), own)
            except BatchCancelled:  # cancelled between two calls: the next one is not made
                return await self._advance(await self.j.info(pack_id), own)
        except PackGone:
            await self.j.move(Move(pack_id, "", "done", -1, {PACK.status: "its batch is gone"}, release=True))
            return "done"
        except PermanentLLMError as exc:
            info = await self.j.info(pack_id)
            if info.get(PACK.provider_batch):  # it exists and runs: never abandoned (see Steps.stalled)
                return await self.steps.stalled(info, exc)
            spec = await self.parts.spec(info.batch_id, info.gen)
            if spec is not None and spec.fallback_mode == "online":
                return await self.steps.go_online(info, exc)
            return await self.steps.fail(info, exc)
        finally:
            self._built.pop(pack_id, None)

    async def _advance(self, info: PackInfo, own: bool) -> str:
        state = info.state
        if state in ("gone", "done"):
            return state
        batch = await self.j.batch_state(info.batch_id, info.gen)
        if batch == "gone":
            raise PackGone(info.batch_id)
        cancelled = batch == "cancelled"
        if cancelled and state in ("new", "uploaded"):
            return await self.steps.cancel(info)
        if info.get(PACK.endpoint) != self.parts.endpoint:
            log.warning("pack %s was made for another endpoint; leaving it to that one's workers", info.pack_id)
            return state
        spec = await self.parts.spec(info.batch_id, info.gen)
        if spec is None:
            raise PackGone(info.batch_id)
        if state == "new":
            state = await self.steps.upload(info, spec, self._built.get(info.pack_id) if own else None)
        if state in ("uploaded", "creating"):
            info = await self.j.info(info.pack_id)
            state = await (self.steps.adopt(info) if cancelled else self.steps.create(info))
            if own:
                return state  # polled when due, not now: this call goes on taking packs
        if state == "created":
            state = await self.steps.poll(await self.j.info(info.pack_id), cancelled)
        if state == "fetching":
            await self._fetch(await self.j.info(info.pack_id))
            state = "done"
        return state

    async def fetch(self, pack_id: str) -> dict[str, int]:
        info = await self.j.info(pack_id)
        if info.state != "fetching":
            return {}
        try:
            return await self._fetch(info)
        except PackGone:
            await self.j.move(Move(pack_id, "", "done", -1, {PACK.status: "its batch is gone"}, release=True))
            return {}

    async def _fetch(self, info: PackInfo) -> dict[str, int]:
        """Settle every job of a finished provider batch by custom_id; then the batch is packed again (its
        room is free)."""
        spec = await self.parts.spec(info.batch_id, info.gen)
        if spec is None:
            raise PackGone(info.batch_id)
        cancelled = await self.j.batch_state(info.batch_id, info.gen) == "cancelled"
        guard = no_guard if cancelled else self.steps.guard(info)
        lines = {}
        for file_id in (info.get(PACK.error_file), info.get(PACK.output_file)):
            if file_id:
                lines.update(parse(await self.parts.client.content(file_id, guard)))
        held = {
            job_id: replace(job, cache_key=self.parts.cache_key_for(info.batch_id, spec, job.article.digest))
            for job_id, job in (await self.j.held(info)).items()
        }
        settled = Reader(self.s, spec, info, cancelled).settle(lines, held, await self.j.twins(info.pack_id))
        # The hold becomes spend before the jobs settle: a `wait` that sees the last job done then never reads a
        # finished batch still holding the pack's money. A retry after a crash between the two finds the hold
        # gone, and spend.lua's op then changes nothing (nothing billed twice).
        # a model without a price spends no USD (its tokens still count against a token cap)
        usd = settled.bill.cost_usd if settled.bill.cost_known else 0.0
        await self.parts.release(info, usd, settled.bill.tokens)
        await self.parts.settle(settled.ops)
        await self.steps.move(Move(info.pack_id, "fetching", "done", -1, release=True))
        if not cancelled:
            await self.parts.pack_later(info.batch_id)
        return {"done": settled.done, "retried": settled.retried, "failed": settled.failed}
