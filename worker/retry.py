"""The only retry layer: small tenacity strategies composed into one policy.

Inside a run, transient failures are retried for a short budget (seconds). A longer outage ends the run
and the job is handed back with a delay (worker/outcome.py), so a provider that is down for minutes
neither burns the retry budget nor holds a worker's slot asleep. Answers that came back but were
unusable are retried at once, each one counted: SUMMARIZE_MAX_UNUSABLE bounds what one article costs.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_random_exponential
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from contract.errors import HandBack, MalformedResponse, TransientLLMError
from contract.settings import RetrySettings

#: the pause before asking again after an unusable answer: the provider is up, it answered
UNUSABLE_PAUSE = 0.05


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


class wait_unusable_or(wait_base):
    """A short pause after an unusable answer (nothing is wrong with the line), else another strategy."""

    def __init__(self, fallback: wait_base, pause: float = UNUSABLE_PAUSE) -> None:
        self.fallback, self.pause = fallback, pause

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        return self.pause if isinstance(exc, MalformedResponse) else float(self.fallback(retry_state))


class stop_when_idle_exceeds(stop_base):
    """Stop when the next sleep would take total sleeping past the budget: past that, hand the job back."""

    def __init__(self, budget: float) -> None:
        self.budget = budget

    def __call__(self, retry_state: RetryCallState) -> bool:
        return retry_state.idle_for + (retry_state.upcoming_sleep or 0.0) > self.budget


class stop_after_failures(stop_base):
    """Stop after `n` failed requests as counted by `count` (unusable answers are bounded on their own)."""

    def __init__(self, n: int, count: Callable[[], int]) -> None:
        self.n, self.count = n, count

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.count() >= self.n


def interruptible_sleep(stop: asyncio.Event) -> Callable[[float], Awaitable[None]]:
    """A sleep that a worker's shutdown cuts short by handing the job back."""

    async def sleep(seconds: float) -> None:
        try:
            await asyncio.wait_for(stop.wait(), seconds)
        except TimeoutError:
            return
        raise HandBack("worker is shutting down")

    return sleep


def policy(
    settings: RetrySettings, sleep: Callable[[float], Awaitable[None]], failures: Callable[[], int]
) -> AsyncRetrying:
    return AsyncRetrying(
        retry=retry_if_exception_type(TransientLLMError),
        # tenacity's full-jitter exponential backoff, unless the provider said how long (Retry-After).
        wait=wait_unusable_or(wait_retry_after_or(wait_random_exponential(multiplier=0.5, max=20.0, min=0.25))),
        stop=stop_after_failures(settings.max_attempts_per_run, failures)
        | stop_when_idle_exceeds(settings.attempt_budget),
        sleep=sleep,
        reraise=True,
    )


def defer_delay(deferrals: int, asked: float | None, first: float = 15.0, rng: random.Random | None = None) -> float:
    """How long a handed-back job waits: `first` doubling to 5 min, jittered, never less than Retry-After."""
    base = min(300.0, first * 2**deferrals)
    delay: float = base * (0.75 + 0.5 * (rng or random).random())
    return max(delay, asked or 0.0)
