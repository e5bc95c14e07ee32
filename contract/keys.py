"""Every Redis key the project touches is named here and nowhere else."""

from __future__ import annotations

import re
from dataclasses import dataclass

BATCH_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SEP = ":"


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix, so several deployments can share a Redis."""

    prefix: str = "sumz"

    def job(self, batch_id: str, job_id: str) -> str:
        """Hash: one job's state, article text (until done), summary and error."""
        return f"{self.prefix}:job:{batch_id}:{job_id}"

    def batch(self, batch_id: str) -> str:
        """Hash: batch options and per-status counters (total, queued, running, done, failed)."""
        return f"{self.prefix}:batch:{batch_id}"

    def batch_ids(self, batch_id: str) -> str:
        """Sorted set: job ids of a batch, scored by input position so results keep input order."""
        return f"{self.prefix}:batch:{batch_id}:ids"

    def dead(self, batch_id: str) -> str:
        """Set: ids of the batch's jobs that failed for good (the dead-letter set)."""
        return f"{self.prefix}:batch:{batch_id}:dead"

    def halt(self, batch_id: str) -> str:
        """String: the provider error (bad key, unknown model) that stopped a batch."""
        return f"{self.prefix}:batch:{batch_id}:halt"

    @property
    def due(self) -> str:
        """Sorted set of `batch:job` for running and deferred jobs, scored by lease end or retry time."""
        return f"{self.prefix}:due"

    @property
    def orphans(self) -> str:
        """Sorted set of `batch:job` for queued jobs, scored by when to suspect their message was lost."""
        return f"{self.prefix}:orphans"

    @property
    def reaper_lock(self) -> str:
        """String: held by the one worker that reaps this round."""
        return f"{self.prefix}:reaper-lock"

    @property
    def rate(self) -> str:
        """Hash: the shared limiter's theoretical arrival times for requests and tokens."""
        return f"{self.prefix}:rate"

    @property
    def cooldown(self) -> str:
        """String with a TTL: set when the provider answered 429; every worker waits it out."""
        return f"{self.prefix}:cooldown"

    @property
    def stats(self) -> str:
        """Hash: lifetime counters (LLM calls, reclaims, redeliveries) for operators and tests."""
        return f"{self.prefix}:stats"

    @staticmethod
    def broker_queue(queue: str) -> str:
        """List: kombu's Redis transport keeps a queue's messages under the queue's own name (priority 0)."""
        return queue

    @staticmethod
    def member(batch_id: str, job_id: str) -> str:
        # Batch ids can't contain ':' (BATCH_ID_RE), so the first ':' splits the pair unambiguously.
        return f"{batch_id}{SEP}{job_id}"

    @staticmethod
    def split_member(member: str) -> tuple[str, str]:
        batch_id, _, job_id = member.partition(SEP)
        return batch_id, job_id
