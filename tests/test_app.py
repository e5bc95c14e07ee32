"""worker/app.py: the Celery app's own fixes. kombu 5.7 touching a channel whose connection Celery dropped
(Redis restarted with messages delivered, not acked) must not raise: the worker would exit with
"Unrecoverable error" instead of reconnecting."""

from __future__ import annotations

import socket
import subprocess
import time
from typing import Any

from kombu import Connection
from kombu.message import Message

import worker.app  # noqa: F401  (applies the fix)
from tests.helpers import wait_until


def delivered_then_redis_gone(queue_name: str) -> tuple[Connection, Any, Message]:
    """A message delivered and not acked on a real redis-server, which is then stopped: (connection, the
    queue, the message)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
    )
    try:
        conn = Connection(f"redis://127.0.0.1:{port}/0")
        wait_until(lambda: _up(conn), 10, "redis-server up")
        queue = conn.SimpleQueue(queue_name)
        queue.put({"job": 1})
        message = queue.get(timeout=5)  # delivered, not acked
    finally:
        server.terminate()
        server.wait(10)
    return conn, queue, message


def test_closing_a_channel_after_redis_went_away_with_unacked_messages_does_not_raise() -> None:
    conn, queue, _ = delivered_then_redis_gone("unacked-on-close")
    conn.transport.client = None  # what Celery's consumer leaves when it drops the broken connection
    queue.channel.close()  # kombu 5.7 alone: AttributeError 'NoneType' object has no attribute 'hostname'


def test_acking_a_task_that_finished_after_the_connection_was_dropped_does_not_raise() -> None:
    _, _, message = delivered_then_redis_gone("ack-after-loss")
    channel: Any = message.channel  # the channel Celery dropped with the broken connection: no pool, no transport
    channel._disconnect_pools()
    channel.connection = None
    message.ack()  # kombu 5.7 alone: AttributeError 'NoneType' object has no attribute 'client'


def _up(conn: Connection) -> bool:
    try:
        conn.ensure_connection(max_retries=1)
        return True
    except Exception:
        time.sleep(0.1)
        return False
