"""What the Redis-backed unit tests share: a call of the worker's store on a fresh event loop."""

from __future__ import annotations

import asyncio
from typing import Any

from contract.redisconn import make_async_redis
from contract.settings import Settings
from worker.storage import WorkerStore


def worker_call(settings: Settings, fn: Any) -> Any:
    """Run `fn(WorkerStore)` on a fresh event loop, as a worker process would."""

    async def go() -> Any:
        client = make_async_redis(settings)
        try:
            return await fn(WorkerStore(client, settings))
        finally:
            await client.aclose()

    return asyncio.run(go())
