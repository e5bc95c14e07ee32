"""worker/retry.py: the retry policy (no real sleeping: a recording sleep is passed in) and deferral."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from contract.errors import (
    HandBack,
    MalformedResponse,
    PermanentLLMError,
    TransientLLMError,
)
from contract.settings import Settings
from worker import retry


def run_policy(attempt: Any, **over: Any) -> tuple[Any, list[float]]:
    slept: list[float] = []
    failures = [0]

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def go() -> Any:
        settings = Settings(**{"max_attempts_per_run": 4, "attempt_budget": 30.0, **over})
        async for a in retry.policy(settings.retry, sleep, lambda: failures[0]):
            with a:
                try:
                    return attempt()
                except TransientLLMError as exc:
                    if not isinstance(exc, MalformedResponse):
                        failures[0] += 1
                    raise
        return None

    try:
        return asyncio.run(go()), slept
    except Exception as exc:
        return exc, slept


def test_policy_retries_transient_errors_honouring_retry_after() -> None:
    calls: Iterator[Exception | str] = iter(
        [TransientLLMError("429", 429, retry_after=7.0), TransientLLMError("500", 500), "ok"]
    )

    def attempt() -> str:
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    result, slept = run_policy(attempt)
    assert result == "ok" and slept[0] == 7.0 and 0.25 <= slept[1] <= 1.0


def test_policy_does_not_retry_permanent_errors() -> None:
    n = [0]

    def attempt() -> None:
        n[0] += 1
        raise PermanentLLMError("400", 400)

    result, slept = run_policy(attempt)
    assert isinstance(result, PermanentLLMError) and n[0] == 1 and slept == []


def test_policy_stops_when_the_wait_would_exceed_the_budget() -> None:
    def attempt() -> None:
        raise TransientLLMError("429", 429, retry_after=60.0)

    result, slept = run_policy(attempt, attempt_budget=10.0)
    assert isinstance(result, TransientLLMError) and slept == []  # handed back to the queue, not slept in a slot


def test_unusable_answers_are_retried_at_once_and_not_counted_as_failures() -> None:
    answers = iter([MalformedResponse("empty")] * 5 + ["ok"])

    def attempt() -> str:
        item = next(answers)
        if isinstance(item, Exception):
            raise item
        return item

    result, slept = run_policy(attempt, max_attempts_per_run=2)
    assert result == "ok" and slept == [retry.UNUSABLE_PAUSE] * 5


def test_interruptible_sleep_hands_back_on_shutdown() -> None:
    async def go() -> None:
        stop = asyncio.Event()
        stop.set()
        await retry.interruptible_sleep(stop)(30)

    with pytest.raises(HandBack):
        asyncio.run(go())


def test_defer_delay_grows_and_respects_retry_after() -> None:
    import random

    rng = random.Random(1)
    delays = [retry.defer_delay(n, None, 15.0, rng) for n in range(8)]
    assert delays[0] < delays[3] and max(delays) <= 300 * 1.25
    assert retry.defer_delay(0, 120.0, 15.0, rng) == 120.0
