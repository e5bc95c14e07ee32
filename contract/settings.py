"""The one place that reads the environment. Producer, worker and local LLM server all take a Settings."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .errors import ConfigError

LOCAL_MODEL = "sumy-lexrank"
LOCAL_BASE_URL = "http://127.0.0.1:8765/v1"
OPENAI_BASE_URL = "https://api.openai.com/v1"
OPENAI_DEFAULT_MODEL = "gpt-4o-mini"


class Secret(str):
    """A str that never shows itself in repr, logs or tracebacks."""

    def __repr__(self) -> str:
        return "Secret('***')" if self else "Secret('')"


def redact_url(url: str) -> str:
    """The URL with any password replaced, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class Settings:
    """Every knob of the system; see the README's configuration table for what each protects."""

    redis_url: Secret = Secret("redis://localhost:6379/0")
    #: CA bundle for rediss:// URLs; certificates are always verified
    redis_ca_certs: str | None = None
    redis_certfile: str | None = None
    redis_keyfile: str | None = None

    openai_base_url: str = LOCAL_BASE_URL
    openai_api_key: Secret = Secret("local")
    model: str = LOCAL_MODEL
    llm_timeout: float = 60.0
    max_words: int = 80

    key_prefix: str = "sumz"
    queue: str = "summarize"
    result_ttl: int = 7 * 24 * 3600
    max_article_bytes: int = 256 * 1024
    max_summary_chars: int = 4000

    concurrency: int = 200
    #: jobs of one batch carried by one Celery message: divides the broker's per-message cost
    #: (receive, events, ack) by this much; Flower shows one task per message
    jobs_per_message: int = 20
    #: how the limiter counts tokens before a call: "estimate" (4 characters a token, offline) or
    #: "tiktoken" (needs the tiktoken package and its encoding files, e.g. in TIKTOKEN_CACHE_DIR)
    token_counter: str = "estimate"
    tiktoken_encoding: str = "o200k_base"
    #: provider limits shared by every worker; 0 turns that limit off
    rpm: int = 0
    tpm: int = 0

    #: tenacity's budget inside one task run, before the job is handed back with a delay
    attempt_budget: float = 20.0
    max_attempts_per_run: int = 4
    #: how long after its first failure a job keeps being retried before it fails for good
    retry_horizon: float = 1800.0
    #: first delay of a handed-back job; doubles per hand-back up to 5 minutes
    defer_base: float = 15.0
    #: a running job whose lease is not renewed for this long is presumed lost and re-enqueued
    lease_seconds: float = 60.0
    #: a queued job not started within this long while its queue is empty is presumed lost
    queued_grace: float = 300.0
    reap_interval: float = 5.0
    visibility_timeout: int = 4 * 3600

    #: key the offline server demands, if any (tests of 401 use it)
    llm_serve_api_key: Secret = Secret("")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from environment variables (see README); missing ones keep their defaults."""
        env = os.environ if env is None else env
        key = env.get("OPENAI_API_KEY", "")
        # With no key and no URL, the offline server is the provider: the demo works with nothing set.
        default_url = OPENAI_BASE_URL if key else LOCAL_BASE_URL
        base_url = env.get("OPENAI_BASE_URL") or default_url
        default_model = LOCAL_MODEL if base_url == LOCAL_BASE_URL else OPENAI_DEFAULT_MODEL
        values: dict[str, Any] = {
            "redis_url": Secret(env.get("REDIS_URL", cls.redis_url)),
            "redis_ca_certs": env.get("REDIS_CA_CERTS") or None,
            "redis_certfile": env.get("REDIS_CERTFILE") or None,
            "redis_keyfile": env.get("REDIS_KEYFILE") or None,
            "openai_base_url": base_url.rstrip("/"),
            # openai-python refuses an empty key; local servers ignore whatever is sent.
            "openai_api_key": Secret(key or "local"),
            "model": env.get("SUMMARIZE_MODEL") or default_model,
            "llm_serve_api_key": Secret(env.get("LLM_SERVE_API_KEY", "")),
        }
        numeric = {
            "SUMMARIZE_LLM_TIMEOUT": ("llm_timeout", float),
            "SUMMARIZE_MAX_WORDS": ("max_words", int),
            "SUMMARIZE_RESULT_TTL": ("result_ttl", int),
            "SUMMARIZE_MAX_ARTICLE_BYTES": ("max_article_bytes", int),
            "SUMMARIZE_MAX_SUMMARY_CHARS": ("max_summary_chars", int),
            "SUMMARIZE_CONCURRENCY": ("concurrency", int),
            "SUMMARIZE_JOBS_PER_MESSAGE": ("jobs_per_message", int),
            "SUMMARIZE_RPM": ("rpm", int),
            "SUMMARIZE_TPM": ("tpm", int),
            "SUMMARIZE_ATTEMPT_BUDGET": ("attempt_budget", float),
            "SUMMARIZE_MAX_ATTEMPTS_PER_RUN": ("max_attempts_per_run", int),
            "SUMMARIZE_RETRY_HORIZON": ("retry_horizon", float),
            "SUMMARIZE_DEFER_BASE": ("defer_base", float),
            "SUMMARIZE_LEASE_SECONDS": ("lease_seconds", float),
            "SUMMARIZE_QUEUED_GRACE": ("queued_grace", float),
            "SUMMARIZE_REAP_INTERVAL": ("reap_interval", float),
            "SUMMARIZE_VISIBILITY_TIMEOUT": ("visibility_timeout", int),
        }
        for var, (name, kind) in numeric.items():
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            try:
                number = kind(raw)
            except ValueError:
                raise ConfigError(f"{var}={raw!r} is not a {kind.__name__}") from None
            if number < 0:
                raise ConfigError(f"{var}={raw!r} must not be negative")
            values[name] = number
        strings = {
            "SUMMARIZE_KEY_PREFIX": "key_prefix",
            "SUMMARIZE_QUEUE": "queue",
            "SUMMARIZE_TOKEN_COUNTER": "token_counter",
            "SUMMARIZE_TIKTOKEN_ENCODING": "tiktoken_encoding",
        }
        for var, name in strings.items():
            if env.get(var):
                values[name] = env[var]
        settings = cls(**values)
        settings.validate()
        return settings

    @classmethod
    def from_dsn(cls, redis_url: str, **overrides: Any) -> Settings:
        """Defaults plus one Redis URL: handy for scripts and tests."""
        return replace(cls(), redis_url=Secret(redis_url), **overrides)

    def validate(self) -> None:
        if urlsplit(self.redis_url).scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(f"REDIS_URL {redact_url(self.redis_url)!r} must start with redis://, rediss:// or unix://")
        if urlsplit(self.openai_base_url).scheme not in ("http", "https"):
            raise ConfigError(f"OPENAI_BASE_URL {self.openai_base_url!r} must be an http(s) URL")
        if self.max_words < 1 or self.concurrency < 1 or self.llm_timeout <= 0 or self.jobs_per_message < 1:
            raise ConfigError("SUMMARIZE_MAX_WORDS, SUMMARIZE_CONCURRENCY, SUMMARIZE_JOBS_PER_MESSAGE and "
                              "SUMMARIZE_LLM_TIMEOUT must be positive")
        if self.lease_seconds <= 0 or self.reap_interval <= 0:
            raise ConfigError("SUMMARIZE_LEASE_SECONDS and SUMMARIZE_REAP_INTERVAL must be greater than 0")
        if self.token_counter not in ("estimate", "tiktoken"):
            raise ConfigError(f"SUMMARIZE_TOKEN_COUNTER={self.token_counter!r} must be 'estimate' or 'tiktoken'")
        if self.max_summary_chars < 16 or self.max_article_bytes < 16:
            raise ConfigError("SUMMARIZE_MAX_SUMMARY_CHARS and SUMMARIZE_MAX_ARTICLE_BYTES must be at least 16")

    def public(self) -> dict[str, Any]:
        """Settings safe to print: secrets masked, passwords cut out of URLs."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "redis_url":
                value = redact_url(value)
            elif isinstance(value, Secret):
                value = "***" if value else ""
            out[f.name] = value
        return out
