"""worker/app.py: the Celery app's own fixes. A kombu 5.7 channel closed after Celery dropped a broken
broker connection (Redis restarted with messages delivered, not acked) must not raise: the worker would
exit with "Unrecoverable error" instead of reconnecting."""

from __future__ import annotations

import subprocess
import time
from typing import Any

from kombu import Connection

import worker.app  # noqa: F401  (applies the fix)
from tests.helpers import wait_until


def test_closing_a_channel_after_redis_went_away_with_unacked_messages_does_not_raise() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
    )
    try:
        conn = Connection(f"redis://127.0.0.1:{port}/0")
        wait_until(lambda: _up(conn), 10, "redis-server up")
        queue = conn.SimpleQueue("unacked-on-close")
        queue.put({"job": 1})
        queue.get(timeout=5)  # delivered, not acked: kombu will try to restore it on close
    finally:
        server.terminate()
        server.wait(10)
    conn.transport.client = None  # what Celery's consumer leaves when it drops the broken connection
    queue.channel.close()  # type: ignore[attr-defined]  # kombu 5.7 alone: AttributeError 'NoneType' object has no attribute 'hostname'


def _up(conn: Connection) -> bool:
    try:
        conn.ensure_connection(max_retries=1)
        return True
    except Exception:
        time.sleep(0.1)
        return False


def test_acking_a_task_that_finished_after_the_connection_was_dropped_does_not_raise() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
    )
    try:
        conn = Connection(f"redis://127.0.0.1:{port}/0")
        wait_until(lambda: _up(conn), 10, "redis-server up")
        queue = conn.SimpleQueue("ack-after-loss")
        queue.put({"job": 1})
        message = queue.get(timeout=5)
    finally:
        server.terminate()
        server.wait(10)
    channel: Any = message.channel  # the channel Celery dropped with the broken connection: no pool, no transport
    channel._disconnect_pools()
    channel.connection = None
    message.ack()  # kombu 5.7 alone: AttributeError 'NoneType' object has no attribute 'client'
