"""The fault server's configuration (changed live through /admin/config), counters and rate windows."""

from __future__ import annotations

import hashlib
import math
import time
from collections import deque
from dataclasses import dataclass, field, fields, replace
from statistics import NormalDist
from typing import Any

WINDOW_S = 60.0
#: Distinct system prompts remembered; more would let a long run grow the stats without bound.
MAX_SYSTEM_PROMPTS = 100

# Config keys by kind: the validation of each kind is written once.
_FLOAT_KEYS = frozenset(
    {"latency", "latency_sigma", "batch_delay", "batch_create_response_delay", "billed_bytes_per_token"}
)
_INT_KEYS = frozenset(
    {
        "rpm",
        "tpm",
        "context_tokens",
        "enqueued_token_limit",
        "batch_expire_next",
        "batch_fail_next",
        "batch_create_429_next",
        "batch_create_502_next",
        "batch_api_status",
        "reasoning_tokens",
    }
)
#: config keys holding a list of model names
_MODEL_LIST_KEYS = frozenset({"missing_models", "reasoning_models"})


@dataclass(slots=True)
class ServerConfig:
    """Server-wide settings. Zero turns a limit off; the ``batch_*_next`` counters are used up by creates."""

    latency: float = 0.0  # seconds added to each online completion (the median, with latency_sigma)
    # > 0: each completion's latency is log-normal, latency * exp(latency_sigma * z) for a standard normal z
    # drawn from the article and its request number, so a run repeats and every tool sees the same delay for
    # the same article. p99 = latency * exp(2.326 * sigma): 0.75 gives about 5.7x the median.
    latency_sigma: float = 0.0
    rpm: int = 0  # requests per rolling minute
    tpm: int = 0  # tokens (prompt estimate + max_tokens) per rolling minute
    api_key: str | None = None
    context_tokens: int = 0  # prompt + max_tokens above it answers 400 context_length_exceeded
    batch_delay: float = 0.0  # seconds a batch stays in_progress before its lines run
    batch_create_response_delay: float = 0.0  # create's answer held this long after the batch exists
    enqueued_token_limit: int = 0  # tokens held by unfinished batches; a create over it answers 429
    batch_expire_next: int = 0  # the next N batches expire after half their lines
    batch_fail_next: int = 0  # the next N batches fail validation
    batch_create_429_next: int = 0  # the next N creates answer 429 token_limit_exceeded
    batch_create_502_next: int = 0  # the next N creates make the batch, then answer 502 (a lost answer)
    batch_api_status: int = 0  # every Files and Batch API route answers this status (404: no Batch API)
    missing_models: tuple[str, ...] = ()  # models answered 404 model_not_found (a model that is gone)
    # Models answered as OpenAI answers its reasoning models (gpt-5, o3): max_tokens and a temperature other
    # than 1 refused with 400, and `reasoning_tokens` of max_completion_tokens spent thinking before the answer.
    reasoning_models: tuple[str, ...] = ()
    reasoning_tokens: int = 0
    # Bill prompt tokens as UTF-8 bytes / this (0: 4 characters a token): a tokenizer denser than the
    # English average, as for CJK text, code or numbers.
    billed_bytes_per_token: float = 0.0

    def updated(self, changes: dict[str, Any]) -> ServerConfig:
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        new = replace(self)
        for key, value in changes.items():
            setattr(new, key, _validated(key, value))
        return new

    def public(self) -> dict[str, Any]:
        # The key itself is never echoed back: admin responses end up in test logs.
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "api_key"}
        values["missing_models"] = list(self.missing_models)
        values["reasoning_models"] = list(self.reasoning_models)
        return {**values, "api_key_set": self.api_key is not None}


def _validated(key: str, value: Any) -> Any:
    if key in _MODEL_LIST_KEYS:
        if not isinstance(value, list | tuple) or not all(isinstance(m, str) for m in value):
            raise ValueError(f"{key} must be a list of model names")
        return tuple(value)
    if key == "api_key":
        if value is not None and not isinstance(value, str):
            raise ValueError("api_key must be a string or null")
        return value or None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number")
    if key in _FLOAT_KEYS:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{key} must be a finite number >= 0")
        return float(value)
    if value < 0 or value != int(value):
        raise ValueError(f"{key} must be an integer >= 0")
    return int(value)


