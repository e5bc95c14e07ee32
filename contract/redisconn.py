"""Redis clients and Celery broker options built from Settings, TLS verified, reconnecting by themselves.

The store is REDIS_URL: a plain Redis, or a Redis Cluster for `redis+cluster://host:port` (any node; the
client finds the others), or the primary Redis Sentinel names (REDIS_SENTINELS, or a `redis+sentinel://`
URL): redis-py's Sentinel clients ask the sentinels where the primary is on every new connection, so after
a failover they reconnect to the promoted replica by themselves. The broker is SUMMARIZE_BROKER_URL, else
REDIS_URL: a plain Redis or one behind Sentinel (kombu's `sentinel://` transport), never a Cluster, since
kombu has no Cluster transport.

A demoted primary answers writes with READONLY and a restarting one with LOADING: both are reconnects (the
next connection finds the primary), never an error for the caller.
"""

from __future__ import annotations

import contextlib
import ssl
import time
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry

from .errors import BrokerUnavailable, EvictingRedis
from .settings import SENTINEL_SCHEMES, Settings, parse_sentinel_url, parse_sentinels, redact_url

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


@dataclass(frozen=True)
class SentinelTarget:
    """A Redis behind Sentinel: the sentinels, the name of the primary they watch, and the data nodes' URL
    (its credentials, database and scheme, rediss for TLS; its host is not used)."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    url: str

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "rediss"

    def credentials(self) -> dict[str, Any]:
        """username, password and db for the data nodes, from the URL."""
        parts = urlsplit(self.url)
        db = parts.path.strip("/") or "0"
        return {
            "username": _unquote(parts.username) or None,
            "password": _unquote(parts.password) or None,
            "db": int(db) if db.isdigit() else 0,
        }


def _unquote(value: str | None) -> str:
    return unquote(value) if value else ""


def sentinel_target(settings: Settings, url: str | None = None) -> SentinelTarget | None:
    """The Sentinel setup a URL (default: the store's) reaches its Redis through, or None for a plain URL.
    REDIS_SENTINELS applies to REDIS_URL (and so to the broker when SUMMARIZE_BROKER_URL is unset); a
    redis+sentinel:// URL carries its own sentinels."""
    url = str(url or settings.redis_url)
    if urlsplit(url).scheme in SENTINEL_SCHEMES:
        hosts, master, data = parse_sentinel_url(
            url, "REDIS_URL" if url == settings.redis_url else "SUMMARIZE_BROKER_URL"
        )
        return SentinelTarget(tuple(hosts), master, data)
    if settings.redis_sentinels and url == str(settings.redis_url):
        hosts = parse_sentinels(settings.redis_sentinels, "REDIS_SENTINELS")
        return SentinelTarget(tuple(hosts), settings.redis_sentinel_master, url)
    return None


def describe(settings: Settings) -> str:
    """The store's Redis as a message names it: its redacted URL, or the primary behind Sentinel."""
    target = sentinel_target(settings)
    if target is None:
        return redact_url(settings.redis_url)
    hosts = ",".join(f"{h}:{p}" for h, p in target.sentinels)
    return f"{target.master!r} (primary named by the sentinels {hosts})"


def _sentinel_node_options(settings: Settings, target: SentinelTarget) -> dict[str, Any]:
    """How the sentinels themselves are asked: quickly, and no retries (the next sentinel is the retry)."""
    opts: dict[str, Any] = {"socket_connect_timeout": 2, "socket_timeout": 2, "socket_keepalive": True}
    if settings.redis_sentinel_password:
        opts["password"] = str(settings.redis_sentinel_password)
    if target.tls:  # sentinels behind TLS too (tls-port in sentinel.conf), with the same CA
        opts.update(ssl=True, **ssl_options(settings, target.url))
    return opts


def kombu_broker(settings: Settings) -> tuple[str, dict[str, Any]]:
    """Celery's broker_url and the transport options it needs beyond ours: for a broker behind Sentinel,
    kombu's sentinel:// transport (`sentinel://h1:p1;sentinel://h2:p2`, the data nodes' password in each)
    with master_name and the sentinels' own options."""
    url = broker_url(settings)
    target = sentinel_target(settings, url)
    if target is None:
        return url, {}
    creds = target.credentials()
    auth = ""
    if creds["password"]:
        auth = f"{quote(creds['username'] or '', safe='')}:{quote(creds['password'], safe='')}@"
    urls = ";".join(f"sentinel://{auth}{host}:{port}/{creds['db']}" for host, port in target.sentinels)
    node = _sentinel_node_options(settings, target)
    node.pop("socket_keepalive", None)
    return urls, {"master_name": target.master, "sentinel_kwargs": node}


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
        # ReadOnlyError: a primary demoted under us (a managed Redis whose DNS name moved to the promoted
        # replica): the retry reconnects, and the new connection reaches the new primary. LOADING
        # (BusyLoadingError) is a ConnectionError already.
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError],
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


