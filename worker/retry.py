"""The only retry layer: small tenacity strategies composed into one policy.

Inside a task, transient failures are retried for a short budget (seconds). A longer outage ends the
task and the job is handed back with a delay (worker/outcome.py), so a provider that is down for
minutes neither burns the retry budget nor holds worker slots asleep.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from contract.errors import HandBack, TransientLLMError
from contract.settings import Settings


class wait_retry_after_or(wait_base):
    """Wait what the provider asked for (Retry-After), else fall back to another strategy."""

    def __init__(self, fallback: wait_base, cap: float = 600.0) -> None:
        self.fallback, self.cap = fallback, cap

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        asked = getattr(exc, "retry_after", None)
        if asked is not None:
            return min(float(asked), self.cap)
        return float(self.fallback(retry_state))


class wait_exponential_full_jitter(wait_base):
    """AWS-style full jitter: uniform in [0, min(cap, base * 2**n)], so retries don't stampede."""

    def __init__(self, base: float = 0.5, cap: float = 20.0, rng: random.Random | None = None) -> None:
        self.base, self.cap, self.rng = base, cap, rng or random.Random()

    def __call__(self, retry_state: RetryCallState) -> float:
        ceiling = min(self.cap, self.base * 2 ** (retry_state.attempt_number - 1))
        return self.base / 2 + self.rng.uniform(0, ceiling)


class stop_when_idle_exceeds(stop_base):
    """Stop when the next sleep would take total sleeping past the budget: past that, hand the job back."""

    def __init__(self, budget: float) -> None:
        self.budget = budget

    def __call__(self, retry_state: RetryCallState) -> bool:
        return retry_state.idle_for + (retry_state.upcoming_sleep or 0.0) > self.budget


def interruptible_sleep(stop: threading.Event) -> Callable[[float], None]:
    """A sleep that a worker's shutdown cuts short by handing the job back."""

    def sleep(seconds: float) -> None:
        if stop.wait(seconds):
            raise HandBack("worker is shutting down")

    return sleep


def policy(settings: Settings, sleep: Callable[[float], None]) -> Retrying:
    return Retrying(
        retry=retry_if_exception_type(TransientLLMError),
        wait=wait_retry_after_or(wait_exponential_full_jitter(base=0.5, cap=20.0)),
        stop=stop_after_attempt(settings.max_attempts_per_run) | stop_when_idle_exceeds(settings.attempt_budget),
        sleep=sleep,
        reraise=True,
    )


def defer_delay(deferrals: int, asked: float | None, first: float = 15.0, rng: random.Random | None = None) -> float:
    """How long a handed-back job waits: `first` doubling to 5 min, jittered, never less than Retry-After."""
    base = min(300.0, first * 2**deferrals)
    delay: float = base * (0.75 + 0.5 * (rng or random).random())
    return max(delay, asked or 0.0)
