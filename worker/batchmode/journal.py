r"""The journal: a pack's states and their transitions, all in Redis through Lua (contract/lua/pack_take.lua,
pack_state.lua), so that a worker killed at any point leaves the pack for another to carry on:

    new --upload--> uploaded --> creating --create--> created --poll...--> fetching --settle--> done
     \________________\___________\ (cancelled before a provider batch exists, or a permanent error) --> done

A pack is taken whole (pack_take.lua: its jobs, its enqueued tokens, its budget hold) and its hold dies
with it: the pack's `spend` op replaces the hold with what its lines were billed (nothing, for a pack
that closes before its provider batch exists). Each step that calls the provider is leased for as
long as the call with its retries can take (client.call_seconds); a pack whose lease lapsed is taken
up by another worker from the journal: `new` rebuilds the same lines from its jobs and uploads them
(the same hold), `creating` looks the provider batch up by its metadata before anything is created.
A pack in `done` leaves only a line of the batch's pack log: Redis keeps keys for the open packs alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from contract.job import ClaimedJob
from contract.ops import Bill
from contract.record import Article, pack, text
from contract.schema import BATCH, JOB, PACK, PACK_TAKE_REPLY
from contract.store import batched, messages_of

from ..storage import WorkerStore
from .lines import Built

#: job hash fields a settled line needs (contract/schema.py JOB): status, holder, and its counts so far
_JOB_NAMES = ("status", "token", "attempts", "unusable", "pack_tries", "prompt_tokens", "completion_tokens", "cost")
_JOB_FIELDS = [JOB.fields[name] for name in _JOB_NAMES]


@dataclass(frozen=True)
class PackInfo:
    """A pack's journal as read: its id, state and every recorded field."""

    pack_id: str
    fields: dict[str, str]

    @property
    def state(self) -> str:
        return self.fields.get(PACK.state, "gone")

    @property
    def batch_id(self) -> str:
        return self.fields.get(PACK.batch, "")

    @property
    def gen(self) -> str:
        return self.fields.get(PACK.gen, "")

    def get(self, name: str, default: str = "") -> str:
        return self.fields.get(name, default)

    def number(self, name: str) -> float:
        return float(self.fields.get(name) or 0)


@dataclass(frozen=True)
class Take:
    """One pack to open: the lines built for one generation of a batch, what they count and hold."""

    batch_id: str
    gen: str
    pack_id: str
    built: Built
    scope: str
    limit: int
    usd: float
    lease_ms: int
    endpoint: str


@dataclass(frozen=True)
class Move:
    """One transition: from the state the caller saw, with fields to record and when to look again."""

    pack_id: str
    expect: str
    to: str
    due_s: float = -1.0
    fields: dict[str, Any] = field(default_factory=dict)
    #: give the pack's enqueued tokens back (its provider batch ended, or it never had one)
    release: bool = False


