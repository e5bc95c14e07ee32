"""The one place that reads the environment. Producer, worker and local LLM server all take a Settings.

Each field names its environment variable in its metadata, so `from_env` is a loop over the fields and
the README's configuration table can be checked against them (tests/test_settings.py does).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields, replace
from typing import Any, TypeVar
from urllib.parse import urlsplit

from .errors import ConfigError
from .models import DEFAULT_REASONING_EFFORT, DEFAULT_REASONING_TOKENS, EFFORTS, FAMILIES

LOCAL_MODEL = "sumy-lexrank"
LOCAL_BASE_URL = "http://127.0.0.1:8765/v1"
OPENAI_BASE_URL = "https://api.openai.com/v1"
OPENAI_DEFAULT_MODEL = "gpt-4o-mini"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class Secret(str):
    """A str that never shows itself in repr, logs or tracebacks."""

    def __repr__(self) -> str:
        return "Secret('***')" if self else "Secret('')"


#: query parameters whose value is a credential (matched in the name, any case): `key=`, `api_key=`,
#: `token=`, `access_token=`, `sig=`/`signature=` (signed URLs), `password=`, `secret=`, `auth=`...
_SECRET_PARAM = re.compile(r"key|token|sig|pass|pwd|secret|auth|credential|session", re.IGNORECASE)


def redact_url(url: str) -> str:
    """The URL safe to print or store: a password in it masked (the user name kept, it names an ACL user),
    a bare user part masked whole (it may be a token: `https://TOKEN@host`), and the values of query
    parameters that carry a credential masked. Always a plain str (never a Secret), also for a URL too
    malformed to parse."""
    url = str(url)
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _redact_query(url)
    authority, tail = _split_authority(rest)
    userinfo, at, hostport = authority.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        authority = (f"{user}:***" if colon else "***") + "@" + hostport
    return f"{scheme}://{authority}{_redact_query(tail)}"


def _split_authority(rest: str) -> tuple[str, str]:
    """(`user:pass@host:port`, the path, query and fragment). The user part ends at the last @ before any
    query: a password with an unescaped / in it is masked too (a path with an @ is masked with it)."""
    at = rest.rfind("@", 0, _first(rest, "?#", 0))
    cut = _first(rest, "/?#", at + 1)
    return rest[:cut], rest[cut:]


def _first(text: str, chars: str, start: int) -> int:
    found = [i for i in (text.find(c, start) for c in chars) if i >= 0]
    return min(found, default=len(text))


def _redact_query(tail: str) -> str:
    path, q, query = tail.partition("?")
    if not q:
        return tail
    query, hashmark, fragment = query.partition("#")
    parts = []
    for item in re.split(r"([&;])", query):
        name, eq, value = item.partition("=")
        parts.append(f"{name}=***" if eq and value and _SECRET_PARAM.search(name) else item)
    return f"{path}?{''.join(parts)}{hashmark}{fragment}"


#: URL schemes of a Redis behind Sentinel: `redis+sentinel://[user:pw@]h1:p1,h2:p2/MASTER[/DB]` (rediss: TLS)
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")


def parse_sentinels(text: str, where: str) -> list[tuple[str, int]]:
    """`host:port,host:port` (port 26379 when left out) as (host, port) pairs; ConfigError naming `where`."""
    out: list[tuple[str, int]] = []
    for item in (part.strip() for part in text.split(",")):
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "26379")
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{where}: {item!r} is not host:port (sentinels are listed as h1:26379,h2:26379)")
        out.append((host, int(port)))
    return out


def parse_sentinel_url(url: str, where: str) -> tuple[list[tuple[str, int]], str, str]:
    """A redis+sentinel:// URL as (sentinels, master name, the data nodes' URL `redis[s]://[user:pw@]_/DB`)."""
    scheme, _, rest = str(url).partition("://")
    authority, path = _split_authority(rest)
    userinfo, at, hosts = authority.rpartition("@")
    master, _, db = path.lstrip("/").partition("/")
    db = db.strip("/") or "0"
    if not master or not db.isdigit():
        raise ConfigError(
            f"{where} {redact_url(url)!r} must name the primary the sentinels watch: "
            f"{scheme}://[:password@]h1:26379,h2:26379/MASTER[/DB]"
        )
    data = f"{scheme.replace('+sentinel', '')}://{userinfo}{at}sentinel/{db}"
    return parse_sentinels(hosts, where), master, data


