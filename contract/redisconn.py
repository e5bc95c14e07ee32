"""Redis clients and Celery broker options built from Settings, TLS verified, reconnecting by themselves."""

from __future__ import annotations

import ssl
from typing import Any

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from .errors import BrokerUnavailable, EvictingRedis
from .settings import Settings, redact_url

#: Connection errors are retried by redis-py itself, with backoff capped at 2 s, about 18 s in all: a
#: Redis restart or failover of a few seconds is invisible to callers.
RECONNECT_ATTEMPTS = 12


def _permanent(error: BaseException) -> bool:
    """Errors no reconnect can cure: wrong credentials, a certificate that doesn't verify."""
    if isinstance(error, redis.AuthenticationError):
        return True
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class ReconnectRetry(Retry):
    """redis-py's Retry, minus retrying what can't get better (AuthenticationError is a ConnectionError)."""

    def call_with_retry(self, do: Any, fail: Any, is_retryable: Any = None, with_failure_count: bool = False) -> Any:
        def retryable(error: Exception) -> bool:
            return not _permanent(error) and (is_retryable is None or is_retryable(error))

        return super().call_with_retry(do, fail, retryable, with_failure_count)


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


def ssl_options(settings: Settings) -> dict[str, Any]:
    """TLS options for rediss:// URLs with certificate checks on (kombu otherwise silently disables them)."""
    if not settings.redis_url.startswith("rediss://"):
        return {}
    opts: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if settings.redis_ca_certs:
        opts["ssl_ca_certs"] = settings.redis_ca_certs
    if settings.redis_certfile:
        opts["ssl_certfile"] = settings.redis_certfile
    if settings.redis_keyfile:
        opts["ssl_keyfile"] = settings.redis_keyfile
    return opts


def _pool_options(settings: Settings, decode: bool) -> dict[str, Any]:
    return {
        "decode_responses": decode,
        "health_check_interval": 30,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
        **ssl_options(settings),
    }


def make_redis(
    settings: Settings, max_connections: int | None = None, attempts: int = RECONNECT_ATTEMPTS, decode: bool = True
) -> redis.Redis:
    """A client whose pool suits `max_connections` threads; blocks for a connection instead of failing.

    decode=False for the job store: articles and summaries are stored compressed.
    """
    retry = ReconnectRetry(ExponentialWithJitterBackoff(cap=2.0, base=0.1), attempts)
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=max_connections or 50,
        timeout=30,
        retry=retry,
        **_pool_options(settings, decode),
    )
    return redis.Redis(connection_pool=pool)


def check_eviction(client: redis.Redis, settings: Settings) -> None:
    """Refuse a Redis that may evict keys: it would silently drop jobs, as Sidekiq warns.

    CONFIG GET may be disabled on managed services; INFO memory says the same.
    """
    if settings.allow_eviction:
        return
    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
    except redis.ResponseError:
        policy = None
    if policy is None:
        policy = client.info("memory").get("maxmemory_policy")
    if isinstance(policy, bytes):
        policy = policy.decode()
    if policy is not None and policy != "noeviction":
        raise EvictingRedis(
            f"Redis at {redact_url(settings.redis_url)} has maxmemory-policy {policy}: it may "
            "evict jobs. Set `maxmemory-policy noeviction`, or SUMMARIZE_ALLOW_EVICTION=true "
            "to run anyway"
        )


def check_reachable(settings: Settings) -> None:
    """A quick first contact (a second or so of retries) so a wrong URL is reported at once, not after the
    long reconnect budget meant for restarts in the middle of work. Also refuses an evicting Redis."""
    probe = make_redis(settings, max_connections=1, attempts=2)
    try:
        ping(probe, settings)
        check_eviction(probe, settings)
    finally:
        probe.close()


def ping(client: redis.Redis, settings: Settings) -> None:
    """Fail early with a clear message when Redis is unreachable or rejects the credentials."""
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise BrokerUnavailable(f"Redis at {redact_url(settings.redis_url)} rejected the credentials: {exc}") from None
    except redis.ResponseError as exc:
        # NOAUTH / WRONGPASS arrive as response errors on some servers.
        raise BrokerUnavailable(f"Redis at {redact_url(settings.redis_url)} refused: {exc}") from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise BrokerUnavailable(f"Redis at {redact_url(settings.redis_url)} is unreachable: {exc}") from None


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
