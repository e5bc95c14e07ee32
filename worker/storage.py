"""The worker's side of the job store: claim, settle, renew, reap, each one Lua script of contract/lua/
called on the process's event loop. Scripts take many jobs per call, so Redis round trips per job stay
well below one."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio

from contract import scripts
from contract.job import ClaimedJob
from contract.keys import PRIORITY_STEPS, Keys
from contract.ops import Op
from contract.record import pack, text
from contract.redisconn import primary_address, primary_moved_async, script_and_wait
from contract.schema import CLAIM_REPLY, CLAIMED, HELD, PACK_DUE_REPLY, REAP_REPLY, SEND_REPLY, SETTLE_REPLY
from contract.settings import Settings
from contract.store import Message, messages_of

from . import metrics

log = logging.getLogger(__name__)

#: op kinds that record a job's final outcome: a settle holding one waits for SUMMARIZE_REDIS_WAIT_REPLICAS
FINAL_KINDS = frozenset({"done", "fail", "cancel"})


def pack_lease_ms(settings: Settings) -> int:
    """How long a worker holds a provider batch (batch mode) through one external step: an upload of
    200 MB or a slow create can take far longer than an LLM request."""
    return int(max(settings.lease_seconds, 30) * 1000)


@dataclass
class Claimed:
    """What claim.lua did with one message."""

    state: str
    jobs: list[ClaimedJob]
    #: job id -> why it was not taken (done, failed, cancelled, busy, early, paused, missing)
    skipped: dict[str, str]


@dataclass
class Reaped:
    messages: list[Message]
    reclaimed: int
    due: int
    republished: int


def _merge_settles(first: Any, again: Any) -> Any:
    """One settle reply of a settle sent twice: an op applied by either send is applied, and the messages of
    both are published (the second send applies only what the first's lost primary took with it)."""
    a, b = SETTLE_REPLY.read(first), SETTLE_REPLY.read(again)
    applied = [max(int(x), int(y)) for x, y in zip(a["applied"], b["applied"], strict=True)]
    return SETTLE_REPLY.row(applied=applied, messages=list(a["messages"]) + list(b["messages"]))


class WorkerStore:
    def __init__(
        self, client: redis.asyncio.Redis, settings: Settings, broker: redis.asyncio.Redis | None = None
    ) -> None:
        self.r = client
        #: the broker's Redis (SUMMARIZE_BROKER_URL), when it is not the store's
        self.broker = broker or client
        self.settings = settings
        self.keys = Keys(settings.key_prefix, settings.queue)
        self._scripts = {name: client.register_script(scripts.load(name).source) for name in scripts.names()}

    async def script(self, name: str, **params: Any) -> Any:
        keys, args = scripts.load(name).call(self.keys, **params)
        return await self._scripts[name](keys=keys, args=args)

    async def claim(
        self,
        batch_id: str,
        job_ids: list[str],
        step: int,
        token: str,
        gen: str = "",
        cache_fp: str = "",
        rev: str = "0",
        to_pack: bool = False,
    ) -> Claimed:
        reply = await self.script(
            "claim",
            batch=batch_id,
            step=step,
            message=Keys.member(batch_id, *job_ids),
            token=token,
            lease_ms=int(self.settings.lease_seconds * 1000),
            cache_fp=cache_fp if self.settings.cache_ttl else "",
            cache_ttl=self.settings.cache_ttl,
            to_pack="1" if to_pack else "0",
            gen=gen,
            rev=rev,
        )
        r = CLAIM_REPLY.read(reply)
        claimed = Claimed(text(r["state"]), [], {})
        for row in r["jobs"]:
            job = CLAIMED.read(row)
            if text(job["why"]) == "claimed":
                claimed.jobs.append(ClaimedJob.from_reply(batch_id, token, int(r["now_ms"]), row, gen))
            else:
                claimed.skipped[text(job["id"])] = text(job["why"])
        return claimed

    async def settle(self, ops: Sequence[Op]) -> tuple[list[int], list[Message]]:
        """Store the ops; returns which were applied, and messages to publish (twins queued again). With
        SUMMARIZE_REDIS_WAIT_REPLICAS, a settle recording a final outcome returns only once its writes
        reached that many replicas (WAIT, in the same round trip), or the wait timed out (logged, counted):
        what a promoted replica lacks would be run and paid again."""
        rows = pack([op.row() for op in ops])
        replicas = self.settings.wait_replicas
        if replicas and any(op.kind in FINAL_KINDS for op in ops):
            keys, args = scripts.load("settle").call(
                self.keys,
                per_message=self.settings.jobs_per_message,
                cache_ttl=self.settings.cache_ttl,
                ops=rows,
                halt_after=self.settings.halt_after_same_errors,
            )
            started, before = time.monotonic(), primary_address(self.r)
            raw, reached = await script_and_wait(
                self.r, self._scripts["settle"], keys, args, replicas, int(self.settings.redis_wait_timeout * 1000)
            )
            if reached < replicas and await primary_moved_async(self.r, before):
                # Written to a primary demoted meanwhile (a graceful failover leaves it writable for a while):
                # sent again to the new one. The ops are idempotent; what the first send applied counts.
                again, reached = await script_and_wait(
                    self.r, self._scripts["settle"], keys, args, replicas, int(self.settings.redis_wait_timeout * 1000)
                )
                raw = _merge_settles(raw, again)
            metrics.note_wait(time.monotonic() - started, reached < replicas)
            if reached < replicas:
                log.warning(
                    "settling %d op(s): %d of %d replica(s) acknowledged within %gs; counted as stored",
                    len(ops),
                    reached,
                    replicas,
                    self.settings.redis_wait_timeout,
                )
        else:
            raw = await self.script(
                "settle",
                per_message=self.settings.jobs_per_message,
                cache_ttl=self.settings.cache_ttl,
                ops=rows,
                halt_after=self.settings.halt_after_same_errors,
            )
        reply = SETTLE_REPLY.read(raw)
        return [int(a) for a in reply["applied"]], messages_of(reply["messages"])

    async def send(self, job: ClaimedJob, usd: float, tokens: int) -> tuple[str, str]:
        """The last word before a call leaves (contract/lua/send.lua): (verdict, detail), verdict one of go,
        wait, paused, cancelled, halted, lost, gone. With a budget, `go` also holds the call's bound
        (`usd` -1: its price is unknown)."""
        reply = SEND_REPLY.read(
            await self.script(
                "send", batch=job.batch_id, gen=job.gen, id=job.job_id, token=job.token, usd=usd, tokens=tokens
            )
        )
        return text(reply["verdict"]), text(reply["detail"])

    async def renew(self, held: list[ClaimedJob]) -> list[ClaimedJob]:
        """Extend the leases of `held`; returns those that are no longer ours."""
        # the cache key too: renew.lua extends the flight the job leads, which is declared from it
        rows = [HELD.row(batch=j.batch_id, id=j.job_id, token=j.token, cache_key=j.cache_key) for j in held]
        lost = await self.script("renew", lease_ms=int(self.settings.lease_seconds * 1000), held=pack(rows))
        return [held[int(i) - 1] for i in lost]

    async def empty_queues(self) -> list[int]:
        """The priority steps whose broker queue is empty now (asked of the broker, not the store)."""
        async with self.broker.pipeline(transaction=False) as p:
            for step in PRIORITY_STEPS:
                p.llen(self.keys.broker_queue(step))
            lengths = await p.execute()
        return [step for step, n in zip(PRIORITY_STEPS, lengths, strict=True) if int(n) == 0]

    async def reap(self, limit: int = 1000) -> Reaped:
        s = self.settings
        # Before the script: a message published after this look is newer than any orphan `grace` old.
        empty = await self.empty_queues()
        r = REAP_REPLY.read(
            await self.script(
                "reap",
                lease_ms=int(s.lease_seconds * 1000),
                grace_ms=int(s.queued_grace * 1000),
                gap_ms=int(max(3 * s.reap_interval, s.lease_seconds / 3 + 2 * s.reap_interval) * 1000),
                per_message=s.jobs_per_message,
                limit=limit,
                empty=pack(empty),
            )
        )
        return Reaped(messages_of(r["messages"]), int(r["reclaimed"]), int(r["due"]), int(r["republished"]))

    async def packs_due(self) -> tuple[list[str], list[str]]:
        """(Batch mode) batches to pack now, and packs to move on; pushed a lease ahead."""
        s = self.settings
        reply = PACK_DUE_REPLY.read(
            await self.script(
                "pack_due",
                linger_ms=int(s.batch_linger * 1000),
                max=s.batch_max_requests,
                lease_ms=pack_lease_ms(s),
            )
        )
        return [text(b) for b in reply["batches"]], [text(p) for p in reply["packs"]]

    async def try_reaper_lock(self, owner: str) -> bool:
        return bool(
            await self.r.set(self.keys.reaper_lock, owner, nx=True, px=max(1, int(self.settings.reap_interval * 1000)))
        )

    async def cooldown_ms(self) -> int:
        return max(0, int(await self.r.pttl(self.keys.cooldown)))