def env(name: str, default: Any, doc: str = "", minimum: float | None = 0) -> Any:
    """A setting read from environment variable `name` (None: not read from the environment)."""
    return field(default=default, metadata={"env": name, "doc": doc, "min": minimum})


@dataclass(frozen=True)
class Settings:
    """Every knob of the system; the README's configuration table says what each protects."""

    redis_url: Secret = env("REDIS_URL", Secret("redis://localhost:6379/0"))
    #: the Celery broker when it is not the store's Redis (a store on a Redis Cluster needs one: kombu has no
    #: Cluster transport); empty: REDIS_URL
    broker_url: Secret = env("SUMMARIZE_BROKER_URL", Secret(""))
    #: CA bundle for rediss:// URLs; certificates are always verified
    redis_ca_certs: str | None = env("REDIS_CA_CERTS", None)
    redis_certfile: str | None = env("REDIS_CERTFILE", None)
    redis_keyfile: str | None = env("REDIS_KEYFILE", None)
    #: run on a Redis whose maxmemory-policy may evict keys (it may then drop jobs: not recommended)
    allow_eviction: bool = env("SUMMARIZE_ALLOW_EVICTION", False)
    #: Redis Sentinel: `host:port` of each sentinel, comma-separated. The store (REDIS_URL) and the broker (unless
    #: SUMMARIZE_BROKER_URL names another Redis) then follow the primary they name; REDIS_URL still gives the
    #: password, database and TLS, its host is ignored. Or REDIS_URL=redis+sentinel://[:pw@]h1:p1,h2:p2/MASTER[/DB]
    redis_sentinels: str = env("REDIS_SENTINELS", "")
    redis_sentinel_master: str = env("REDIS_SENTINEL_MASTER", "mymaster")
    #: the sentinels' own password (`requirepass` in sentinel.conf), when they need one
    redis_sentinel_password: Secret = env("REDIS_SENTINEL_PASSWORD", Secret(""))
    #: replicas a chunk stored by submit and a final outcome must reach (WAIT) before they count as stored;
    #: -1: 1 when Sentinel is configured, else 0
    redis_wait_replicas: int = env("SUMMARIZE_REDIS_WAIT_REPLICAS", -1, minimum=-1)
    #: seconds such a WAIT blocks at most; past it the write counts as stored anyway (logged and counted)
    redis_wait_timeout: float = env("SUMMARIZE_REDIS_WAIT_TIMEOUT", 2.0)

    openai_base_url: str = env("OPENAI_BASE_URL", LOCAL_BASE_URL)
    openai_api_key: Secret = env("OPENAI_API_KEY", Secret("local"))
    model: str = env("SUMMARIZE_MODEL", LOCAL_MODEL)
    #: a whole request's deadline, seconds: a server that trickles bytes can't hold a job forever
    llm_timeout: float = env("SUMMARIZE_LLM_TIMEOUT", 60.0)
    max_words: int = env("SUMMARIZE_MAX_WORDS", 80, minimum=1)
    #: the most a retry after finish_reason=length may ask for
    max_completion_tokens: int = env("SUMMARIZE_MAX_COMPLETION_TOKENS", 4096, minimum=16)
    #: how a batch's models are called when the batch does not say: chat, reasoning, or '' (by the model table)
    model_family: str = env("SUMMARIZE_MODEL_FAMILY", "")
    #: a reasoning model's reasoning_effort when the batch does not say
    reasoning_effort: str = env("SUMMARIZE_REASONING_EFFORT", DEFAULT_REASONING_EFFORT)
    #: completion tokens a reasoning model gets for reasoning on top of the answer's room
    reasoning_tokens: int = env("SUMMARIZE_REASONING_TOKENS", DEFAULT_REASONING_TOKENS)
    #: paid answers that came back unusable (cut off, empty, not JSON) before an article fails for good
    max_unusable: int = env("SUMMARIZE_MAX_UNUSABLE", 6, minimum=1)
    #: a batch with nothing done yet halts once this many of its jobs failed with the same provider 4xx
    #: (a gateway refusing every request alike); `summarize retry` after the fix (0: never)
    halt_after_same_errors: int = env("SUMMARIZE_HALT_AFTER_SAME_ERRORS", 10, minimum=0)
    #: the model's context window in tokens; 0: ask the server's /v1/models, else the table of known models
    context_tokens: int = env("SUMMARIZE_CONTEXT_TOKENS", 0)
    #: the model a batch falls back to when none is given with --fallback-model ('' for none)
    fallback_model: str = env("SUMMARIZE_FALLBACK_MODEL", "")
    #: seconds a finished summary answers identical articles (0: no cache)
    cache_ttl: int = env("SUMMARIZE_CACHE_TTL", 30 * 24 * 3600)
    #: a JSON file {model: {"input": x, "output": y}} of USD per million tokens, over the built-in table
    prices: str = env("SUMMARIZE_PRICES", "")

    #: batch mode: a pack (one provider batch) closes when full or when its oldest job waited this long
    batch_linger: float = env("SUMMARIZE_BATCH_LINGER", 30.0)
    #: batch mode: seconds between two looks at a provider batch's status
    batch_poll: float = env("SUMMARIZE_BATCH_POLL", 60.0, minimum=0.1)
    #: batch mode: the share of the online price a provider batch is billed at
    batch_discount: float = env("SUMMARIZE_BATCH_DISCOUNT", 0.5)
    #: batch mode: the account's enqueued-token limit (prompt + max_tokens of unfinished batches; 0: none)
    batch_enqueued_tokens: int = env("SUMMARIZE_BATCH_ENQUEUED_TOKENS", 0)
    #: batch mode: the provider's limits on one batch
    batch_max_requests: int = env("SUMMARIZE_BATCH_MAX_REQUESTS", 50_000, minimum=1)
    batch_max_bytes: int = env("SUMMARIZE_BATCH_MAX_BYTES", 200 * 1024 * 1024, minimum=4096)

    key_prefix: str = env("SUMMARIZE_KEY_PREFIX", "sumz")
    #: the Celery queue; kombu keeps it under the key prefix, so deployments never share one
    queue: str = env("SUMMARIZE_QUEUE", "summarize")
    #: seconds a finished batch's results are kept (unfinished work never expires)
    result_ttl: int = env("SUMMARIZE_RESULT_TTL", 7 * 24 * 3600, minimum=1)
    #: long articles are split to fit the model's context, so this only guards against a wrong file
    max_article_bytes: int = env("SUMMARIZE_MAX_ARTICLE_BYTES", 8 * 1024 * 1024, minimum=16)
    max_summary_chars: int = env("SUMMARIZE_MAX_SUMMARY_CHARS", 4000, minimum=16)

    #: unfinished jobs of every batch together that submits may store (~2.2 KB each queued): beyond it a
    #: submit waits for room, so a file of any size runs through a small Redis (0: no bound)
    max_queued: int = env("SUMMARIZE_MAX_QUEUED", 1_000_000)
    #: seconds a submit's lease on its batch lasts between renewals: while a submit stores chunks, its batch
    #: is not over (nor expires); a submit gone longer than this lets its batch finish
    submit_lease: float = env("SUMMARIZE_SUBMIT_LEASE", 120.0, minimum=1)
    #: LLM requests in flight per worker process (coroutines on one event loop)
    concurrency: int = env("SUMMARIZE_CONCURRENCY", 200, minimum=1)
    #: jobs of one batch carried by one Celery message: divides the broker's per-message cost
    #: (receive, events, ack) by this much; Flower shows one task per message
    jobs_per_message: int = env("SUMMARIZE_JOBS_PER_MESSAGE", 20, minimum=1)
    #: jobs a worker process claims beyond SUMMARIZE_CONCURRENCY (waiting, leased, for a slot), as a share of
    #: it: a message is claimed only while the process's claimed-and-unfinished jobs are below
    #: concurrency x (1 + this)
    claim_ahead: float = env("SUMMARIZE_CLAIM_AHEAD", 5.0, minimum=0)
    #: how the limiter counts a request's tokens before sending it: "estimate" or "tiktoken"
    token_counter: str = env("SUMMARIZE_TOKEN_COUNTER", "estimate")
    tiktoken_encoding: str = env("SUMMARIZE_TIKTOKEN_ENCODING", "o200k_base")
    #: provider limits shared by every worker; 0 turns that limit off (unless another worker sets one)
    rpm: int = env("SUMMARIZE_RPM", 0)
    tpm: int = env("SUMMARIZE_TPM", 0)

    #: tenacity's budget of backoff sleep inside one run, before the job is handed back with a delay
    attempt_budget: float = env("SUMMARIZE_ATTEMPT_BUDGET", 20.0)
    max_attempts_per_run: int = env("SUMMARIZE_MAX_ATTEMPTS_PER_RUN", 4, minimum=1)
    #: how long after its first failure a job keeps being retried before it fails for good
    retry_horizon: float = env("SUMMARIZE_RETRY_HORIZON", 1800.0)
    #: first delay of a handed-back job; doubles per hand-back up to 5 minutes
    defer_base: float = env("SUMMARIZE_DEFER_BASE", 15.0)
    #: a running job whose lease is not renewed for this long is presumed lost and re-enqueued
    lease_seconds: float = env("SUMMARIZE_LEASE_SECONDS", 60.0, minimum=0.5)
    #: a message the queue has passed (or, on an idle queue, still unclaimed) this long after it was
    #: queued is presumed lost, and its jobs are published again
    queued_grace: float = env("SUMMARIZE_QUEUED_GRACE", 300.0)
    reap_interval: float = env("SUMMARIZE_REAP_INTERVAL", 5.0, minimum=0.05)
    visibility_timeout: int = env("SUMMARIZE_VISIBILITY_TIMEOUT", 4 * 3600, minimum=1)
    #: where each worker process serves Prometheus metrics (the next free port if taken; 0: off)
    metrics_port: int = env("SUMMARIZE_METRICS_PORT", 9808)

    #: key the offline server demands, if any (tests of 401 use it)
    llm_serve_api_key: Secret = env("LLM_SERVE_API_KEY", Secret(""))

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from environment variables (see README); missing ones keep their defaults."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is not None and (raw != "" or _type(f) is bool):
                values[f.name] = _parse(f, raw)
        # With no key and no URL, the offline server is the provider: the demo works with nothing set.
        key = environ.get("OPENAI_API_KEY", "")
        base_url = environ.get("OPENAI_BASE_URL") or (OPENAI_BASE_URL if key else LOCAL_BASE_URL)
        values["openai_base_url"] = base_url.rstrip("/")
        # openai-python refuses an empty key; local servers ignore whatever is sent.
        values["openai_api_key"] = Secret(key or "local")
        if not environ.get("SUMMARIZE_MODEL"):
            # With a key, OpenAI's default; on the bundled server, its model; on any other endpoint with no
            # key (vLLM, Ollama, llama.cpp, a proxy) nothing is guessed: '' asks its /v1/models at submit.
            if base_url == LOCAL_BASE_URL:
                values["model"] = LOCAL_MODEL
            else:
                values["model"] = OPENAI_DEFAULT_MODEL if key else ""
        return cls(**values)

    @classmethod
    def from_dsn(cls, redis_url: str, **overrides: Any) -> Settings:
        """Defaults plus one Redis URL: handy for scripts and tests."""
        return replace(cls(), redis_url=Secret(redis_url), **overrides)

    def validate(self) -> None:
        """Raise ConfigError naming the variable of the first setting out of range."""
        for f in fields(self):
            value, minimum = getattr(self, f.name), f.metadata["min"]
            if (
                minimum is not None
                and isinstance(value, int | float)
                and not isinstance(value, bool)
                and value < minimum
            ):
                raise ConfigError(f"{f.metadata['env']}={value!r} must be at least {minimum}")
        if urlsplit(self.redis_url).scheme not in (
            "redis",
            "rediss",
            "unix",
            "redis+cluster",
            "rediss+cluster",
            *SENTINEL_SCHEMES,
        ):
            raise ConfigError(
                f"REDIS_URL {redact_url(self.redis_url)!r} must start with redis://, rediss://, unix:// "
                "(or redis+cluster://, rediss+cluster:// for a Redis Cluster, redis+sentinel://, "
                "rediss+sentinel:// for Redis Sentinel)"
            )
        if self.broker_url and urlsplit(self.broker_url).scheme not in ("redis", "rediss", "unix", *SENTINEL_SCHEMES):
            raise ConfigError(
                f"SUMMARIZE_BROKER_URL {redact_url(self.broker_url)!r} must start with redis://, rediss://, unix:// "
                "or redis+sentinel://, rediss+sentinel://"
            )
        self._check_sentinels()
        if "+cluster" in urlsplit(self.redis_url).scheme and not self.broker_url:
            raise ConfigError(
                "REDIS_URL names a Redis Cluster: set SUMMARIZE_BROKER_URL to a plain Redis for Celery's broker "
                "(kombu has no Cluster transport)"
            )
        if urlsplit(self.openai_base_url).scheme not in ("http", "https"):
            raise ConfigError(f"OPENAI_BASE_URL {redact_url(self.openai_base_url)!r} must be an http(s) URL")
        if self.llm_timeout <= 0:
            raise ConfigError("SUMMARIZE_LLM_TIMEOUT must be greater than 0")
        if self.model_family and self.model_family not in FAMILIES:
            raise ConfigError(
                f"SUMMARIZE_MODEL_FAMILY={self.model_family!r} must be {' or '.join(FAMILIES)} (or empty)"
            )
        if self.reasoning_effort not in EFFORTS:
            raise ConfigError(
                f"SUMMARIZE_REASONING_EFFORT={self.reasoning_effort!r} must be one of {', '.join(EFFORTS)}"
            )
        if self.token_counter not in ("estimate", "tiktoken"):
            raise ConfigError(f"SUMMARIZE_TOKEN_COUNTER={self.token_counter!r} must be 'estimate' or 'tiktoken'")
        if not self.key_prefix or any(c in self.key_prefix for c in ":{} \t\n"):
            raise ConfigError(f"SUMMARIZE_KEY_PREFIX={self.key_prefix!r} must be a non-empty word without ':'")

    def _check_sentinels(self) -> None:
        """Sentinel addresses parse, in REDIS_SENTINELS and in redis+sentinel:// URLs (ConfigError naming where)."""
        if self.redis_sentinels:
            if "+cluster" in urlsplit(self.redis_url).scheme:
                raise ConfigError("REDIS_SENTINELS is set but REDIS_URL names a Redis Cluster: choose one")
            parse_sentinels(self.redis_sentinels, "REDIS_SENTINELS")
            if not self.redis_sentinel_master:
                raise ConfigError("REDIS_SENTINEL_MASTER must name the primary the sentinels watch")
        for var, url in (("REDIS_URL", self.redis_url), ("SUMMARIZE_BROKER_URL", self.broker_url)):
            if url and urlsplit(url).scheme in SENTINEL_SCHEMES:
                parse_sentinel_url(url, var)
        if self.redis_wait_replicas > 0 and "+cluster" in urlsplit(self.redis_url).scheme:
            raise ConfigError("SUMMARIZE_REDIS_WAIT_REPLICAS applies to a primary with replicas, not a Redis Cluster")

    @property
    def wait_replicas(self) -> int:
        """Replicas a write that must survive a failover waits for: SUMMARIZE_REDIS_WAIT_REPLICAS, and when it
        is -1 (the default), 1 behind Sentinel and 0 otherwise."""
        if self.redis_wait_replicas >= 0:
            return self.redis_wait_replicas
        sentinel = bool(self.redis_sentinels) or urlsplit(self.redis_url).scheme in SENTINEL_SCHEMES
        return 1 if sentinel else 0

    def public(self) -> dict[str, Any]:
        """Settings safe to print: secrets masked, and every URL's credentials (see redact_url)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("redis_url", "broker_url", "openai_base_url"):
                value = redact_url(value)
            elif isinstance(value, Secret):
                value = "***" if value else ""
            out[f.name] = value
        return out

    @staticmethod
    def variables() -> dict[str, str]:
        """Environment variable -> field name, for documentation checks."""
        return {f.metadata["env"]: f.name for f in fields(Settings)}

    # Each component is handed its section (see the bottom of this module).
    @property
    def redis(self) -> RedisSettings:
        return _section(self, RedisSettings)

    @property
    def provider(self) -> ProviderSettings:
        return _section(self, ProviderSettings)

    @property
    def retry(self) -> RetrySettings:
        return _section(self, RetrySettings)

    @property
    def limits(self) -> LimitSettings:
        return _section(self, LimitSettings)

    @property
    def batch_mode(self) -> BatchModeSettings:
        return _section(self, BatchModeSettings)

    @property
    def output(self) -> OutputSettings:
        return _section(self, OutputSettings)

    @property
    def worker(self) -> WorkerSettings:
        return _section(self, WorkerSettings)


def _type(f: Field[Any]) -> type:
    kind = str(f.type).replace(" ", "")
    return {"bool": bool, "int": int, "float": float}.get(kind, str)


def _parse(f: Field[Any], raw: str) -> Any:
    var, kind = f.metadata["env"], _type(f)
    if kind is bool:
        if raw.strip().lower() not in _TRUE | _FALSE:
            raise ConfigError(f"{var}={raw!r} must be true or false")
        return raw.strip().lower() in _TRUE
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            raise ConfigError(f"{var}={raw!r} is not a {kind.__name__}") from None
    return Secret(raw) if "Secret" in str(f.type) else raw


# --- Sections -------------------------------------------------------------------------------------------------
# One environment table and one validation (Settings above); each component is handed the section it reads, so
# its signature says which knobs can change what it does. A section is a frozen view built from Settings' fields of
# the same names; tests/test_settings.py checks every field is in exactly one section.


@dataclass(frozen=True)
class RedisSettings:
    """Where the store and the broker live, and how the keys of one deployment are named."""

    redis_url: Secret
    broker_url: Secret
    redis_ca_certs: str | None
    redis_certfile: str | None
    redis_keyfile: str | None
    allow_eviction: bool
    redis_sentinels: str
    redis_sentinel_master: str
    redis_sentinel_password: Secret
    redis_wait_replicas: int
    redis_wait_timeout: float
    key_prefix: str
    queue: str
    visibility_timeout: int


@dataclass(frozen=True)
class ProviderSettings:
    """The LLM endpoint, its model, how a request to it is shaped and counted."""

    openai_base_url: str
    openai_api_key: Secret
    model: str
    llm_timeout: float
    max_completion_tokens: int
    model_family: str
    reasoning_effort: str
    reasoning_tokens: int
    context_tokens: int
    fallback_model: str
    prices: str
    token_counter: str
    tiktoken_encoding: str


@dataclass(frozen=True)
class RetrySettings:
    """How long and how often a failing call is tried again, and when a job or a batch gives up."""

    attempt_budget: float
    max_attempts_per_run: int
    retry_horizon: float
    defer_base: float
    max_unusable: int
    halt_after_same_errors: int


@dataclass(frozen=True)
class LimitSettings:
    """The provider's limits shared by every worker, and the bounds on what Redis and a process hold."""

    rpm: int
    tpm: int
    concurrency: int
    max_queued: int
    max_article_bytes: int


