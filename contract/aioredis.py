"""The worker's Redis client on its event loop (apart from contract/redisconn.py so the producer's commands
never pay for importing redis.asyncio)."""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff

from .redisconn import RECONNECT_ATTEMPTS, _permanent, _pool_options
from .settings import Settings


class AsyncReconnectRetry(AsyncRetry):
    """The asyncio twin of ReconnectRetry."""

    async def call_with_retry(
        self,
        do: Any,
        fail: Any,
        is_retryable: Any = None,  # type: ignore[override]
        with_failure_count: bool = False,
    ) -> Any:
        def retryable(error: Exception) -> bool:
            return not _permanent(error) and (is_retryable is None or is_retryable(error))

        return await super().call_with_retry(do, fail, retryable, with_failure_count)  # type: ignore[call-arg]


def make_async_redis(settings: Settings, max_connections: int = 32) -> redis.asyncio.Redis:
    """The worker's client on its event loop: raw bytes (the job store's blobs), reconnecting by itself."""
    retry = AsyncReconnectRetry(ExponentialWithJitterBackoff(cap=2.0, base=0.1), RECONNECT_ATTEMPTS)
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=max_connections,
        timeout=30,
        retry=retry,
        **_pool_options(settings, decode=False),
    )
    return redis.asyncio.Redis(connection_pool=pool)
