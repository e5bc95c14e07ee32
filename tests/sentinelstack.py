"""A Redis primary, its replica and three sentinels on loopback, as `compose --profile ha` runs them: for
tests/test_sentinel.py and bench/failover.py. Debian's redis-server runs a sentinel as
`redis-server sentinel.conf --sentinel` (the sentinel rewrites its own file, so each gets one)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from scripts.stack import Proc, Stack, free_port, port_open, wait_for

MASTER = "sumz-ha"
#: how long the sentinels take to call a silent primary down (quorum 2 of 3 then elect and promote)
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


@dataclass
class Sentinels:
    """The processes of one Sentinel setup, by port. `primary` is the one the sentinels name now."""

    stack: Stack
    ports: list[int]
    sentinel_ports: list[int]
    procs: dict[int, Proc] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        """REDIS_URL (its host is ignored behind Sentinel), the sentinels and the primary's name."""
        return {
            "REDIS_URL": "redis://127.0.0.1:1/0",
            "REDIS_SENTINELS": ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports),
            "REDIS_SENTINEL_MASTER": MASTER,
        }

    def primary(self) -> int:
        """The port of the primary a sentinel names now (the first that answers)."""
        for port in self.sentinel_ports:
            with contextlib.suppress(redis.RedisError):
                client = redis.Redis(port=port, socket_timeout=1)
                try:
                    addr: Any = client.sentinel_get_master_addr_by_name(MASTER)
                finally:
                    client.close()
                if addr:
                    return int(addr[1])
        raise AssertionError("no sentinel answers")

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=5)

    def role(self, port: int) -> str:
        c = self.client(port)
        try:
            return str(c.info("replication")["role"])
        finally:
            c.close()

    def wait_promoted(self, old: int, timeout: float = 30) -> int:
        """Until a sentinel names another primary than `old` and it answers as one; its port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError, AssertionError):
                port = self.primary()
                if port != old and self.role(port) == "master":
                    return port
            time.sleep(0.1)
        raise AssertionError(f"no replica promoted within {timeout}s")

    def wait_replica_of(self, port: int, primary: int, timeout: float = 30) -> None:
        """Until `port` replicates `primary` with its link up (a sentinel reconfigures a returning node)."""

        def linked() -> bool:
            c = self.client(port)
            try:
                info = c.info("replication")
            finally:
                c.close()
            return bool(
                info["role"] == "slave" and int(info["master_port"]) == primary and info["master_link_status"] == "up"
            )

        wait_for(linked, f"redis {port} replicating {primary}", timeout)

    def start_node(self, port: int, replica_of: int | None = None) -> Proc:
        """redis-server on `port` (its data directory kept across restarts), AOF on as the README asks."""
        extra = ["--replicaof", "127.0.0.1", str(replica_of)] if replica_of else []
        # A replica answers while it syncs; sentinel's announcements name 127.0.0.1, as the clients reach it.
        extra += ["--replica-announce-ip", "127.0.0.1"]
        proc = self.stack.redis(port, extra=extra)
        self.procs[port] = proc
        return proc

    def wait_synced(self, primary: int, replica: int, timeout: float = 15) -> None:
        """Until the replica has applied everything the primary has written so far."""
        p = self.client(primary)
        try:
            target = int(p.info("replication")["master_repl_offset"])
        finally:
            p.close()

        def caught_up() -> bool:
            c = self.client(replica)
            try:
                return int(c.info("replication")["slave_repl_offset"]) >= target
            finally:
                c.close()

        wait_for(caught_up, f"redis {replica} to catch up with {primary}", timeout)

    def kill9(self, port: int) -> None:
        self.procs[port].kill9()


def _sentinel_conf(path: Path, port: int, primary: int) -> Path:
    path.write_text(
        "\n".join(
            [
                f"port {port}",
                "bind 127.0.0.1",
                f"dir {path.parent}",
                f"sentinel monitor {MASTER} 127.0.0.1 {primary} 2",
                f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}",
                f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}",
                f"sentinel parallel-syncs {MASTER} 1",
                "sentinel announce-ip 127.0.0.1",
                "",
            ]
        )
    )
    return path


@contextlib.contextmanager
def sentinel_stack() -> Iterator[Sentinels]:
    """A primary, one replica and three sentinels (quorum 2); everything stopped at the end."""
    with Stack() as stack:
        primary, replica = free_port(), free_port()
        ha = Sentinels(stack, [primary, replica], [free_port() for _ in range(3)])
        ha.start_node(primary)
        ha.start_node(replica, replica_of=primary)
        ha.wait_replica_of(replica, primary)
        for port in ha.sentinel_ports:
            work = stack.workdir / f"sentinel-{port}"
            work.mkdir()
            conf = _sentinel_conf(work / "sentinel.conf", port, primary)
            proc = Proc(f"redis-sentinel-{port}", ["redis-server", str(conf), "--sentinel"], {}, work / "log")
            stack.procs.append(proc.start())
            wait_for(lambda p=port: port_open(p), "sentinel", 15, proc.popen)  # type: ignore[misc]
        # Every sentinel knows the replica and the other sentinels before a test kills anything.
        for port in ha.sentinel_ports:
            wait_for(lambda p=port: _sees_all(p), f"sentinel {port} to see the replica and 2 others", 30)  # type: ignore[misc]
        yield ha


def _sees_all(port: int) -> bool:
    c = redis.Redis(port=port, socket_timeout=1, decode_responses=True)
    try:
        info: Any = c.sentinel_master(MASTER)
    finally:
        c.close()
    return int(info["num-slaves"]) >= 1 and int(info["num-other-sentinels"]) >= 2