#: seconds between two asks of the sentinels, per pool, whether the primary moved (see _FollowingConnection)
PRIMARY_CHECK = 1.0


def _moved(pool: Any, host: str | None, port: int | None) -> bool:
    """Whether the sentinels' last answer (refreshed by the caller) names another primary than host:port."""
    return bool(pool.master_address) and pool.master_address != (host, port)


def _check_due(pool: Any) -> bool:
    """True at most once per PRIMARY_CHECK for the pool (one sentinel round trip a second, not per command)."""
    now = time.monotonic()
    if now - getattr(pool, "_summarize_checked", 0.0) < PRIMARY_CHECK:
        return False
    pool._summarize_checked = now
    return True


class _FollowingConnection(redis.sentinel.SentinelManagedConnection):
    """redis-py's Sentinel connection, made to follow the primary on an open connection too.

    - It asks where the primary is on *every* reconnect: its own connect() asks, but a command sent on a
      connection that dropped reconnects through connect_check_health() to the address it had, so a retry
      after a failover would knock on the dead primary until its attempts ran out.
    - Before a command, at most once a second per pool, it asks the sentinels whether the primary moved,
      and leaves a primary they no longer name. After a graceful failover (SENTINEL FAILOVER) the old
      primary stays writable for about 10 s, until a sentinel reconfigures it: writes sent there meanwhile
      would be lost when it resyncs as a replica (celery#6348: clients stuck on a demoted primary).
    """

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        # connect_to() (the path that already asked the sentinels) passes retry_socket_connect=False
        if not self._sock and retry_socket_connect and self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        super().connect_check_health(check_health, retry_socket_connect)  # type: ignore[no-untyped-call]

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        pool = self.connection_pool
        if self._sock and pool.is_master:
            if _check_due(pool):
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                    pool.get_master_address()  # also closes the pool's idle connections to a moved primary
            if _moved(pool, self.host, self.port):
                self.disconnect()  # reconnects below, to the primary the sentinels name
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


class _FollowingSSLConnection(_FollowingConnection, redis.SSLConnection):
    """_FollowingConnection over TLS."""


class _AsyncFollowingConnection(redis.asyncio.sentinel.SentinelManagedConnection):
    """The asyncio twin of _FollowingConnection."""

    async def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if not self.is_connected and retry_socket_connect and self.connection_pool.is_master:
            self.host, self.port = await self.connection_pool.get_master_address()
        await super().connect_check_health(check_health, retry_socket_connect)

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        pool = self.connection_pool
        if self.is_connected and pool.is_master:
            if _check_due(pool):
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                    await pool.get_master_address()
            if _moved(pool, self.host, self.port):
                await self.disconnect()
        await super().send_packed_command(command, check_health)


class _AsyncFollowingSSLConnection(_AsyncFollowingConnection, redis.asyncio.SSLConnection):
    """_AsyncFollowingConnection over TLS."""


class _BlockingSentinelPool(redis.sentinel.SentinelConnectionPool, redis.BlockingConnectionPool):
    """Sentinel's pool (asks where the primary is on each new connection) that waits for a free connection
    like our plain pools instead of failing when all `max_connections` are in use."""


class _AsyncBlockingSentinelPool(redis.asyncio.sentinel.SentinelConnectionPool, redis.asyncio.BlockingConnectionPool):
    """The asyncio twin of _BlockingSentinelPool."""


class _SentinelRedis(redis.Redis):
    """A client of the primary behind Sentinel whose close() also closes its connections to the sentinels."""

    def close(self) -> None:
        super().close()
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        if manager is not None:
            manager.close()


