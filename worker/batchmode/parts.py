"""What batch mode shares with the online path, gathered once per process: the settings, the process's
Redis store and writer (the one final-record writer of both paths), its copy of batch specs, its openai
client (through the batch client), and how messages are published."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from contract.errors import BatchNotFound
from contract.ops import Op, Run, Spend
from contract.settings import Settings
from contract.spec import BatchSpec
from contract.store import Message

from ..batches import Batches, cache_key
from ..writer import Writer
from .client import BatchClient
from .journal import Journal, PackInfo


def endpoint_of(base_url: str) -> str:
    """A pack's endpoint as journaled: a digest of the base URL (a URL may carry credentials)."""
    return hashlib.sha1(base_url.encode()).hexdigest()[:16]


def scope_of(base_url: str, model: str) -> str:
    """The (endpoint, model) an enqueued-token limit is counted for."""
    return hashlib.sha1(f"{base_url}\x1f{model}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Parts:
    journal: Journal
    client: BatchClient
    writer: Writer
    batches: Batches
    publish: Callable[[list[Message]], Awaitable[None]]
    #: publish a PACK task for a batch (its open pack finished: there is room again)
    pack_later: Callable[[str], Awaitable[None]]
    #: this worker's endpoint (endpoint_of its base URL): a pack made for another one is left to it
    endpoint: str

    @property
    def settings(self) -> Settings:
        return self.journal.store.settings

    async def spec(self, batch_id: str, gen: str) -> BatchSpec | None:
        """The batch's spec as of generation `gen` (None: the batch is gone or is another generation)."""
        for _ in range(2):
            try:
                now_gen, _, spec = await self.batches.spec(batch_id)
            except BatchNotFound:
                return None
            if not gen or now_gen == gen:
                return spec
            self.batches.forget(batch_id)
        return None

    def cache_key_for(self, batch_id: str, spec: BatchSpec, digest: str) -> str:
        if not self.settings.cache_ttl or spec.no_cache:
            return ""
        return cache_key(self.batches.fingerprint(batch_id, spec), digest)

    async def settle(self, ops: Sequence[Op]) -> list[int]:
        """Every op through the process's writer (it gathers them into few script calls)."""
        return list(await asyncio.gather(*(self.writer.settle(op) for op in ops)))

    async def release(self, info: PackInfo, usd: float, tokens: int) -> None:
        """The pack's budget hold replaced by what it was billed (nothing, if it sent nothing)."""
        held_usd, held_tokens = info.number("held_usd"), int(info.number("held_tokens"))
        if held_usd or held_tokens:
            spend = Spend(
                run=Run(info.batch_id, "", info.pack_id, info.gen),
                held_usd=held_usd,
                held_tokens=held_tokens,
                spent_usd=usd,
                spent_tokens=tokens,
            )
            await self.writer.settle(spend)
