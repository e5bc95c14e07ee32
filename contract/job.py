"""The job: its statuses, what a worker gets when it claims one, and what it reports back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .ops import Bill
from .record import Article, text
from .schema import CLAIMED


class Status(StrEnum):
    """A job's status in Redis; only the Lua scripts in contract/lua/ change it."""

    QUEUED = "queued"  # a message is (or should be) on the queue
    RUNNING = "running"  # a worker holds a lease on it
    DEFERRED = "deferred"  # handed back after transient failures; the reaper requeues it when due
    PARKED = "parked"  # its batch is paused; resume republishes it
    WAITING = "waiting"  # an identical article's call is in flight: it is answered from that (single flight)
    PACKING = "packing"  # batch mode: waiting for a provider batch of its batch
    PACKED = "packed"  # batch mode: sent in a provider batch (counted as running)
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: public counters of a batch; deferred, parked, waiting and packing jobs count as queued, packed as running
COUNTERS = ("total", "queued", "running", "done", "failed", "cancelled")
FINAL = frozenset({Status.DONE, Status.FAILED, Status.CANCELLED})


def unfinished(counts: Mapping[str, Any]) -> int:
    """Jobs of a batch not yet done, failed or cancelled, from its counters (a status, or the raw hash)."""
    return int(counts.get("total", 0)) - sum(int(counts.get(s, 0)) for s in FINAL)


@dataclass(frozen=True)
class ClaimedJob:
    """What a worker gets when it takes a job: enough to call the LLM and to report back."""

    batch_id: str
    job_id: str
    token: str
    article: Article
    #: counts carried over from earlier runs of this job
    attempts: int = 0
    unusable: int = 0
    deferrals: int = 0
    #: seconds since its first failure when it was claimed, by Redis' clock (None: it never failed)
    failing_for: float | None = None
    #: what earlier runs were billed (cost -1: some call's price was unknown)
    bill: Bill = field(default_factory=Bill)
    #: summaries of a long article's parts from earlier runs (key -> summary)
    partials: dict[str, str] = field(default_factory=dict)
    #: the result-cache key its answer is stored under ('' when the batch does not use the cache)
    cache_key: str = ""
    #: the generation of the batch it was claimed in (see contract/lua/init_batch.lua)
    gen: str = ""

    @property
    def text(self) -> str:
        return self.article.text

    @classmethod
    def from_reply(cls, batch_id: str, token: str, now_ms: int, row: list[Any], gen: str = "") -> ClaimedJob:
        """From one claimed job of claim.lua's reply (contract/schema.py CLAIMED)."""
        c = CLAIMED.read(row)
        first_ms = int(float(c["first_failure_ms"]))
        flat = c["partials"]
        partials = {text(k): text(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}
        return cls(
            batch_id=batch_id,
            job_id=text(c["id"]),
            token=token,
            article=Article.unpack(c["article"]),
            attempts=int(c["attempts"]),
            unusable=int(c["unusable"]),
            deferrals=int(c["deferrals"]),
            failing_for=(now_ms - first_ms) / 1000 if first_ms else None,
            bill=Bill(int(c["prompt_tokens"]), int(c["completion_tokens"]), float(c["cost_usd"])),
            partials=partials,
            cache_key=text(c["cache_key"]),
            gen=gen,
        )
