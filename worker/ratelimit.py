"""A rate limiter shared by every worker on every machine, counted the way providers count.

Providers admit a request against RPM and against TPM = prompt + max_tokens, per rolling minute. The
limiter keeps a log of booked requests in Redis (contract/lua/rate_acquire.lua) and books each request
at the earliest slot where the window it ends has room: never a request or a token over the limit in
any window, and the whole limit usable from the first second. The window is the provider's minute plus
a margin, because a request sent late lands later than its slot; one sent later than the margin books
again. Redis' clock is the only clock. A 429 sets a cooldown every worker waits out, including
requests already booked inside it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from contract.errors import HandBack, RequestTooLarge
from contract.settings import Settings

from . import metrics
from .storage import WorkerStore

log = logging.getLogger(__name__)

#: the provider's window
WINDOW_MS = 60_000
#: a request may leave this late after its slot and still land inside the booked window
LATE_MARGIN_MS = 1_000
#: how stale this process's view of the shared cooldown may be when no limit is set
COOLDOWN_POLL_S = 0.5


def estimate_tokens(prompt_chars: int, messages: int, max_tokens: int) -> int:
    """Offline count, on the safe side of a provider counting 4 characters a token: a few tokens of
    overhead per message on top, plus the whole reply budget (what providers book at admission)."""
    return -(-prompt_chars // 4) + 4 * messages + max_tokens


def token_counter(settings: Settings) -> Callable[[list[dict[str, Any]], int], int]:
    """(messages, max_tokens) -> tokens to book. tiktoken when asked for and loadable, else the estimate."""
    if settings.token_counter == "tiktoken":
        try:
            import tiktoken

            enc = tiktoken.get_encoding(settings.tiktoken_encoding)

            def count(messages: list[dict[str, Any]], max_tokens: int) -> int:
                return sum(len(enc.encode(str(m["content"]), disallowed_special=())) + 4 for m in messages) + max_tokens

            return count
        except Exception as exc:  # no package, or no encoding files offline
            log.warning("tiktoken unavailable (%s); counting tokens by the 4-characters estimate", exc)

    def estimate(messages: list[dict[str, Any]], max_tokens: int) -> int:
        return estimate_tokens(sum(len(str(m["content"])) for m in messages), len(messages), max_tokens)

    return estimate


@dataclass
class Booking:
    """A request's place in the schedule, for correcting it once the provider says what it counted."""

    slot_ms: int = 0
    tokens: int = 0


@dataclass
class RateLimiter:
    """One per worker process."""

    store: WorkerStore
    settings: Settings
    worker: str
    rpm: int = 0
    tpm: int = 0
    _cooldown_until: float = 0.0
    _cooldown_checked: float = field(default=-1e9)

    def __post_init__(self) -> None:
        self.rpm, self.tpm = self.settings.rpm, self.settings.tpm

    async def refresh_limits(self, ttl_s: float) -> None:
        """Publish our own limits and adopt the strictest of the fleet's (housekeeping calls it)."""
        rpm, tpm = await self.store.script(
            "rate_limits", worker=self.worker, rpm=self.settings.rpm, tpm=self.settings.tpm, ttl_ms=int(ttl_s * 1000)
        )
        if (int(rpm), int(tpm)) != (self.rpm, self.tpm):
            log.info("rate limits in force: rpm=%s tpm=%s", rpm, tpm)
        self.rpm, self.tpm = int(rpm), int(tpm)

    async def acquire(self, tokens: int, stop: asyncio.Event) -> Booking:
        """Wait for a slot for one request of `tokens`. Waiting here is not a failed attempt; a worker
        that is shutting down hands the job back instead (its booked slot goes unused)."""
        if self.tpm and tokens > self.tpm:
            raise RequestTooLarge(
                f"one request needs {tokens} tokens (prompt + max_tokens) but SUMMARIZE_TPM is "
                f"{self.tpm}: the provider would never admit it"
            )
        while True:
            if not (self.rpm or self.tpm):
                await self._sleep(await self._cooldown_left(), stop)
                return Booking()
            wait_ms, slot = await self.store.script(
                "rate_acquire", rpm=self.rpm, tpm=self.tpm, tokens=tokens, window_ms=WINDOW_MS + LATE_MARGIN_MS
            )
            target = time.monotonic() + wait_ms / 1000
            await self._sleep(wait_ms / 1000, stop)
            late = time.monotonic() - target
            # Sent this late, it could land in a window the schedule thinks is past; and a 429 may have
            # set a cooldown after this slot was booked. Either way: book again.
            if late * 1000 > LATE_MARGIN_MS / 2 or (wait_ms > 0 and await self._cooldown_left(fresh=True) > 0):
                continue
            return Booking(int(slot), tokens)

    async def settle(self, booking: Booking, counted: int) -> None:
        """The provider counted `counted` tokens for the request: book any excess over what was booked."""
        if booking.slot_ms and counted > booking.tokens:
            await self.store.script(
                "rate_settle",
                slot_ms=booking.slot_ms,
                tokens=counted - booking.tokens,
                window_ms=WINDOW_MS + LATE_MARGIN_MS,
            )

    async def cool_down(self, seconds: float) -> None:
        """Pause every worker: the provider said 429 and asked for this long."""
        if seconds > 0:
            await self.store.script("rate_cooldown", ms=int(seconds * 1000))
            self._cooldown_until = max(self._cooldown_until, time.monotonic() + seconds)

    async def _cooldown_left(self, fresh: bool = False) -> float:
        now = time.monotonic()
        if fresh or now - self._cooldown_checked > COOLDOWN_POLL_S:
            ms = await self.store.cooldown_ms()
            self._cooldown_checked = now
            self._cooldown_until = now + max(0, int(ms)) / 1000
        return max(0.0, self._cooldown_until - now)

    @staticmethod
    async def _sleep(seconds: float, stop: asyncio.Event) -> None:
        if seconds <= 0:
            return
        metrics.LIMITER_WAIT.inc(seconds)
        try:
            await asyncio.wait_for(stop.wait(), seconds)
        except TimeoutError:
            return
        raise HandBack("worker is shutting down")
