"""Per-process resources, built once on first use: settings, Redis, the openai client, limiter, leases."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from contract.redisconn import make_redis
from contract.settings import Settings
from contract.store import JobStore

from .housekeeping import Leases
from .llm import make_client
from .ratelimit import RateLimiter
from .summarize import ProviderCall


@dataclass
class Runtime:
    settings: Settings
    store: JobStore
    provider: ProviderCall
    leases: Leases = field(default_factory=Leases)
    #: the LLM calls of every message's jobs run here: SUMMARIZE_CONCURRENCY requests in flight
    pool: ThreadPoolExecutor = field(init=False)

    def __post_init__(self) -> None:
        self.pool = ThreadPoolExecutor(self.settings.concurrency, thread_name_prefix="llm")

    @property
    def stop(self) -> threading.Event:
        """Set when the worker begins a warm shutdown: waits and backoffs hand their jobs back."""
        return self.provider.stop

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        # Every task thread may hold a connection while it waits on the limiter, plus housekeeping.
        r = make_redis(settings, max_connections=settings.concurrency + 16)
        store = JobStore(r, settings)
        provider = ProviderCall(make_client(settings), RateLimiter(r, settings), settings)
        return cls(settings, store, provider)


_lock = threading.Lock()
_runtime: Runtime | None = None


def runtime(settings: Settings | None = None) -> Runtime:
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime.build(settings or Settings.from_env())
        return _runtime
