"""The Python API for scripts:

    from producer import Client
    batch = Client().submit(["text one", {"id": "a2", "text": "text two", "url": "..."}])
    batch.wait(progress=True)
    for result in batch.results():
        print(result.id, result.summary)
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from contract.errors import ConfigError
from contract.job import JobResult
from contract.keys import BATCH_ID_RE
from contract.messaging import make_celery, publish
from contract.redisconn import check_reachable, make_redis
from contract.settings import Settings
from contract.store import JobStore

from . import reader
from .progress import ProgressBar
from .submit import SubmitReport, check_or_raise, enqueue


def new_batch_id() -> str:
    return f"b{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


class Batch:
    """A handle on one batch: status, wait, results, retry."""

    def __init__(self, client: Client, batch_id: str, report: SubmitReport | None = None) -> None:
        self.client, self.id, self.report = client, batch_id, report

    def status(self) -> dict[str, Any]:
        return self.client.store.status(self.id)

    def wait(self, timeout: float | None = None, progress: bool = False, poll: float = 0.5) -> dict[str, Any]:
        """Block until every job is done or failed; raises TimeoutError with the last status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        status = self.status()
        bar = ProgressBar(f"batch {self.id}", status["total"]) if progress else None
        try:
            while True:
                finished = status["done"] + status["failed"]
                if bar:
                    bar.update(finished, f"running {status['running']} failed {status['failed']}")
                if finished >= status["total"]:
                    return status
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"batch {self.id} not finished after {timeout}s: {status}")
                time.sleep(poll)
                status = self.status()
        finally:
            if bar:
                bar.close()

    def results(self) -> Iterator[JobResult]:
        return self.client.store.results(self.id)

    def retry(self) -> int:
        """Requeue the batch's failed jobs (the dead-letter set); returns how many."""
        ids = self.client.store.retry_failed(self.id)
        publish(self.client.celery, self.client.settings, ((self.id, j) for j in ids))
        return len(ids)


class Client:
    """Talks to Redis and the broker only: importing it never loads the worker or the LLM client."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        check_reachable(self.settings)
        self.redis = make_redis(self.settings, max_connections=8)
        self.store = JobStore(self.redis, self.settings)
        self.celery = make_celery(self.settings, "producer")

    def batch(self, batch_id: str) -> Batch:
        self.store.require_batch(batch_id)
        return Batch(self, batch_id)

    def submit(
        self,
        items: Iterable[str | dict[str, Any]],
        batch_id: str | None = None,
        model: str | None = None,
        max_words: int | None = None,
        skip_invalid: bool = False,
        progress: bool = False,
    ) -> Batch:
        """Submit texts or dicts ({'text', optional 'id', anything else kept as metadata})."""
        if isinstance(items, str | bytes | dict):
            raise ConfigError("submit() takes an iterable of articles; wrap a single text or dict in a list")
        with reader.opened_items(items, self.settings.max_article_bytes) as source:
            return self._submit(source.records_raw, batch_id, model, max_words, skip_invalid, progress)

    def submit_path(self, path: str, batch_id: str | None = None, model: str | None = None,
                    max_words: int | None = None, skip_invalid: bool = False, progress: bool = False,
                    stop: threading.Event | None = None) -> Batch:
        """Submit a JSONL file, a directory of .txt/.md files, or '-' for JSONL on stdin.

        Setting `stop` ends the submit after the chunk in flight; the same call again resumes it.
        """
        with reader.opened(path, self.settings.max_article_bytes) as source:
            return self._submit(source.records_raw, batch_id, model, max_words, skip_invalid, progress, stop)

    def _submit(self, make: Any, batch_id: str | None, model: str | None, max_words: int | None,
                skip_invalid: bool, progress: bool, stop: threading.Event | None = None) -> Batch:
        batch_id = batch_id or new_batch_id()
        if not BATCH_ID_RE.match(batch_id):
            raise ConfigError(f"batch id {batch_id!r} must match {BATCH_ID_RE.pattern}")
        should_stop = stop.is_set if stop is not None else (lambda: False)
        total = check_or_raise(reader.with_duplicates_marked(make()), skip_invalid, should_stop)
        bar = ProgressBar(f"submit {batch_id}", total) if progress else None
        sent = 0

        def tick(n: int) -> None:
            nonlocal sent
            sent += n
            if bar:
                bar.update(sent)

        report = enqueue(self.store, self.celery, batch_id, reader.with_duplicates_marked(make()),
                         model or self.settings.model, max_words or self.settings.max_words, skip_invalid, tick,
                         should_stop)
        if bar:
            bar.close()
        return Batch(self, batch_id, report)

    def close(self) -> None:
        self.redis.close()
        self.celery.close()


def submit(items: Iterable[str | dict[str, Any]], **kwargs: Any) -> Batch:
    """Shortcut: Client().submit(...) with settings from the environment."""
    return Client().submit(items, **kwargs)
