"""A rate limiter shared by every worker on every machine: GCRA for requests and tokens in one Lua script.

Redis' clock is the only clock, so machines with skewed clocks still share one schedule. A 429 from
the provider sets a cooldown that every worker waits out, not only the one that saw it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import redis

from contract.errors import HandBack
from contract.keys import Keys
from contract.settings import Settings

# KEYS rate, cooldown | ARGV ms_per_request, ms_per_token, token_burst_ms, tokens
# Books the caller's slot and returns the milliseconds until it: each request costs one call, however
# long it waits, and a late sender never costs the schedule a slot (the next one is already booked).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local per_req, per_tok = tonumber(ARGV[1]), tonumber(ARGV[2])
local burst, tokens = tonumber(ARGV[3]), tonumber(ARGV[4])
local slot = now + math.max(0, redis.call('PTTL', KEYS[2]))
if per_req <= 0 and per_tok <= 0 then return math.ceil(slot - now) end
local r = tonumber(redis.call('HGET', KEYS[1], 'r') or '0')
local k = tonumber(redis.call('HGET', KEYS[1], 't') or '0')
if per_req > 0 then slot = math.max(slot, r) end
if per_tok > 0 then
  -- Tokens are booked from when the request will really be sent (after any cooldown), and may run
  -- ahead of the steady pace by `burst`; a request bigger than that waits for an empty bucket.
  k = math.max(k, slot)
  slot = math.max(slot, k + tokens * per_tok - burst)
  redis.call('HSET', KEYS[1], 't', tostring(k + tokens * per_tok))
end
if per_req > 0 then redis.call('HSET', KEYS[1], 'r', tostring(slot + per_req)) end
-- Keep the schedule while anything is booked on it, or a new one would start beside it.
redis.call('PEXPIRE', KEYS[1], math.ceil(math.max(120000, slot - now + 60000)))
return math.ceil(slot - now)
"""

# KEYS rate | ARGV ms_per_token, token_delta
_SETTLE = """
if tonumber(ARGV[1]) <= 0 or redis.call('HEXISTS', KEYS[1], 't') == 0 then return 0 end
redis.call('HINCRBYFLOAT', KEYS[1], 't', tonumber(ARGV[1]) * tonumber(ARGV[2]))
return 1
"""

# KEYS cooldown, rate | ARGV ms; only ever lengthens a cooldown another worker set, and moves the
# booking schedule past it so requests booked from now on land after it.
_COOLDOWN = """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], '1', 'PX', ARGV[1]) end
local t = redis.call('TIME')
local until_ms = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000 + tonumber(ARGV[1])
if tonumber(redis.call('HGET', KEYS[2], 'r') or '0') < until_ms then
  redis.call('HSET', KEYS[2], 'r', tostring(until_ms))
end
return 1
"""

log = logging.getLogger(__name__)

#: tokens admitted at once beyond the steady pace, as a share of a minute's budget
TOKEN_BURST_SHARE = 0.1
#: pace 1% under the configured limits: senders wake a little late or early, and a provider counting
#: in a sliding window must never see limit + 1
PACE_MARGIN = 1.01


def estimate_tokens(prompt_chars: int, max_tokens: int) -> int:
    """Offline estimate: ~4 characters a token for the prompt, plus the whole reply budget.

    Overestimating only delays; the real count from `usage` corrects the schedule after the call.
    """
    return prompt_chars // 4 + 1 + max_tokens


def token_counter(settings: Settings) -> Callable[[str, int], int]:
    """(prompt text, max_tokens) -> tokens to book. tiktoken when asked for and loadable, else the estimate."""
    if settings.token_counter == "tiktoken":
        try:
            import tiktoken

            enc = tiktoken.get_encoding(settings.tiktoken_encoding)
            return lambda text, max_tokens: len(enc.encode(text, disallowed_special=())) + 4 + max_tokens
        except Exception as exc:  # no package, or no encoding files offline
            log.warning("tiktoken unavailable (%s); counting tokens by the 4-characters estimate", exc)
    return lambda text, max_tokens: estimate_tokens(len(text), max_tokens)


@dataclass
class RateLimiter:
    r: redis.Redis
    settings: Settings

    def __post_init__(self) -> None:
        keys = Keys(self.settings.key_prefix)
        self._keys = [keys.rate, keys.cooldown]
        self._acquire = self.r.register_script(_ACQUIRE)
        self._settle = self.r.register_script(_SETTLE)
        self._cooldown = self.r.register_script(_COOLDOWN)
        rpm, tpm = self.settings.rpm, self.settings.tpm
        self.ms_per_request = 60_000 * PACE_MARGIN / rpm if rpm else 0.0
        self.ms_per_token = 60_000 * PACE_MARGIN / tpm if tpm else 0.0
        self.token_burst_ms = 60_000 * TOKEN_BURST_SHARE

    def acquire(self, tokens: int, stop: threading.Event) -> float:
        """Book a slot for one request of `tokens` in the shared schedule and sleep until it.

        Returns seconds waited. Waiting here is not a failed attempt. A worker that is shutting down
        hands the job back instead (its booked slot goes unused).
        """
        wait_ms = int(self._acquire(keys=self._keys, args=[self.ms_per_request, self.ms_per_token,
                                                            self.token_burst_ms, tokens]))
        if wait_ms <= 0:
            return 0.0
        if stop.wait(wait_ms / 1000):
            raise HandBack("worker is shutting down")
        return wait_ms / 1000

    def settle(self, estimated: int, actual: int) -> None:
        """Correct the token schedule with what the provider reported using."""
        if self.ms_per_token and actual:
            self._settle(keys=self._keys[:1], args=[self.ms_per_token, actual - estimated])

    def cool_down(self, seconds: float) -> None:
        """Pause every worker: the provider said 429 and asked for this long."""
        if seconds > 0:
            self._cooldown(keys=[self._keys[1], self._keys[0]], args=[int(seconds * 1000)])
