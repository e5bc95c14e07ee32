"""What each worker process knows of the batches it is working on: spec and generation, cache
fingerprint, and state (running, paused, cancelled, halted), the state at most a second old.

These are copies: they save work, they decide nothing. A copy belongs to one generation of a batch
(a batch purged and made again under its id is another batch: claim.lua answers 'stale' and the copy
is dropped), and whether a request may leave is decided on Redis' state by send.lua right before it
does."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis.asyncio

from contract.errors import BatchCancelled, BatchNotFound, BatchPaused, ProviderRejected
from contract.keys import Keys
from contract.prompt import cache_key, fingerprint
from contract.record import text
from contract.spec import BatchSpec

__all__ = ["MAX_AGE", "BatchState", "Batches", "cache_key", "fingerprint", "raise_for"]

#: how stale a batch's state may be
MAX_AGE = 1.0


@dataclass
class BatchState:
    state: str = "running"
    halt: str = ""
    checked: float = 0.0


class Batches:
    def __init__(self, client: redis.asyncio.Redis, keys: Keys, base_url: str) -> None:
        self.r, self.keys, self.base_url = client, keys, base_url
        #: batch id -> (generation, spec revision, spec)
        self._specs: dict[str, tuple[str, str, BatchSpec]] = {}
        self._fingerprints: dict[str, str] = {}
        self._states: dict[str, BatchState] = {}
        #: (batch, model) pairs whose model answered 404: their jobs go straight to the fallback
        self._gone: set[tuple[str, str]] = set()

    async def spec(self, batch_id: str) -> tuple[str, str, BatchSpec]:
        """(generation, spec revision, spec) of the batch, read once per generation and revision."""
        known = self._specs.get(batch_id)
        if known is None:
            raw, gen, rev = await self.r.hmget(self.keys.batch(batch_id), ["spec", "gen", "rev"])
            if raw is None:
                raise BatchNotFound(batch_id)  # a stale message of a batch purged or expired
            known = (text(gen or b""), text(rev or b"0"), BatchSpec.from_json(text(raw)))
            self._specs[batch_id] = known
        return known

    def forget(self, batch_id: str) -> None:
        """Drop every copy of the batch (claim.lua said it is another generation now)."""
        self._specs.pop(batch_id, None)
        self._fingerprints.pop(batch_id, None)
        self._states.pop(batch_id, None)
        self._gone = {(b, m) for b, m in self._gone if b != batch_id}

    def fingerprint_of(self, spec: BatchSpec) -> str:
        """The fingerprint of a spec that is not the batch's own (its fallback model's)."""
        return fingerprint(spec, self.base_url)

    def fingerprint(self, batch_id: str, spec: BatchSpec) -> str:
        if batch_id not in self._fingerprints:
            self._fingerprints[batch_id] = fingerprint(spec, self.base_url)
        return self._fingerprints[batch_id]

    async def state(self, batch_id: str) -> BatchState:
        st = self._states.setdefault(batch_id, BatchState())
        now = time.monotonic()
        if now - st.checked > MAX_AGE:
            state, halt = await self.r.hmget(self.keys.batch(batch_id), ["state", "halt"])
            st.state, st.halt, st.checked = text(state or b"running"), text(halt or b""), now
        return st

    def note(self, batch_id: str, state: str, halt: str = "") -> None:
        """Known here first (this process saw it happen): no need to wait for Redis."""
        st = self._states.setdefault(batch_id, BatchState())
        st.state, st.halt, st.checked = state, halt, time.monotonic()

    def mark_gone(self, batch_id: str, model: str) -> None:
        self._gone.add((batch_id, model))

    def is_gone(self, batch_id: str, model: str) -> bool:
        return (batch_id, model) in self._gone

    async def check(self, batch_id: str) -> None:
        """Raise if the batch's jobs must not make another request, by this process's copy of its state:
        spares a limiter booking; send.lua has the last word."""
        st = await self.state(batch_id)
        raise_for(batch_id, st.state, st.halt)


def raise_for(batch_id: str, state: str, detail: str) -> None:
    """The error that stops a job of a batch in `state` (halted, paused or cancelled); none for running."""
    if state == "halted":
        raise ProviderRejected(f"batch halted by an earlier provider error: {detail}")
    if state == "paused":
        raise BatchPaused(f"batch {batch_id} is paused" + (f" ({detail})" if detail else ""))
    if state == "cancelled":
        raise BatchCancelled(f"batch {batch_id} was cancelled")