class _AsyncSentinelRedis(redis.asyncio.Redis):
    """The asyncio twin of _SentinelRedis."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        if manager is not None:
            await manager.aclose()


def _data_options(settings: Settings, target: SentinelTarget, decode: bool, asyncio: bool) -> dict[str, Any]:
    """The primary's connection options behind Sentinel: ours, its credentials, TLS as for a plain URL."""
    opts = {**_pool_options(settings, decode, target.url), **target.credentials()}
    if asyncio:
        opts["connection_class"] = _AsyncFollowingSSLConnection if target.tls else _AsyncFollowingConnection
    else:
        opts["connection_class"] = _FollowingSSLConnection if target.tls else _FollowingConnection
    return opts


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
    target = sentinel_target(settings, url)
    if target is not None:
        node = {**_sentinel_node_options(settings, target), "retry": Retry(NoBackoff(), 0)}
        sentinels = redis.sentinel.Sentinel(list(target.sentinels), sentinel_kwargs=node)  # type: ignore[no-untyped-call]
        return cast(
            redis.Redis,
            sentinels.master_for(  # type: ignore[no-untyped-call]
                target.master,
                redis_class=_SentinelRedis,
                connection_pool_class=_BlockingSentinelPool,
                max_connections=max_connections or 50,
                timeout=30,
                retry=retry,
                **_data_options(settings, target, decode, asyncio=False),
            ),
        )
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
            f"Redis at {describe(settings)} has maxmemory-policy {policy}: it may "
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
        raise BrokerUnavailable(f"Redis at {describe(settings)} rejected the credentials: {exc}") from None
    except redis.ResponseError as exc:
        # NOAUTH / WRONGPASS arrive as response errors on some servers.
        raise BrokerUnavailable(f"Redis at {describe(settings)} refused: {exc}") from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise BrokerUnavailable(f"Redis at {describe(settings)} is unreachable: {exc}") from None


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
    target = sentinel_target(settings, url)
    if target is not None:
        node = {**_sentinel_node_options(settings, target), "retry": AsyncRetry(NoBackoff(), 0)}
        sentinels = redis.asyncio.sentinel.Sentinel(list(target.sentinels), sentinel_kwargs=node)  # type: ignore[no-untyped-call]
        return cast(
            redis.asyncio.Redis,
            sentinels.master_for(  # type: ignore[no-untyped-call]
                target.master,
                redis_class=_AsyncSentinelRedis,
                connection_pool_class=_AsyncBlockingSentinelPool,
                max_connections=max_connections,
                timeout=30,
                retry=retry,
                **_data_options(settings, target, False, asyncio=True),
            ),
        )
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=30,
        retry=retry,
        **_pool_options(settings, decode=False, url=url),
    )
    return redis.asyncio.Redis(connection_pool=pool)


# ---- writes that survive a promotion -----------------------------------------------------------------------
# Replication is asynchronous: a write the primary acknowledged can be missing from the replica Sentinel
# promotes. WAIT n timeout blocks until n replicas acknowledged every write the connection it is sent on made
# so far (replication offsets are global, so every earlier write of any client too), or the timeout passed.


async def script_and_wait(
    client: redis.asyncio.Redis, script: Any, keys: list[Any], args: list[Any], replicas: int, timeout_ms: int
) -> tuple[Any, int]:
    """Run a registered script and WAIT in one pipeline: one round trip, one connection, so the WAIT covers
    the script's writes. Returns (the script's reply, replicas reached). A primary that does not have the
    script yet (just promoted: the script cache is not replicated) gets it loaded, then the pair is sent again."""
    for attempt in range(2):
        async with client.pipeline(transaction=False) as p:
            p.evalsha(script.sha, len(keys), *keys, *args)
            p.execute_command("WAIT", replicas, timeout_ms)
            try:
                reply, reached = await p.execute()
            except redis.exceptions.NoScriptError:
                if attempt:
                    raise
                await client.script_load(script.script)
                continue
        return reply, int(reached)
    raise AssertionError("unreachable")


def primary_address(client: Any) -> Any:
    """The primary the client's Sentinel pool last heard of, or None (a plain URL; a Cluster client has no
    one pool)."""
    return getattr(getattr(client, "connection_pool", None), "master_address", None)


def primary_moved(client: redis.Redis, before: Any) -> bool:
    """Asks the sentinels now: do they name another primary than `before` (primary_address() taken before a
    write)? Then that write may have gone to a primary demoted meanwhile and must be sent again."""
    pool: Any = client.connection_pool
    if before is None or not hasattr(pool, "get_master_address"):
        return False
    with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
        return bool(pool.get_master_address() != before)
    return False


async def primary_moved_async(client: redis.asyncio.Redis, before: Any) -> bool:
    """The asyncio twin of primary_moved."""
    pool: Any = client.connection_pool
    if before is None or not hasattr(pool, "get_master_address"):
        return False
    with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
        return bool(await pool.get_master_address() != before)
    return False


def pinned(client: redis.Redis) -> redis.Redis:
    """A client on one connection of `client`'s pool for as long as it lives (close() gives it back): a WAIT
    sent through it covers the writes sent before it through it."""
    return redis.Redis(connection_pool=client.connection_pool, single_connection_client=True)


def wait_replicas(client: redis.Redis, replicas: int, timeout_ms: int) -> int:
    """WAIT on a pinned client's connection (see pinned()); how many replicas acknowledged its writes. Never
    retried: a WAIT sent again on a new connection (to a new primary) covers none of the writes it was for,
    so a connection lost here raises redis.ConnectionError and the caller writes again."""
    conn = cast(Any, client).connection
    sock = conn._sock
    conn.send_command("WAIT", replicas, timeout_ms)
    if conn._sock is not sock:  # reconnected (to a primary that moved): this WAIT covers none of the writes
        conn.disconnect()  # its reply unread: the next command starts on a clean connection
        raise redis.ConnectionError("the primary moved before WAIT")
    return int(conn.read_response())
