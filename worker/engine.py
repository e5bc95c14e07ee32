"""One asyncio event loop per worker process runs every job of every message as a coroutine.

A Celery task is a thin bridge: it hands its message to the loop and waits for the outcome (see
worker/tasks.py). On the loop, a message is claimed in one script call, its jobs run side by side
(at most SUMMARIZE_CONCURRENCY LLM requests in flight for the whole process), and their outcomes are
stored by the writer, many per call. Hundreds of requests in flight cost one thread, not hundreds
contending for the GIL.

A message must not hold capacity for its slowest job: threads are many and cheap (each only waits on a
future; worker/app.py gives one per message the claim bound admits), so while messages wait for their one
slow job each, the next ones are claimed and every slot is fed from leased work. The claim gate (ClaimGate)
keeps the process's claimed-and-unfinished jobs below SUMMARIZE_CONCURRENCY x (1 + SUMMARIZE_CLAIM_AHEAD)
whatever the messages' sizes; a finished job gives its room back at once, not when its message ends.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

import redis
from celery import Celery

from contract import checks
from contract.errors import (
    BatchCancelled,
    BatchNotFound,
    BatchPaused,
    ContextExceeded,
    HandBack,
    MalformedResponse,
    PermanentLLMError,
    ProviderRejected,
    RunLost,
    TransientLLMError,
)
from contract.job import ClaimedJob
from contract.messaging import publish
from contract.ops import Part, Run
from contract.redisconn import make_async_redis
from contract.settings import Settings
from contract.spec import BatchSpec
from contract.store import Message

from . import llm, metrics, outcome
from .account import JobAccount
from .batches import Batches, cache_key
from .context import ContextWindows
from .housekeeping import Housekeeper, Leases
from .ratelimit import RateLimiter
from .storage import Claimed, WorkerStore
from .summarize import Fit, Provider, Summary, Tally, summarize
from .writer import Writer

log = logging.getLogger(__name__)

#: articles longer than this have their summary's checks (contract/checks.py) run in a thread
CHECK_OFF_LOOP_CHARS = 100_000


@dataclass
class Report:
    """What happened to a message's jobs: the task's result in Flower."""

    outcomes: Counter[str] = field(default_factory=Counter)
    #: job id -> error type of the jobs that failed for good
    failed: dict[str, str] = field(default_factory=dict)

    def as_result(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.outcomes)
        if self.failed:
            out["failed"] = self.failed
        return out


def claim_bound(settings: Settings) -> int:
    """The most claimed-and-unfinished jobs a process lets a new message be claimed under."""
    return max(1, math.ceil(settings.concurrency * (1 + settings.claim_ahead)))


async def wait_in_line(line: deque[asyncio.Future[None]], pass_on: Callable[[], None]) -> None:
    """Wait for a turn at the end of `line` (ClaimGate, Slots: whoever frees room sets the head's result).
    Cancelled while waiting, the waiter leaves the line; cancelled as its turn came, it passes the turn on."""
    turn = asyncio.get_running_loop().create_future()
    line.append(turn)
    try:
        await turn
    except asyncio.CancelledError:
        if turn in line:
            line.remove(turn)
        elif turn.done() and not turn.cancelled() and turn.exception() is None:
            pass_on()
        raise


class ClaimGate:
    """The bound on a process's claimed-and-unfinished jobs: a message waits here, before its claim, until
    they are below `bound`. First come, first claimed. A message may take the process over the bound by up to
    its own size less one (it is claimed whole, in one script call). Once the worker stops, nothing waits
    (what is claimed then is handed back at once: see Slots)."""

    def __init__(self, bound: int) -> None:
        self.bound, self.held, self.open = bound, 0, False
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def reserve(self, n: int) -> None:
        if (self.held >= self.bound or self._waiters) and not self.open:
            await wait_in_line(self._waiters, self._wake)  # a turn that came as we were cancelled: the next's
        self.held += n
        self._wake()  # room may be left for the next in line

    def release(self, n: int = 1) -> None:
        self.held -= n
        self._wake()

    def open_all(self) -> None:
        self.open = True
        self._wake()

    def _wake(self) -> None:
        # One at a time: the woken message reserves, then wakes the next if room is left.
        while self._waiters and (self.held < self.bound or self.open):
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                if not self.open:
                    return


class Slots:
    """SUMMARIZE_CONCURRENCY request slots, handed from a finished job straight to the longest waiting one.
    A semaphore that can be closed: at a warm shutdown every job still waiting for a slot is handed back at
    once (HandBack), not after a slot frees."""

    def __init__(self, n: int) -> None:
        self.free, self.closed = n, False
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        if self.closed:
            raise HandBack("worker is shutting down")
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return
        await wait_in_line(self._waiters, self.release)  # a slot handed to us as we were cancelled: passed on

    def release(self) -> None:
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)  # the slot passes on without being free in between
                return
        self.free += 1

    def close(self) -> None:
        self.closed = True
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_exception(HandBack("worker is shutting down"))


class Engine:
    def __init__(self, settings: Settings, app: Celery) -> None:
        self.settings, self.app = settings, app
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="summarize-loop", daemon=True)
        self.leases = Leases()

    # ---- called from Celery's threads ------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._open(), self.loop).result(timeout=60)

    def run_message(self, batch_id: str, job_ids: list[str], step: int) -> Report:
        future: Future[Report] = asyncio.run_coroutine_threadsafe(self.process(batch_id, job_ids, step), self.loop)
        return future.result()

    def begin_shutdown(self) -> None:
        """Warm shutdown began: jobs waiting for a slot, the limiter or a backoff are handed back, and so
        are the jobs of messages still waiting to be claimed (claimed and handed back at once, so they are
        queued again for another worker rather than left to the reaper)."""
        self.loop.call_soon_threadsafe(self._stopping)

    def _stopping(self) -> None:
        self.stop.set()
        self.slots.close()
        self.gate.open_all()

    def close(self) -> None:
        """After Celery's pool drained: last writes, then the loop ends."""
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(timeout=60)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)

    # ---- on the loop -----------------------------------------------------------------------------

    async def _open(self) -> None:
        s = self.settings
        self.stop = asyncio.Event()
        self.redis = make_async_redis(s, max_connections=32)
        # the reaper's look at the broker's queue: another Redis when the store is not the broker's
        self.broker = make_async_redis(s, max_connections=2, url=s.broker_url) if s.broker_url else None
        self.store = WorkerStore(self.redis, s, broker=self.broker)
        self.batches = Batches(self.redis, self.store.keys, s.openai_base_url)
        worker = f"{socket.gethostname()}:{threading.get_native_id()}"
        self.limiter = RateLimiter(self.store, s.limits, worker)
        self.provider = Provider(llm.make_client(s.provider, s.limits.concurrency), self.limiter, s, self.stop)
        self.contexts = ContextWindows(self.provider.client, s.provider, self.limiter, self.stop)
        self.slots = Slots(s.concurrency)
        self.gate = ClaimGate(claim_bound(s))
        self.writer = Writer(self.store, self._publish)
        self.writer.start()
        await asyncio.to_thread(checks.warm)  # the language model, loaded before the first answer is checked
        self.housekeeper = Housekeeper(self.store, self.leases, self.limiter, self.stop, self._publish, self._send)
        await self.housekeeper.tick()  # limits in force before the first job, and leases of a restart reaped
        self.housekeeper.start()

    async def _close(self) -> None:
        await self.housekeeper.renew()
        await self.housekeeper.close()
        await self.writer.close()
        await self.provider.client.close()
        await self.redis.aclose()
        if self.broker is not None:
            await self.broker.aclose()

    async def _publish(self, messages: list[Message]) -> None:
        # kombu's producer is synchronous: publish off the loop.
        await asyncio.get_running_loop().run_in_executor(None, publish, self.app, self.settings, messages)

    async def _send(self, tasks: list[tuple[str, str]]) -> None:
        def send() -> None:
            for name, arg in tasks:
                self.app.send_task(name, args=(arg,), queue=self.settings.queue)

        await asyncio.get_running_loop().run_in_executor(None, send)

    async def process(self, batch_id: str, job_ids: list[str], step: int) -> Report:
        report = Report()
        # Room for the whole message before it is claimed; what it did not claim is given back at once, and
        # each claimed job gives its share back as it ends (run_job), not when the message's last one does.
        await self.gate.reserve(len(job_ids))
        kept = 0
        try:
            got = await self._claim(batch_id, job_ids, step)
            kept = len(got[1].jobs) if got is not None else 0
        finally:
            self.gate.release(len(job_ids) - kept)
        if got is None:
            report.outcomes["skipped-missing"] += len(job_ids)
            return report
        spec, claimed = got
        report.outcomes.update(
            why if why in ("cached", "waiting", "packing") else f"skipped-{why}" for why in claimed.skipped.values()
        )
        cached = sum(1 for why in claimed.skipped.values() if why == "cached")
        if cached:
            metrics.CACHE_HITS.inc(cached)
            metrics.JOBS.labels("cached").inc(cached)
        if not claimed.jobs:
            return report
        started = time.monotonic()
        results = await asyncio.gather(
            *(self.run_job(spec, job, started) for job in claimed.jobs), return_exceptions=True
        )
        for job, result in zip(claimed.jobs, results, strict=True):
            if isinstance(result, BaseException):
                # Nowhere to record anything (Redis gone for good): the lease lapses and the reaper re-runs it.
                log.error("job %s/%s: %s", batch_id, job.job_id, result)
                report.outcomes["unsettled"] += 1
                continue
            name, error_type = result
            report.outcomes[name] += 1
            metrics.JOBS.labels(name).inc()
            if error_type:
                report.failed[job.job_id] = error_type
        return report

    async def _claim(self, batch_id: str, job_ids: list[str], step: int) -> tuple[BatchSpec, Claimed] | None:
        """The message's jobs claimed under leases, with the batch's spec; None when the batch is gone."""
        for _ in range(2):
            try:
                gen, rev, spec = await self.batches.spec(batch_id)
            except BatchNotFound:
                return None
            claimed = await self.store.claim(
                batch_id,
                job_ids,
                step,
                uuid.uuid4().hex,
                gen=gen,
                cache_fp=self.batches.fingerprint(batch_id, spec),
                rev=rev,
                to_pack=spec.mode == "batch",
            )
            if claimed.state != "stale":
                break
            # The batch was purged and made again under this id, or its spec changed (retry --model): our
            # copy of its spec is out of date.
            self.batches.forget(batch_id)
        return spec, claimed

    async def run_job(self, spec: BatchSpec, job: ClaimedJob, started: float) -> tuple[str, str | None]:
        """One claimed job's run; its room under the claim gate is given back when it ends, whatever the end."""
        try:
            return await self._run_job(spec, job, started)
        finally:
            self.gate.release()

    async def _run_job(self, spec: BatchSpec, job: ClaimedJob, started: float) -> tuple[str, str | None]:
        """Load, summarize, store: one job's run."""
        tally = Tally()
        with self.leases.hold(job):
            try:
                await self.slots.acquire()  # a warm shutdown hands a job still waiting here back (HandBack)
                try:
                    summary, used = await self.summarize_with_fallback(spec, job, tally, started)
                finally:
                    self.slots.release()
            except redis.RedisError:
                raise
            except RunLost:
                # Another run has the job now (or the batch is gone): nothing of ours may be stored.
                return "lost", None
            except BatchPaused:
                await self.writer.settle(outcome.parked(job, tally))
                return "paused", None
            except BatchCancelled:
                await self.writer.settle(outcome.cancelled(job, tally))
                return "cancelled", None
            except Exception as exc:
                if isinstance(exc, ProviderRejected) and exc.status != 404:
                    self.batches.note(job.batch_id, "halted", f"{type(exc).__name__}: {exc}")
                op, name = outcome.failed(job, exc, tally, self.settings, time.monotonic() - started)
                await self.writer.settle(op)
                return name, type(exc).__name__ if name == "failed" else None
            # The answer is cached under the spec that wrote it: a fallback model's answer is not the
            # primary model's.
            key = job.cache_key
            if used is not spec and key:
                key = cache_key(self.batches.fingerprint_of(used), job.article.digest)
            # A long article's checks off the loop (a megabyte is milliseconds of CPU), as its split is.
            found = (
                await asyncio.to_thread(outcome.checked, job.text, summary.text, used)
                if len(job.text) > CHECK_OFF_LOOP_CHARS
                else None
            )
            await self.writer.settle(outcome.done(job, summary, tally, key, spec=used, found=found))
        return "done", None

    async def summarize_with_fallback(
        self, spec: BatchSpec, job: ClaimedJob, tally: Tally, started: float
    ) -> tuple[Summary, BatchSpec]:
        """The batch's model, or its fallback when the model is gone (404) or fails the article for good;
        with the spec that wrote the summary."""
        fallback = spec.fallback_model or self.settings.fallback_model
        if not fallback:
            return await self.summarize(spec, job, tally), spec
        backup = replace(spec, model=fallback, fallback_model=None)
        if self.batches.is_gone(job.batch_id, spec.model):
            return await self.summarize(backup, job, tally), backup
        try:
            return await self.summarize(spec, job, tally), spec
        except (PermanentLLMError, TransientLLMError) as exc:
            if not self._for_good(exc, job, started):
                raise
            if isinstance(exc, ProviderRejected):
                self.batches.mark_gone(job.batch_id, spec.model)
            log.warning(
                "job %s/%s: %s failed for good (%s); trying %s", job.batch_id, job.job_id, spec.model, exc, fallback
            )
        return await self.summarize(backup, job, tally), backup

    def _for_good(self, exc: Exception, job: ClaimedJob, started: float) -> bool:
        """Whether the model failed this article for good (what a fallback model is for)."""
        if isinstance(exc, ProviderRejected):
            return exc.status == 404  # the model is gone; a bad key would fail the fallback too
        if isinstance(exc, TransientLLMError) and not isinstance(exc, MalformedResponse):
            return (job.failing_for or 0.0) + time.monotonic() - started >= self.settings.retry_horizon
        return True

    def account(self, job: ClaimedJob, spec: BatchSpec) -> JobAccount:
        """The run's account under `spec`: the pieces of the process it uses, never the engine itself."""
        return JobAccount(job, spec, store=self.store, batches=self.batches, writer=self.writer)

    async def summarize(self, spec: BatchSpec, job: ClaimedJob, tally: Tally) -> Summary:
        async def guard() -> None:
            await self.batches.check(job.batch_id)

        fit = Fit(await self.contexts.of(spec.model), self.provider.count_tokens)
        try:
            return await summarize(
                job.text,
                spec,
                self.provider.for_job(job.unusable, tally, guard, self.account(job, spec)),
                fit,
                self.settings.max_summary_chars,
                JobPartials(self.writer, job, tally),
                outcome.required(job.text, spec),
            )
        except ContextExceeded as exc:
            if exc.limit:
                self.contexts.learn(spec.model, exc.limit)
            raise


class JobPartials:
    """A long article's part summaries: from earlier runs (claimed with the job), and stored as they come."""

    def __init__(self, writer: Writer, job: ClaimedJob, tally: Tally) -> None:
        self.writer, self.job, self.tally = writer, job, tally
        self.known = dict(job.partials)

    def get(self, key: str) -> str | None:
        return self.known.get(key)

    async def put(self, key: str, text: str) -> None:
        self.known[key] = text
        await self.writer.settle(Part(run=Run.of(self.job), counts=self.tally.unflushed(), key=key, summary=text))


_lock = threading.Lock()
_engine: Engine | None = None


def engine(settings: Settings, app: Celery) -> Engine:
    """The process's engine, started on first use."""
    global _engine
    with _lock:
        if _engine is None:
            _engine = Engine(settings, app)
            _engine.start()
        return _engine


def current() -> Engine | None:
    return _engine
