"""A rate limiter shared by every worker on every machine, counted the way providers count, paced evenly.

Providers admit a request against RPM and against TPM = prompt + max_tokens, per minute, and many
enforce the minute over shorter windows (OpenAI: "60,000 requests/minute may be enforced as 1,000
requests/second"; Azure OpenAI over 1-10 s). So the limiter (contract/lua/rate_acquire.lua, on Redis'
clock, one schedule for the whole fleet) books each request at the earliest slot that keeps three rules:

* Pacing: two token buckets, refilled continuously at RPM/60 requests and TPM/60 tokens a second.
  Each holds a burst of `burst(limit)` = max(1, limit/120): half the max(1, limit/60) a provider
  tolerates, the other half being room for requests that reach the provider unevenly late (up to
  LATE_MS). So any 5 seconds carry at most limit/12 + max(1, limit/60) requests (and tokens; for
  tokens, a single request larger than the burst counts as the burst: it waits for a full bucket
  and leaves it in debt). A fresh batch starts with one burst, not with a minute's worth.
* The minute: the log of booked slots keeps every window of the provider's minute plus a margin
  (WINDOW_MS + LATE_MARGIN_MS) at or under the limit, which the buckets alone would exceed by their
  burst. The first minute still carries the whole limit: 1 burst + 60 s of refill >= the limit.
* A 429's cooldown, which every worker waits out, including requests already booked inside it;
  the buckets bank no refill during it.

A request sent more than LATE_MS after its slot books again. `release` gives back the slot of a
request that was never sent: the next request that fits takes it (rate_release.lua). `settle`
books tokens the provider counted beyond those booked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from contract.errors import HandBack, RequestTooLarge
from contract.schema import RATE_LIMITS_REPLY, RATE_SLOT
from contract.settings import LimitSettings
from contract.tokens import estimate_tokens as estimate_tokens
from contract.tokens import token_counter as token_counter

from . import metrics
from .storage import WorkerStore

log = logging.getLogger(__name__)

#: the provider's window
WINDOW_MS = 60_000
#: the log's window is the provider's plus this, because a request sent late lands later than its slot
LATE_MARGIN_MS = 1_000
#: a request leaving later than this after its slot books again; a given-back slot can be taken this late
LATE_MS = 500
#: how stale this process's view of the shared cooldown may be when no limit is set
COOLDOWN_POLL_S = 0.5


def burst(limit: int) -> int:
    """What a bucket refilled at limit/60 a second holds: half of the max(1, limit/60) the 5 s promise
    allows, so requests reaching the provider up to LATE_MS unevenly late still keep it."""
    return max(1, limit // 120)


@dataclass
class Booking:
    """A request's place in the schedule, for correcting it once the provider says what it counted."""

    slot_ms: int = 0
    tokens: int = 0
    #: how long the request had to wait for its slot when it was booked
    wait_ms: int = 0


@dataclass
class RateLimiter:
    """One per worker process."""

    store: WorkerStore
    settings: LimitSettings
    worker: str
    rpm: int = 0
    tpm: int = 0
    _cooldown_until: float = 0.0
    _cooldown_checked: float = field(default=-1e9)

    def __post_init__(self) -> None:
        self.rpm, self.tpm = self.settings.rpm, self.settings.tpm

    async def refresh_limits(self, ttl_s: float) -> None:
        """Publish our own limits and adopt the strictest of the fleet's (housekeeping calls it)."""
        reply = RATE_LIMITS_REPLY.read(
            await self.store.script(
                "rate_limits",
                worker=self.worker,
                rpm=self.settings.rpm,
                tpm=self.settings.tpm,
                ttl_ms=int(ttl_s * 1000),
            )
        )
        rpm, tpm = int(reply["rpm"]), int(reply["tpm"])
        if (rpm, tpm) != (self.rpm, self.tpm):
            log.info("rate limits in force: rpm=%s tpm=%s", rpm, tpm)
        self.rpm, self.tpm = rpm, tpm

    async def acquire(self, tokens: int, stop: asyncio.Event) -> Booking:
        """Wait for a slot for one request of `tokens`. Waiting here is not a failed attempt; a worker
        that is shutting down hands the job back instead (and gives its booked slot back)."""
        if self.tpm and tokens > self.tpm:
            raise RequestTooLarge(
                f"one request needs {tokens} tokens (prompt + max_tokens) but SUMMARIZE_TPM is "
                f"{self.tpm}: the provider would never admit it"
            )
        while True:
            if not (self.rpm or self.tpm):
                await self._sleep(await self._cooldown_left(), stop)
                return Booking()
            booking = await self._book(tokens)
            wait_s = booking.wait_ms / 1000
            target = time.monotonic() + wait_s
            try:
                await self._sleep(wait_s, stop)
            except HandBack:
                await self.release(booking)
                raise
            late = time.monotonic() - target
            # Sent this late, it would crowd the slots booked after it (and could land in a window the
            # log thinks is past): book again. A 429 may also have set a cooldown after this slot was
            # booked; the cooldown moved the buckets past it, so booking again goes after it.
            if late * 1000 > LATE_MS or (booking.wait_ms > 0 and await self._cooldown_left(fresh=True) > 0):
                continue
            return booking

    async def _book(self, tokens: int) -> Booking:
        reply = RATE_SLOT.read(
            await self.store.script(
                "rate_acquire",
                rpm=self.rpm,
                tpm=self.tpm,
                tokens=tokens,
                window_ms=WINDOW_MS + LATE_MARGIN_MS,
                rpm_burst=burst(self.rpm),
                tpm_burst=burst(self.tpm),
                late_ms=LATE_MS,
            )
        )
        return Booking(int(reply["slot_ms"]), tokens, int(reply["wait_ms"]))

    async def release(self, booking: Booking) -> None:
        """The request of `booking` will not be sent (its batch was cancelled, paused or is over budget,
        or the worker is stopping): give its slot back for another request to take. The slot stays
        counted in the window, so the limit holds whoever takes it."""
        if booking.slot_ms:
            await self.store.script("rate_release", slot_ms=booking.slot_ms, tokens=booking.tokens, late_ms=LATE_MS)
            booking.slot_ms = 0  # given back once

    async def settle(self, booking: Booking, counted: int) -> None:
        """The provider counted `counted` tokens for the request: book any excess over what was booked."""
        if booking.slot_ms and counted > booking.tokens:
            await self.store.script(
                "rate_settle",
                slot_ms=booking.slot_ms,
                tokens=counted - booking.tokens,
                window_ms=WINDOW_MS + LATE_MARGIN_MS,
                tpm=self.tpm,
            )

    async def wait_cooldown(self, stop: asyncio.Event) -> None:
        """Wait out the shared cooldown (for requests that take no slot, such as GET /v1/models)."""
        await self._sleep(await self._cooldown_left(fresh=True), stop)

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
