"""The job record: what a job is in Redis and what `summarize results` returns for it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """A job's status in Redis; the Lua scripts in store.py are the only code that changes it."""

    QUEUED = "queued"  # a message is (or should be) on the queue
    RUNNING = "running"  # a worker holds a lease on it
    DEFERRED = "deferred"  # handed back after transient failures; the reaper requeues it when due
    DONE = "done"
    FAILED = "failed"


COUNTERS = ("total", "queued", "running", "done", "failed")


@dataclass(frozen=True)
class ClaimedJob:
    """What a worker gets when it takes a job: enough to call the LLM and to report back."""

    batch_id: str
    job_id: str
    token: str
    text: str
    model: str
    max_words: int
    attempts: int
    deferrals: int
    first_failure: float | None
    halted: str


@dataclass(frozen=True)
class JobResult:
    """One line of `summarize results`: stable public field names."""

    id: str
    status: str
    summary: str | None
    error: str | None
    model: str | None
    usage: dict[str, int] | None
    attempts: int
    metadata: dict[str, Any] = field(default_factory=dict)
    error_type: str | None = None

    @classmethod
    def from_hash(cls, job_id: str, h: dict[str, str]) -> JobResult:
        usage = json.loads(h["usage"]) if h.get("usage") else None
        return cls(
            id=job_id,
            status=h.get("status", "missing"),
            summary=h.get("summary") or None,
            error=h.get("error") or None,
            model=h.get("model") or None,
            usage=usage,
            attempts=int(h.get("attempts") or 0),
            metadata=json.loads(h["meta"]) if h.get("meta") else {},
            error_type=h.get("error_type") or None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "summary": self.summary,
            "error": self.error,
            "error_type": self.error_type,
            "model": self.model,
            "usage": self.usage,
            "attempts": self.attempts,
            "metadata": self.metadata,
        }
