"""Batch mode: a batch's jobs go to the provider's Batch API (half the price, within 24 hours) in packs,
on the same job state, counters, cache, budget, results, writer, retry policy and error rules as the
online path. A pack is one provider batch.

    journal.py  pack states and their transitions (contract/lua/pack_take.lua, pack_state.lua, pack_due.lua)
    lines.py    the line builder: request lines within the provider's limits and the enqueued-token room
    client.py   the provider client: Files and Batch APIs, one retry policy, a create never made twice
    reader.py   the result reader: output and error lines -> settle.lua ops built by worker/outcome.py
    steps.py    upload, create, poll, and closing a pack that makes no further call
    pilot.py    taking packs while there is room, moving a pack on, settling a finished one

The Celery tasks (summarize.pack, summarize.poll, summarize.fetch: Flower shows them) run in Celery's
threads and hand their work to the process's event loop (worker/engine.py), where the online path's
Redis store, writer and openai client live.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from celery import Celery

from contract.messaging import PACK_TASK
from contract.settings import Settings
from contract.store import Message

from ..engine import Engine, engine
from .client import BatchClient
from .journal import Journal
from .parts import Parts, endpoint_of
from .pilot import Pilot

T = TypeVar("T")

__all__ = ["Packs"]


class Packs:
    """One per worker process, shared by its task threads: a bridge to the pilot on the event loop."""

    def __init__(self, settings: Settings, app: Celery) -> None:
        self.settings, self.app = settings, app
        self._pilot: Pilot | None = None

    def pack(self, batch_id: str) -> int:
        """Open packs of the batch's waiting jobs and send them; returns how many it opened."""
        return self._run(lambda p: p.pack(batch_id))

    def poll(self, pack_id: str) -> str:
        """A look at the pack (the reaper publishes this when it is due): resume it, or check its batch."""
        return self._run(lambda p: p.advance(pack_id))

    def fetch(self, pack_id: str) -> dict[str, int]:
        """Settle every job of a finished provider batch from its output and error files."""
        return self._run(lambda p: p.fetch(pack_id))

    def _run(self, work: Callable[[Pilot], Awaitable[T]]) -> T:
        eng = engine(self.settings, self.app)

        async def on_loop() -> T:
            if self._pilot is None:
                self._pilot = Pilot(self._parts(eng))
            return await work(self._pilot)

        return asyncio.run_coroutine_threadsafe(on_loop(), eng.loop).result()

    def _parts(self, eng: Engine) -> Parts:
        s = self.settings

        async def publish(messages: list[Message]) -> None:
            await eng._publish(messages)

        async def pack_later(batch_id: str) -> None:
            await eng._send([(PACK_TASK, batch_id)])

        return Parts(
            Journal(eng.store),
            BatchClient(eng.provider.client, s),
            eng.writer,
            eng.batches,
            publish,
            pack_later,
            endpoint_of(s.openai_base_url),
        )
