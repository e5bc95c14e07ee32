"""The Celery side of the contract: one broker configuration and one way to publish job messages.

A message carries only (batch_id, [job_id, ...]): article text stays in Redis, so messages are tiny and
Flower never shows article text or secrets. Up to SUMMARIZE_JOBS_PER_MESSAGE jobs share a message
because Celery's cost per message (receive, three events, ack) was most of a job's CPU.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

from celery import Celery

from .redisconn import ssl_options
from .settings import Settings

TASK_NAME = "summarize.job"
#: messages buffered into one Redis pipeline when publishing many at once (kombu >= 5.7 batches)
PUBLISH_CHUNK = 500


def broker_config(settings: Settings) -> dict[str, Any]:
    """Settings every process talking to the broker must agree on (the shortest visibility timeout wins)."""
    conf: dict[str, Any] = {
        "broker_url": settings.redis_url,
        "broker_transport_options": {
            # Only a backstop: the reaper re-enqueues lost jobs long before this (see worker/housekeeping.py).
            "visibility_timeout": settings.visibility_timeout,
            "socket_keepalive": True,
            "socket_connect_timeout": 5,
            "health_check_interval": 30,
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
    ssl = ssl_options(settings)
    if ssl:
        conf["broker_use_ssl"] = ssl
    return conf


def make_celery(settings: Settings, name: str = "summarize") -> Celery:
    app = Celery(name, set_as_current=False)
    app.conf.update(broker_config(settings))
    return app


def publish(app: Celery, settings: Settings, pairs: Iterable[tuple[str, str]]) -> int:
    """Publish (batch_id, job_id) pairs, consecutive jobs of a batch grouped per message, pipelined.

    Returns how many messages were sent.
    """
    sent = 0
    size = settings.jobs_per_message
    with app.producer_or_acquire() as producer, producer.batch(PUBLISH_CHUNK):
        for batch_id, group in itertools.groupby(pairs, key=lambda pair: pair[0]):
            ids = [job_id for _, job_id in group]
            for start in range(0, len(ids), size):
                args = (batch_id, ids[start:start + size])
                # Plain repr of ids is safe and far cheaper than Celery's saferepr; declaring the queue
                # once per call is enough (Celery would re-declare it per message).
                options: dict[str, Any] = {"declare": []} if sent else {}
                app.send_task(TASK_NAME, args=args, queue=settings.queue, producer=producer,
                              argsrepr=repr(args), kwargsrepr="{}", **options)
                sent += 1
    return sent
