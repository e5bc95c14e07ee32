"""Redis clients and Celery broker options built from Settings, TLS verified, reconnecting by themselves.

The store is REDIS_URL: a plain Redis, or a Redis Cluster for `redis+cluster://host:port` (any node; the
client finds the others). The broker is SUMMARIZE_BROKER_URL, else REDIS_URL: always a plain Redis, since
kombu has no Cluster transport.
"""

from __future__ import annotations

import ssl
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
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


def broker_url(settings: Settings) -> str:
    """Where Celery's broker is: SUMMARIZE_BROKER_URL, else the store's REDIS_URL."""
    return str(settings.broker_url or settings.redis_url)


def is_cluster(url: str) -> bool:
    return urlsplit(url).scheme in ("redis+cluster", "rediss+cluster")


def _plain_url(url: str) -> str:
    """redis+cluster://h:p -> redis://h:p (what redis-py's RedisCluster.from_url takes)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme=parts.scheme.replace("+cluster", "")))


def ssl_options(settings: Settings, url: str | None = None) -> dict[str, Any]:
    """TLS options for rediss:// URLs with certificate checks on (kombu otherwise silently disables them)."""
    if not urlsplit(url or settings.redis_url).scheme.startswith("rediss"):
        return {}
    opts: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if settings.redis_ca_certs:
        opts["ssl_ca_certs"] = settings.redis_ca_certs
    if settings.redis_certfile:
        opts["ssl_certfile"] = settings.redis_certfile
    if settings.redis_keyfile:
        opts["ssl_keyfile"] = settings.redis_keyfile
    return opts


def _pool_options(settings: Settings, decode: bool, url: str | None = None) -> dict[str, Any]:
    return {
        "decode_responses": decode,
        "health_check_interval": 30,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
        **ssl_options(settings, url),
    }


def _cluster_options(settings: Settings, decode: bool, url: str, max_connections: int) -> dict[str, Any]:
    # RedisCluster keeps a pool per node and follows MOVED/ASK itself; it takes no pool of ours.
    return {
        "decode_responses": decode,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "max_connections": max_connections,
        **ssl_options(settings, url),
    }


def make_redis(
    settings: Settings,
    max_connections: int | None = None,
    attempts: int = RECONNECT_ATTEMPTS,
    decode: bool = True,
    url: str | None = None,
) -> redis.Redis:
    """A client whose pool suits `max_connections` threads; blocks for a connection instead of failing.

    decode=False for the job store: articles and summaries are stored compressed. `url`: another Redis
    than the store's (the broker's). A Cluster URL gives a RedisCluster, typed as Redis: it answers every
    command the store sends (its keys share one hash tag, contract/keys.py).
    """
    url = url or settings.redis_url
    retry = ReconnectRetry(ExponentialWithJitterBackoff(cap=2.0, base=0.1), attempts)
    if is_cluster(url):
        client = redis.cluster.RedisCluster.from_url(
            _plain_url(url), retry=retry, **_cluster_options(settings, decode, url, max_connections or 50)
        )
        return cast(redis.Redis, client)
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections or 50,
        timeout=30,
        retry=retry,
        **_pool_options(settings, decode, url),
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


def make_async_redis(settings: Settings, max_connections: int = 32, url: str | None = None) -> redis.asyncio.Redis:
    """The worker's client on its event loop: raw bytes (the job store's blobs), reconnecting by itself.
    `url`: another Redis than the store's (the broker's); a Cluster URL gives an asyncio RedisCluster."""
    url = url or settings.redis_url
    retry = AsyncReconnectRetry(ExponentialWithJitterBackoff(cap=2.0, base=0.1), RECONNECT_ATTEMPTS)
    if is_cluster(url):
        client = redis.asyncio.cluster.RedisCluster.from_url(
            _plain_url(url), retry=retry, **_cluster_options(settings, False, url, max_connections)
        )
        return cast(redis.asyncio.Redis, client)
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=30,
        retry=retry,
        **_pool_options(settings, decode=False, url=url),
    )
    return redis.asyncio.Redis(connection_pool=pool)