class Journal:
    def __init__(self, store: WorkerStore) -> None:
        self.store, self.r, self.keys = store, store.r, store.keys

    async def waiting(self, batch_id: str, most: int) -> tuple[list[tuple[str, Article]], list[str]]:
        """The batch's jobs waiting for a pack, oldest first, with their articles; and the ids left in the
        set with no article (they ended meanwhile)."""
        ids = [text(i) for i in await self.r.zrange(self.keys.packing(batch_id), 0, most - 1)]
        blobs: list[bytes | None] = await self.r.mget([self.keys.text(batch_id, j) for j in ids]) if ids else []  # type: ignore[assignment]
        found = [(j, Article.unpack(blob)) for j, blob in zip(ids, blobs, strict=True) if blob is not None]
        return found, [j for j, blob in zip(ids, blobs, strict=True) if blob is None]

    async def take(self, t: Take) -> tuple[str, list[tuple[int, str]]]:
        """(verdict, messages to publish): see pack_take.lua."""
        journal = {PACK.lines: len(t.built.lines), PACK.bytes: t.built.size, PACK.endpoint: t.endpoint}
        reply = PACK_TAKE_REPLY.read(
            await self.store.script(
                "pack_take",
                batch=t.batch_id,
                gen=t.gen,
                pack=t.pack_id,
                jobs=pack(t.built.leaders),
                twins=pack(t.built.twins),
                online=pack(t.built.online),
                scope=t.scope,
                tokens=t.built.tokens,
                limit=t.limit,
                usd=t.usd,
                lease_ms=t.lease_ms,
                per_message=self.store.settings.jobs_per_message,
                fields=pack(journal),
            )
        )
        return text(reply["verdict"]), messages_of(reply["messages"])

    async def move(self, m: Move) -> bool:
        # A release gives tokens back to the scope the journal names: read first, so the call declares its
        # counter (the scope is written once, at take, and never changes).
        scope = text(await self.r.hget(self.keys.pack(m.pack_id), PACK.scope) or b"") if m.release else ""
        return bool(
            await self.store.script(
                "pack_state",
                scope=scope,
                pack=m.pack_id,
                expect=m.expect,
                to=m.to,
                due_ms=-1 if m.due_s < 0 else int(m.due_s * 1000),
                fields=pack({k: v if isinstance(v, str | int | float) else json.dumps(v) for k, v in m.fields.items()}),
                release="1" if m.release else "0",
            )
        )

    async def info(self, pack_id: str) -> PackInfo:
        raw = await self.r.hgetall(self.keys.pack(pack_id))
        return PackInfo(pack_id, {text(k): text(v) for k, v in raw.items()})

    async def twins(self, pack_id: str) -> dict[str, str]:
        raw = await self.r.hgetall(self.keys.pack_twins(pack_id))
        return {text(k): text(v) for k, v in raw.items()}

    async def held(self, info: PackInfo) -> dict[str, ClaimedJob]:
        """The pack's jobs it still holds (settled ones are skipped: a fetch that died half way), each with
        its counts so far, as a claimed job whose token is the pack and whose generation is the pack's."""
        ids = [text(i) for i in await self.r.lrange(self.keys.pack_jobs(info.pack_id), 0, -1)]
        out: dict[str, ClaimedJob] = {}
        b = info.batch_id
        for chunk in batched(ids, 500):
            async with self.r.pipeline(transaction=False) as p:
                for job_id in chunk:
                    p.hmget(self.keys.job(b, job_id), _JOB_FIELDS)
                    p.get(self.keys.text(b, job_id))
                replies = await p.execute()
            for job_id, h, blob in zip(chunk, replies[::2], replies[1::2], strict=True):
                job = {name: text(v) if v is not None else "0" for name, v in zip(_JOB_NAMES, h, strict=True)}
                if blob is not None and job["status"] == "packed" and job["token"] == info.pack_id:
                    out[job_id] = _claimed(info, job_id, Article.unpack(blob), job)
        return out

    async def batch_state(self, batch_id: str, gen: str) -> str:
        """The batch's state for this pack: running, paused, halted, cancelled, or gone (purged, expired,
        or made again under its id: another generation)."""
        state, now_gen = await self.r.hmget(self.keys.batch(batch_id), [BATCH.state, BATCH.gen])
        if state is None or (gen and text(now_gen or b"") != gen):
            return "gone"
        return text(state)

    async def generation(self, batch_id: str) -> str:
        """The batch's generation now ('' : it does not exist)."""
        return text(await self.r.hget(self.keys.batch(batch_id), BATCH.gen) or b"")

    async def enqueued(self, scope: str) -> int:
        return int(await self.r.get(self.keys.enqueued(scope)) or 0)


def _claimed(info: PackInfo, job_id: str, article: Article, job: dict[str, str]) -> ClaimedJob:
    return ClaimedJob(
        info.batch_id,
        job_id,
        info.pack_id,
        article,
        attempts=int(job["attempts"]),
        unusable=int(job["unusable"]),
        deferrals=int(job["pack_tries"]),
        bill=Bill(int(job["prompt_tokens"]), int(job["completion_tokens"]), float(job["cost"])),
        gen=info.gen,
    )