@dataclass(frozen=True)
class BatchModeSettings:
    """The provider's Batch API: packing, polling, its price and its limits."""

    batch_linger: float
    batch_poll: float
    batch_discount: float
    batch_enqueued_tokens: int
    batch_max_requests: int
    batch_max_bytes: int


@dataclass(frozen=True)
class OutputSettings:
    """What a summary may be, and how long results and cached answers are kept."""

    max_words: int
    max_summary_chars: int
    cache_ttl: int
    result_ttl: int


@dataclass(frozen=True)
class WorkerSettings:
    """How a worker carries jobs: messages, leases, the reaper, the submit lease, metrics, the offline server."""

    jobs_per_message: int
    claim_ahead: float
    lease_seconds: float
    queued_grace: float
    reap_interval: float
    submit_lease: float
    metrics_port: int
    llm_serve_api_key: Secret


SECTIONS: dict[str, type] = {
    "redis": RedisSettings,
    "provider": ProviderSettings,
    "retry": RetrySettings,
    "limits": LimitSettings,
    "batch_mode": BatchModeSettings,
    "output": OutputSettings,
    "worker": WorkerSettings,
}


_S = TypeVar("_S")


def _section(settings: Settings, kind: type[_S]) -> _S:
    return kind(**{f.name: getattr(settings, f.name) for f in fields(kind)})  # type: ignore[arg-type]
