"""What the Redis-backed unit tests share: a call of the worker's store on a fresh event loop."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from contract.redisconn import make_async_redis
from contract.settings import Settings
from worker.storage import WorkerStore


def unit_settings(redis_url: str) -> Settings:
    """A deployment of its own (a fresh key prefix) on the session's Redis, with short leases and reaps."""
    return Settings.from_dsn(
        redis_url,
        key_prefix=f"u{uuid.uuid4().hex[:6]}",
        lease_seconds=0.5,
        queued_grace=0.2,
        jobs_per_message=2,
        reap_interval=0.1,
    )


def worker_call(settings: Settings, fn: Any) -> Any:
    """Run `fn(WorkerStore)` on a fresh event loop, as a worker process would."""

    async def go() -> Any:
        client = make_async_redis(settings)
        try:
            return await fn(WorkerStore(client, settings))
        finally:
            await client.aclose()

    return asyncio.run(go())
