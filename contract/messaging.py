"""The Celery side of the contract: one broker configuration and one way to publish job messages.

A message carries only (batch_id, [job_id, ...], priority step): article text stays in Redis, so
messages are tiny and Flower never shows article text or secrets. Up to SUMMARIZE_JOBS_PER_MESSAGE
jobs share a message because Celery's cost per message (receive, three events, ack) was most of a
job's CPU. Which jobs share a message is decided by the script that queues them (contract/lua/), which
also registers the message so a lost one is found (see reap.lua).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from celery import Celery

from .keys import PRIORITY_STEPS, Keys
from .redisconn import broker_url, kombu_broker, ssl_options
from .settings import Settings

TASK_NAME = "summarize.job"
#: batch mode: pack a batch's waiting jobs into provider batches; move one pack on; settle a finished one
PACK_TASK, POLL_TASK, FETCH_TASK = "summarize.pack", "summarize.poll", "summarize.fetch"
#: messages buffered into one Redis pipeline when publishing many at once (kombu >= 5.7 batches)
PUBLISH_CHUNK = 500


def broker_config(settings: Settings) -> dict[str, Any]:
    """Settings every process talking to the broker must agree on (the shortest visibility timeout wins)."""
    url, sentinel_options = kombu_broker(settings)
    conf: dict[str, Any] = {
        # a broker behind Sentinel: kombu's sentinel:// transport, which asks the sentinels for the primary
        # on every (re)connect, so workers follow a failover (see contract/redisconn.py kombu_broker)
        "broker_url": url,
        "broker_transport_options": {
            # Only a backstop: the reaper re-enqueues lost jobs long before this (see worker/housekeeping.py).
            "visibility_timeout": settings.visibility_timeout,
            "socket_keepalive": True,
            "socket_connect_timeout": 5,
            "health_check_interval": 30,
            # Every broker key and channel (queue, unacked, bindings, events) under our prefix: two
            # deployments on one Redis never take each other's messages.
            "global_keyprefix": Keys(settings.key_prefix, settings.queue).kombu_prefix,
            "priority_steps": list(PRIORITY_STEPS),
            **sentinel_options,
        },
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "task_default_queue": settings.queue,
        "task_serializer": "json",
        "accept_content": ["json"],
        # Results live in our own job records; Celery's result backend would only duplicate them.
        "task_ignore_result": True,
        "result_backend": None,
        "task_send_sent_event": True,
    }
    ssl = ssl_options(settings, broker_url(settings))
    if ssl:
        conf["broker_use_ssl"] = ssl
    return conf


def make_celery(settings: Settings, name: str = "summarize") -> Celery:
    app = Celery(name, set_as_current=False)
    app.conf.update(broker_config(settings))
    return app


def publish(app: Celery, settings: Settings, messages: Iterable[tuple[int, str]]) -> int:
    """Publish messages as the queueing scripts grouped them: (priority step, member), pipelined.

    Returns how many messages were sent.
    """
    sent = 0
    with app.producer_or_acquire() as producer, producer.batch(PUBLISH_CHUNK):
        for step, member in messages:
            batch_id, ids = Keys.split_member(member)
            args = (batch_id, ids, step)
            # Plain repr of ids is safe and far cheaper than Celery's saferepr; declaring the queue
            # once per call is enough (Celery would re-declare it per message).
            options: dict[str, Any] = {"declare": []} if sent else {}
            app.send_task(
                TASK_NAME,
                args=args,
                queue=settings.queue,
                producer=producer,
                priority=step,
                argsrepr=repr(args),
                kwargsrepr="{}",
                **options,
            )
            sent += 1
    return sent
