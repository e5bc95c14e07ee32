"""worker/ratelimit.py: the shared limiter's pacing, windows, fleet limits and cooldown on the session's
real redis-server, and the token estimate (test_ratelimit.py has the schedule and worker scenarios)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from contract.errors import (
    RequestTooLarge,
)
from contract.settings import Settings
from tests.redisunits import unit_settings, worker_call
from worker.ratelimit import LATE_MARGIN_MS, WINDOW_MS, RateLimiter, estimate_tokens, token_counter
from worker.storage import WorkerStore


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return unit_settings(redis_url)


def limiter(settings: Settings, w: WorkerStore) -> RateLimiter:
    return RateLimiter(w, settings.limits, f"w-{uuid.uuid4().hex[:4]}")


def test_limiter_paces_tokens_and_never_fills_a_window_past_the_limit(settings: Settings) -> None:
    async def go(w: WorkerStore) -> list[int]:
        lim = limiter(Settings.from_dsn(settings.redis_url, key_prefix=settings.key_prefix, tpm=1000), w)
        return [(await lim._book(400)).wait_ms for _ in range(3)]

    waits = worker_call(settings, go)
    # 1000 tokens a minute refill at 60 ms a token: 400 tokens every 24 s, not 800 at once; the third
    # would fit the bucket at 48 s but not the window (800 + 400 > 1000) until the first leaves it.
    window = WINDOW_MS + LATE_MARGIN_MS
    assert waits[0] == 0 and 23_900 <= waits[1] <= 24_000 and window - 100 <= waits[2] <= window


def test_limiter_paces_requests_and_counts_them_per_window(settings: Settings) -> None:
    async def go(w: WorkerStore) -> list[int]:
        lim = limiter(Settings.from_dsn(settings.redis_url, key_prefix=settings.key_prefix, rpm=3), w)
        return [(await lim._book(1)).wait_ms for _ in range(4)]

    waits = worker_call(settings, go)
    # a request every 20 s; the fourth also waits for the first to leave the window
    window = WINDOW_MS + LATE_MARGIN_MS
    assert waits[0] == 0 and all(abs(waits[i] - 20_000 * i) <= 100 for i in (1, 2))
    assert window - 100 <= waits[3] <= window


def test_a_request_larger_than_the_token_limit_fails_at_once(settings: Settings) -> None:
    async def go(w: WorkerStore) -> None:
        lim = limiter(Settings.from_dsn(settings.redis_url, key_prefix=settings.key_prefix, tpm=500), w)
        await lim.acquire(501, asyncio.Event())

    with pytest.raises(RequestTooLarge, match="501 tokens"):
        worker_call(settings, go)


def test_a_worker_without_limits_obeys_the_fleets(settings: Settings) -> None:
    async def go(w: WorkerStore) -> tuple[int, int]:
        strict = limiter(Settings.from_dsn(settings.redis_url, key_prefix=settings.key_prefix, rpm=60, tpm=9000), w)
        await strict.refresh_limits(ttl_s=10)
        loose = limiter(settings, w)  # started with no limits at all
        await loose.refresh_limits(ttl_s=10)
        return loose.rpm, loose.tpm

    assert worker_call(settings, go) == (60, 9000)


def test_a_cooldown_holds_every_worker_including_booked_requests(settings: Settings) -> None:
    async def go(w: WorkerStore) -> float:
        lim = limiter(Settings.from_dsn(settings.redis_url, key_prefix=settings.key_prefix, rpm=6000), w)
        await limiter(settings, w).cool_down(0.4)  # another worker saw a 429
        started = time.monotonic()
        await lim.acquire(10, asyncio.Event())
        return time.monotonic() - started

    assert worker_call(settings, go) >= 0.35


def test_token_estimate_is_on_the_safe_side_of_four_characters_a_token() -> None:
    messages = [{"role": "system", "content": "x" * 401}, {"role": "user", "content": "y" * 4000}]
    provider_count = -(-4401 // 4) + 200
    assert token_counter(Settings().provider)(messages, 200) >= provider_count
    assert estimate_tokens(4000, 2, 200) == 1000 + 8 + 200
    # tiktoken is not a dependency; asked for without it (or without its files), the estimate is used.
    count = token_counter(Settings(token_counter="tiktoken", tiktoken_encoding="no-such-encoding").provider)
    assert count(messages, 200) == token_counter(Settings().provider)(messages, 200)