@dataclass(slots=True)
class _Window:
    """Admissions within the last minute: (monotonic time, weight), with the weights' running sum."""

    entries: deque[tuple[float, int]] = field(default_factory=deque)
    total: int = 0

    def expire(self, now: float) -> None:
        while self.entries and self.entries[0][0] <= now - WINDOW_S:
            self.total -= self.entries.popleft()[1]

    def wait(self, now: float, weight: int, limit: int) -> float | None:
        """None if ``weight`` more fits under ``limit``, else seconds until enough of it expires."""
        if limit <= 0:
            return None
        self.expire(now)
        if self.total + weight <= limit:
            return None
        if weight > limit:
            return WINDOW_S  # can never fit; a provider says "request too large" with a minute's wait
        freed = self.total
        for stamp, entry_weight in self.entries:
            freed -= entry_weight
            if freed + weight <= limit:
                return stamp + WINDOW_S - now
        return WINDOW_S

    def add(self, now: float, weight: int) -> None:
        self.entries.append((now, weight))
        self.total += weight

    def clear(self) -> None:
        self.entries.clear()
        self.total = 0


@dataclass(slots=True)
class FaultState:
    initial: ServerConfig
    config: ServerConfig = field(init=False)
    requests: int = 0
    ok: int = 0
    by_article: dict[str, int] = field(default_factory=dict)
    #: "model article_key" -> requests counted against the article's faults with that model
    by_model_article: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    overshoot_429: int = 0
    overshoot_by: dict[str, int] = field(default_factory=dict)
    ok_times: list[float] = field(default_factory=list)
    tokens_admitted_times: list[tuple[float, int]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    #: integral of in_flight over time since the first request (monotonic s), for the time-weighted mean
    in_flight_area: float = 0.0
    first_request_at: float | None = None
    last_change_at: float = 0.0
    #: the integral as the last request started, and when: the mean while the client still had work to send
    area_at_last_start: float = 0.0
    last_start_at: float = 0.0
    outage_until: float = 0.0
    outage_status: int = 503
    context_refused: int = 0
    max_request_tokens: int = 0
    system_prompts: dict[str, int] = field(default_factory=dict)
    system_prompts_dropped: int = 0
    response_formats: dict[str, int] = field(default_factory=dict)
    #: how often each top-level request parameter was sent (max_tokens, temperature, reasoning_effort, ...)
    request_params: dict[str, int] = field(default_factory=dict)
    reasoning_efforts: dict[str, int] = field(default_factory=dict)
    reasoning_refused: int = 0
    batch_line_statuses: dict[str, int] = field(default_factory=dict)
    batch_creates_refused: int = 0
    completion_seq: int = 0
    rpm_window: _Window = field(default_factory=_Window)
    tpm_window: _Window = field(default_factory=_Window)

    def __post_init__(self) -> None:
        self.config = replace(self.initial)

    def reset(self) -> None:
        in_flight, seq = self.in_flight, self.completion_seq
        fresh = FaultState(self.initial)
        for f in fields(self):
            setattr(self, f.name, getattr(fresh, f.name))
        # Requests still being handled will decrement in_flight, so it must survive a reset; ids stay unique.
        self.in_flight = self.max_in_flight = in_flight
        self.completion_seq = seq

    def flight(self, delta: int) -> None:
        """A request starts (+1) or ends (-1): in flight now, its maximum, and its time-weighted mean."""
        now = time.monotonic()
        if self.first_request_at is None:
            self.first_request_at = self.last_change_at = now
        self.in_flight_area += self.in_flight * (now - self.last_change_at)
        self.last_change_at = now
        self.in_flight += delta
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if delta > 0:
            self.area_at_last_start, self.last_start_at = self.in_flight_area, now

    def mean_in_flight(self, to_last_start: bool = False) -> float:
        """Requests in flight on average, from the first request's start to the last change (0 before any);
        `to_last_start`: to the last request's start instead, leaving out the last wave's drain (every
        client's tail), so what remains shows whether the client kept its slots full while it had work."""
        end, area = (
            (self.last_start_at, self.area_at_last_start)
            if to_last_start
            else (self.last_change_at, self.in_flight_area)
        )
        if self.first_request_at is None or end <= self.first_request_at:
            return 0.0
        return area / (end - self.first_request_at)

    def record(self, status: int | str) -> None:
        _bump(self.statuses, str(status))

    def next_completion_id(self) -> str:
        self.completion_seq += 1
        return f"chatcmpl-fault{self.completion_seq:08x}"

    def note_request(self, system: str | None, format_kind: str, request_tokens: int) -> None:
        """What a test checks reached the provider: prompts, response formats, the largest request."""
        if system is not None:
            if system in self.system_prompts or len(self.system_prompts) < MAX_SYSTEM_PROMPTS:
                _bump(self.system_prompts, system)
            else:
                self.system_prompts_dropped += 1
        _bump(self.response_formats, format_kind)
        self.max_request_tokens = max(self.max_request_tokens, request_tokens)

    def note_params(self, params: tuple[str, ...], effort: object) -> None:
        for name in params:
            _bump(self.request_params, name)
        if effort is not None:
            _bump(self.reasoning_efforts, str(effort))

    def admit(self, now: float, tokens: int) -> tuple[str, float] | None:
        """None if the request fits the rpm and tpm windows (and is counted in them), else (limit, wait)."""
        cfg = self.config
        for name, window, weight, limit in (
            ("rpm", self.rpm_window, 1, cfg.rpm),
            ("tpm", self.tpm_window, tokens, cfg.tpm),
        ):
            wait = window.wait(now, weight, limit)
            if wait is not None:
                self.overshoot_429 += 1
                _bump(self.overshoot_by, name)
                return name, wait
        if cfg.rpm > 0:
            self.rpm_window.add(now, 1)
        if cfg.tpm > 0:
            self.tpm_window.add(now, tokens)
        self.tokens_admitted_times.append((time.time(), tokens))
        return None

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "ok": self.ok,
            "by_article": dict(self.by_article),
            "by_model_article": dict(self.by_model_article),
            "statuses": dict(self.statuses),
            "overshoot_429": self.overshoot_429,
            "overshoot_by": dict(self.overshoot_by),
            "ok_times": list(self.ok_times),
            "tokens_admitted_times": [list(pair) for pair in self.tokens_admitted_times],
            "max_in_flight": self.max_in_flight,
            "in_flight": self.in_flight,
            "mean_in_flight": round(self.mean_in_flight(), 2),
            "mean_in_flight_to_last_start": round(self.mean_in_flight(to_last_start=True), 2),
            "context_refused": self.context_refused,
            "max_request_tokens": self.max_request_tokens,
            "system_prompts": dict(self.system_prompts),
            "system_prompts_dropped": self.system_prompts_dropped,
            "response_formats": dict(self.response_formats),
            "request_params": dict(self.request_params),
            "reasoning_efforts": dict(self.reasoning_efforts),
            "reasoning_refused": self.reasoning_refused,
            "batch_line_statuses": dict(self.batch_line_statuses),
            "batch_creates_refused": self.batch_creates_refused,
            "config": self.config.public(),
        }


_NORMAL = NormalDist()


def completion_latency(config: ServerConfig, key: str, number: int) -> float:
    """Seconds a completion takes: ``latency``, or log-normal around it (median ``latency``) with
    ``latency_sigma``, drawn from the article's key and its request number (a retry draws anew)."""
    if config.latency_sigma <= 0 or config.latency <= 0:
        return config.latency
    digest = hashlib.blake2b(f"{key}:{number}".encode(), digest_size=8).digest()
    u = (int.from_bytes(digest, "big") + 0.5) / 2**64  # in (0, 1), never an end
    return config.latency * math.exp(config.latency_sigma * _NORMAL.inv_cdf(u))


def _bump(counter: dict[str, int], key: str) -> None:
    counter[key] = counter.get(key, 0) + 1
