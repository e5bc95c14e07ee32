"""What each worker process knows of the batches it is working on: spec (never changes) and state
(running, paused, cancelled, halted), the state at most a second old, so a halt, pause or cancel
reaches every worker within about a second without a Redis call per request."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis.asyncio

from contract.errors import ProviderRejected
from contract.keys import Keys
from contract.spec import BatchSpec
from contract.store import text

#: how stale a batch's state may be
MAX_AGE = 1.0


@dataclass
class BatchState:
    state: str = "running"
    halt: str = ""
    checked: float = 0.0


class Batches:
    def __init__(self, client: redis.asyncio.Redis, keys: Keys) -> None:
        self.r, self.keys = client, keys
        self._specs: dict[str, BatchSpec] = {}
        self._states: dict[str, BatchState] = {}
        #: (batch, model) pairs whose model answered 404: their jobs go straight to the fallback
        self._gone: set[tuple[str, str]] = set()

    async def spec(self, batch_id: str) -> BatchSpec:
        spec = self._specs.get(batch_id)
        if spec is None:
            raw = await self.r.hget(self.keys.batch(batch_id), "spec")
            spec = self._specs[batch_id] = BatchSpec.from_json(text(raw))
        return spec

    async def state(self, batch_id: str) -> BatchState:
        st = self._states.setdefault(batch_id, BatchState())
        now = time.monotonic()
        if now - st.checked > MAX_AGE:
            state, halt = await self.r.hmget(self.keys.batch(batch_id), ["state", "halt"])
            st.state, st.halt, st.checked = text(state or b"running"), text(halt or b""), now
        return st

    def note(self, batch_id: str, state: str, halt: str = "") -> None:
        """Known here first (this process saw the provider reject the key): no need to wait for Redis."""
        self._states[batch_id] = BatchState(state, halt, time.monotonic())

    def mark_gone(self, batch_id: str, model: str) -> None:
        self._gone.add((batch_id, model))

    def is_gone(self, batch_id: str, model: str) -> bool:
        return (batch_id, model) in self._gone

    async def check(self, batch_id: str) -> None:
        """Raise if the batch's jobs must not make another request."""
        st = await self.state(batch_id)
        if st.state == "halted":
            raise ProviderRejected(f"batch halted by an earlier provider error: {st.halt}")
