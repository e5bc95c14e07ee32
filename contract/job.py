"""The job: its statuses, what a worker gets when it claims one, and what it reports back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .record import Article, text


class Status(StrEnum):
    """A job's status in Redis; only the Lua scripts in contract/lua/ change it."""

    QUEUED = "queued"  # a message is (or should be) on the queue
    RUNNING = "running"  # a worker holds a lease on it
    DEFERRED = "deferred"  # handed back after transient failures; the reaper requeues it when due
    PARKED = "parked"  # its batch is paused; resume republishes it
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: public counters of a batch; deferred and parked jobs count as queued
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
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: summaries of a long article's parts from earlier runs (key -> summary)
    partials: dict[str, str] = field(default_factory=dict)
    #: the result-cache key its answer is stored under ('' when the batch does not use the cache)
    cache_key: str = ""
    #: what earlier runs cost in USD (None: some call's price was unknown)
    cost_usd: float | None = 0.0
    #: the generation of the batch it was claimed in (see contract/lua/init_batch.lua)
    gen: str = ""

    @property
    def text(self) -> str:
        return self.article.text

    @classmethod
    def from_reply(cls, batch_id: str, token: str, now_ms: int, row: list[Any], gen: str = "") -> ClaimedJob:
        """From one `{id, 'claimed', article, attempts, unusable, deferrals, first_failure, pt, ct, partials, key}`."""
        job_id, _, blob, attempts, unusable, deferrals, first, pt, ct, flat, key, cost = row
        first_ms = int(float(first))
        partials = {text(flat[i]): text(flat[i + 1]) for i in range(0, len(flat), 2)}
        return cls(
            batch_id=batch_id,
            job_id=text(job_id),
            token=token,
            article=Article.unpack(blob),
            attempts=int(attempts),
            unusable=int(unusable),
            deferrals=int(deferrals),
            failing_for=(now_ms - first_ms) / 1000 if first_ms else None,
            prompt_tokens=int(pt),
            completion_tokens=int(ct),
            partials=partials,
            cache_key=text(key),
            cost_usd=None if float(cost) < 0 else float(cost),
            gen=gen,
        )
