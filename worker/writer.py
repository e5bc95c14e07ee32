"""Settles outcomes in batches: every op waiting when a write starts goes in that one script call.

At hundreds of jobs a second, a lone call per job would cost a Redis round trip each; gathering what
arrives within a few milliseconds makes it a fraction of one. A write that fails (Redis restarting) is
tried again until it lands, while the job's lease is still being renewed: its result is not lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import redis

from contract.ops import Op
from contract.store import Message

from .storage import WorkerStore

log = logging.getLogger(__name__)

#: how long a write waits for more ops to join it
LINGER = 0.004
MAX_OPS = 500


class Writer:
    def __init__(
        self, store: WorkerStore, publish: Callable[[list[Message]], Awaitable[None]], linger: float = LINGER
    ) -> None:
        self.store, self.publish, self.linger = store, publish, linger
        self._pending: list[tuple[Op, asyncio.Future[int]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="settle-writer")

    async def settle(self, op: Op) -> int:
        """Store the op; returns 1 if it was applied, 0 if the job was already settled or not ours."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((op, future))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if len(self._pending) < MAX_OPS:
                await asyncio.sleep(self.linger)
            self._wake.clear()
            batch, self._pending = self._pending[:MAX_OPS], self._pending[MAX_OPS:]
            if self._pending:
                self._wake.set()
            await self._write(batch)

    async def _write(self, batch: list[tuple[Op, asyncio.Future[int]]]) -> None:
        delay = 0.5
        while True:
            try:
                applied, messages = await self.store.settle([op for op, _ in batch])
            except redis.RedisError as exc:
                log.warning("settling %d job(s) failed (%s); trying again in %.1fs", len(batch), exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            for (_, future), result in zip(batch, applied, strict=True):
                if not future.done():
                    future.set_result(result)
            if messages:  # twins whose leader did not answer: one of them makes the call now
                await self.publish(messages)
            return

    async def close(self) -> None:
        """Write what is pending, then stop."""
        while self._pending:
            batch, self._pending = self._pending[:MAX_OPS], self._pending[MAX_OPS:]
            await self._write(batch)
        if self._task is not None:
            self._task.cancel()
