"""`summarize estimate`: what a submit of a file would send, cost and take, before anything is spent.

One pass over the input with submit's own reader and validation (producer/submit.py's Checker: the same
errors, naming file, line and id); nothing is stored. On the way each valid article is counted the way
the worker will treat it:

- its request is built by the worker's own prompt (contract/prompt.py) and counted twice: as the provider
  will bill it (the offline model `sumy-lexrank` by its own tokenizer, words and punctuation marks, exact
  on a sample and scaled to the rest by characters; any other model by the workers' configured counter,
  SUMMARIZE_TOKEN_COUNTER) and as the limiter books it (the configured counter, plus max_tokens);
- an article too long for the model's context is split by the worker's own `Fit` (contract/chunking.py)
  into parts, each a request, plus one request to combine them;
- its result-cache key is derived as the worker derives it (contract/prompt.py fingerprint, cache_key) and
  looked up in the weekly cache hashes in chunks (one HMGET per week a chunk, pipelined), each pointer
  checked to lead to a done answer with that key, as claim.lua checks it; identical texts in the file are
  one call (single flight).

Expected completion tokens are a model of what a model writes when asked for at most N words: about
0.9 N words at about 1.3 tokens a word (COMPLETION_PER_WORD tokens per word asked for; no more words than
the article has). The time is the slowest of three bounds: the workers' concurrency at `latency` seconds a
request, SUMMARIZE_RPM and SUMMARIZE_TPM (the limiter books prompt + max_tokens).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, cast

from contract.chunking import CONTEXT_MARGIN, Fit
from contract.keys import WEEK_S, Keys
from contract.models import DEFAULT_CONTEXT, Price, known_context
from contract.prompt import _LTS, Stage, build_messages, cache_key, fingerprint, max_tokens_for
from contract.record import digest
from contract.settings import LOCAL_MODEL, Settings
from contract.spec import BatchSpec
from contract.tokens import estimate_tokens, token_counter

if TYPE_CHECKING:
    import redis

    from contract.store import JobStore

    from .reader import Record, Source

#: request latency assumed for the time figures, seconds (--latency)
LATENCY = 2.0
#: the worker counts the time figures are given for
WORKERS = (1, 4, 16)
#: completion tokens expected per word asked for (--max-words): ~0.9 of the words at ~1.3 tokens a word
COMPLETION_PER_WORD = 1.2
#: characters an English word takes with its space, to cap the expected words at the article's
CHARS_PER_WORD = 6
#: articles whose cache keys one round trip looks up
CACHE_CHUNK = 1000
#: the offline model's own count is exact on the first EXACT_FIRST articles and one in SAMPLE_EVERY after,
#: the rest scaled by characters (its tokenizer costs 150 us an article of 4 KB: more than the reading)
EXACT_FIRST = 200
SAMPLE_EVERY = 100


@dataclass
class Timing:
    """How long the file would take at one worker count."""

    workers: int
    seconds: float
    #: what bounds it: concurrency, rpm or tpm
    bound: str


@dataclass
class Estimate:
    """What `summarize estimate` prints (`--json`: this, as a dict)."""

    source: str
    model: str
    max_words: int
    mode: str
    #: valid articles (each a row of the batch)
    articles: int = 0
    #: invalid records (with --skip-invalid they are kept as failed jobs, no call)
    invalid: int = 0
    #: distinct texts among the articles: identical ones share one call
    distinct: int = 0
    #: distinct texts the result cache would answer now, no call (None: not looked up)
    cached: int | None = None
    cache_note: str = ""
    #: requests the file would make (parts and combinations of split articles included)
    requests: int = 0
    #: prompt tokens of those requests, as the provider is expected to count them
    prompt_tokens: int = 0
    #: how prompt_tokens were counted
    token_count: str = ""
    #: max_tokens of a request (what the limiter books for the answer)
    completion_room: int = 0
    #: completion tokens expected (COMPLETION_PER_WORD a word asked for)
    completion_tokens: int = 0
    #: what the limiter books for those requests: the configured counter's prompt + max_tokens
    booked_tokens: int = 0
    #: USD per million tokens, input and output (None: unknown)
    price_in: float | None = None
    price_out: float | None = None
    price_source: str = ""
    cost_online: float | None = None
    cost_batch: float | None = None
    batch_discount: float = 0.5
    #: articles too long for one request, and the parts they are split into
    split_articles: int = 0
    split_parts: int = 0
    context_tokens: int = 0
    context_source: str = ""
    rpm: int = 0
    tpm: int = 0
    #: where rpm and tpm come from: this process's settings, or the limits the live workers published
    limits_source: str = "SUMMARIZE_RPM/SUMMARIZE_TPM here"
    concurrency: int = 0
    latency: float = LATENCY
    timings: list[Timing] = field(default_factory=list)
    #: seconds the estimate took
    took: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        """The estimate for people, one figure a line."""
        cost = _usd(self.cost_online)
        price = (
            f"at ${self.price_in:g} in / ${self.price_out:g} out per million tokens ({self.price_source})"
            if self.price_in is not None and self.price_out is not None
            else f"(no price known for {self.model}: give --price-in and --price-out, USD per million tokens)"
        )
        cached = (
            f"{self.cached} of {self.distinct} distinct text(s) would be answered from it now, no call"
            if self.cached is not None
            else self.cache_note
        )
        out = [
            f"estimate for {self.source}: {self.articles} article(s), {self.distinct} distinct text(s), "
            f"model {self.model}, --max-words {self.max_words}; nothing was stored",
        ]
        if self.invalid:
            out.append(f"  invalid records      {self.invalid} (kept as failed jobs: --skip-invalid)")
        out += [
            f"  requests             {self.requests:,}",
            f"  prompt tokens        {self.prompt_tokens:,} ({self.token_count})",
            f"  completion room      {self.completion_room:,} tokens a request (max_tokens)",
            f"  expected completion  {self.completion_tokens:,} tokens (~{COMPLETION_PER_WORD:g} a word asked for)",
            f"  cost online          {cost} {price}",
            f"  cost in batch mode   {_usd(self.cost_batch)} (SUMMARIZE_BATCH_DISCOUNT {self.batch_discount:g})",
            f"  result cache         {cached}",
            "  long articles        "
            + (
                f"{self.split_articles} would be split, into {self.split_parts} part(s) in all"
                if self.split_articles
                else "none would be split"
            )
            + f" (context {self.context_tokens:,} tokens: {self.context_source})",
            f"  limiter books        {self.booked_tokens:,} tokens (prompt + max_tokens a request)",
            f"  time at {self.latency:g} s a request, RPM {self.rpm or 'off'}, TPM {self.tpm or 'off'} "
            f"({self.limits_source}), {self.concurrency} in flight a worker (SUMMARIZE_CONCURRENCY):",
        ]
        out += [
            f"    {t.workers:>3} worker{'s' if t.workers > 1 else ' '}  {_duration(t.seconds):>10}  "
            f"(bound by {t.bound})"
            for t in self.timings
        ]
        return out


def _usd(value: float | None) -> str:
    return "unknown" if value is None else f"${value:,.4f}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def timings(
    requests: int, booked: int, settings: Settings, latency: float, rpm: int | None = None, tpm: int | None = None
) -> list[Timing]:
    """The time at each worker count: concurrency, RPM and TPM (settings', unless given) each bound it;
    the slowest wins."""
    rpm = settings.rpm if rpm is None else rpm
    tpm = settings.tpm if tpm is None else tpm
    out = []
    for n in WORKERS:
        bounds = {"concurrency": math.ceil(requests / (n * settings.concurrency)) * latency if requests else 0.0}
        if rpm:
            bounds["rpm"] = requests / (rpm / 60) + (latency if requests else 0.0)
        if tpm:
            bounds["tpm"] = booked / (tpm / 60) + (latency if requests else 0.0)
        bound = max(bounds, key=lambda k: bounds[k])
        out.append(Timing(n, round(bounds[bound], 3), bound))
    return out


def served_context(settings: Settings, model: str, timeout: float = 5.0) -> int | None:
    """The context window the endpoint's /v1/models gives `model` (what a worker finds first), or None:
    it gives none, or did not answer."""
    import json
    import urllib.request

    from contract.models import listed_context

    from .api import _loopback

    base = settings.openai_base_url
    # A proxy in the environment must not stand between us and a server on this machine.
    opener = urllib.request.build_opener(*([urllib.request.ProxyHandler({})] if _loopback(base) else []))
    req = urllib.request.Request(f"{base}/models")
    req.add_header("Authorization", "Bearer " + str(settings.openai_api_key))
    try:
        with opener.open(req, timeout=timeout) as answer:
            return listed_context(json.loads(answer.read()), model)
    except (OSError, ValueError):
        return None


class Counting:
    """A request's prompt tokens as the provider is expected to bill them, and as the limiter books them."""

    def __init__(self, settings: Settings, model: str) -> None:
        self.book = token_counter(settings.provider)
        self.exact: Callable[[list[dict[str, Any]]], int]
        if model == LOCAL_MODEL:
            from localllm.extractive import count_tokens  # the offline server's own tokenizer (light)

            def local(messages: list[dict[str, Any]]) -> int:
                return count_tokens("\n".join(str(m["content"]) for m in messages))

            self.exact, self.sampled = local, True
            self.name = f"{LOCAL_MODEL}'s own count: words and punctuation marks"
        else:
            book = self.book

            def configured(messages: list[dict[str, Any]]) -> int:
                return book(messages, 0)

            self.exact, self.sampled = configured, False
            self.name = (
                "SUMMARIZE_TOKEN_COUNTER="
                + settings.token_counter
                + ", the count the workers book by"
                + (
                    ": 4 characters a token, OpenAI's rule of thumb for English"
                    if settings.token_counter == "estimate"
                    else ""
                )
            )


@dataclass
class Tally:
    """Per distinct text: what its call(s) would be; the sampled count scales the rest at the end."""

    hashes: list[int] = field(default_factory=list)
    chars: list[int] = field(default_factory=list)
    #: prompt tokens counted exactly, -1 where only the characters are known (scaled at the end)
    exact: list[int] = field(default_factory=list)
    completion: list[int] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)
    booked: list[int] = field(default_factory=list)
    cached: set[int] = field(default_factory=set)


class CacheProbe:
    """Looks cache keys up the way claim.lua does: each week's hash within SUMMARIZE_CACHE_TTL, and a
    pointer counts only when it leads to a done answer carrying the same key."""

    def __init__(self, r: redis.Redis, keys: Keys, ttl_s: int) -> None:
        self.r, self.keys, self.ttl_s = r, keys, ttl_s
        sec, _ = r.time()
        week = sec // WEEK_S
        self.weeks = [keys.cache(w) for w in range(week, week - math.ceil(ttl_s / WEEK_S) - 1, -1)]

    def hits(self, cache_keys: list[str]) -> set[str]:
        from contract.keys import MEMBER_SEP
        from contract.record import unpack
        from contract.schema import FINAL

        pipe = self.r.pipeline(transaction=False)
        for week in self.weeks:
            pipe.hmget(week, cache_keys)
        found: dict[str, bytes] = {}
        for values in pipe.execute():
            for key, ptr in zip(cache_keys, values, strict=True):
                if ptr is not None and key not in found:
                    found[key] = ptr
        if not found:
            return set()
        pipe = self.r.pipeline(transaction=False)
        named = list(found.items())
        for _, ptr in named:
            batch, _, job = ptr.decode("utf-8", "replace").partition(MEMBER_SEP)
            pipe.hget(self.keys.batch_out(batch), job)
        out = set()
        for (key, _), rec in zip(named, pipe.execute(), strict=True):
            if rec is None:
                continue
            f = FINAL.read(unpack(rec))
            status, stored = f["status"], f["cache_key"]
            if _text(status) == "done" and _text(stored) == key:
                out.add(key)
        return out


def fleet_limits(r: redis.Redis, keys: Keys) -> tuple[int, int, int] | None:
    """(rpm, tpm, workers): the limits every worker obeys, the strictest of those the live workers
    published (contract/lua/rate_limits.lua; read only); None when no worker is live."""
    sec, usec = r.time()
    now = sec * 1000 + usec // 1000
    rpm = tpm = live = 0
    for raw in cast("dict[bytes, bytes]", r.hgetall(keys.limits)).values():
        parts = _text(raw).split(":")
        if len(parts) != 3 or not all(p.isdigit() for p in parts) or int(parts[2]) < now:
            continue
        live += 1
        r_, t_ = int(parts[0]), int(parts[1])
        rpm = r_ if r_ and (not rpm or r_ < rpm) else rpm
        tpm = t_ if t_ and (not tpm or t_ < tpm) else tpm
    return (rpm, tpm, live) if live else None


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")


class Estimator:
    """One pass: every valid record counted on its way through submit's checker."""

    def __init__(
        self,
        settings: Settings,
        spec: BatchSpec,
        price: Price | None,
        price_source: str,
        r: redis.Redis | None,
        latency: float = LATENCY,
        redis_note: str = "",
    ) -> None:
        self.settings, self.spec, self.price, self.latency = settings, spec, price, latency
        self.counting = Counting(settings, spec.model)
        # Where the workers look, in their order (worker/context.py): the setting, the server, the table.
        configured = settings.context_tokens
        served = None if configured else served_context(settings, spec.model)
        table = known_context(spec.model)
        self.context = configured or served or table or DEFAULT_CONTEXT
        self.context_source = (
            "SUMMARIZE_CONTEXT_TOKENS"
            if configured
            else "the server's /v1/models"
            if served
            else "the model table"
            if table
            else "the default for a model not in the table"
        )
        self.fit = Fit(self.context, self.counting.book)
        self.room = max_tokens_for(spec.max_words, spec.json_schema is not None) + spec.style().reasoning_tokens
        self.expected = math.ceil(spec.max_words * COMPLETION_PER_WORD)
        self.fp = fingerprint(spec, settings.openai_base_url) if settings.cache_ttl else ""
        self.probe: CacheProbe | None = None
        self.rpm, self.tpm, self.limits_source = settings.rpm, settings.tpm, "SUMMARIZE_RPM/SUMMARIZE_TPM here"
        fleet = fleet_limits(r, Keys(settings.key_prefix, settings.queue)) if r is not None else None
        if fleet is not None:
            self.rpm, self.tpm, live = fleet
            self.limits_source = f"the strictest of {live} live worker(s)"
        self.cache_note = redis_note
        if not self.fp:
            self.cache_note = "not looked up: " + ("--no-cache" if spec.no_cache else "SUMMARIZE_CACHE_TTL is 0")
        elif r is not None:
            self.probe = CacheProbe(r, Keys(settings.key_prefix, settings.queue), settings.cache_ttl)
        else:
            self.cache_note = redis_note or "not looked up: no Redis to look in"
        # The request of an article without a tag character is the template's, the text put in its place.
        sentinel = "\x01"
        messages = build_messages(sentinel, spec)
        self._system = messages[0]["content"]
        self._before, self._after = messages[1]["content"].split(sentinel)
        self._fixed = len(self._system) + len(self._before) + len(self._after)
        #: the configured counter is the 4-characters estimate (tiktoken needs the text itself)
        self._by_chars = settings.token_counter != "tiktoken"
        #: a part's request asks for a plain summary (a JSON answer only at the end)
        self.part_room = max_tokens_for(spec.max_words) + spec.style().reasoning_tokens
        self.price_source = price_source
        self.split_articles = self.split_parts = 0
        self.tally = Tally()
        self._seen = 0
        self._pending: list[tuple[int, str]] = []  # (index in the tally, cache key)

    # ---- the pass ----------------------------------------------------------------------------------

    def observe(self, records: Iterable[Record]) -> Iterator[Record]:
        """The records, passed on to the checker unchanged; each valid one counted on the way."""
        for rec in records:
            if rec.error is None:
                self._count(rec.text)
            yield rec
        self._flush()

    def _count(self, text: str) -> None:
        t, c = self.tally, self.counting
        dg = digest(text)
        t.hashes.append(int(dg[:16], 16))
        self._seen += 1
        plain = True  # no character that may start an <article> tag: the text goes in as it is
        for ch in _LTS:
            if ch in text:
                plain = False
        messages: list[dict[str, Any]] | None = None
        if plain and self._by_chars:
            # The configured estimate counts characters: the request's are the template's and the text's.
            chars = self._fixed + len(text)
            booked = estimate_tokens(chars, 2, self.room)
        else:
            messages = self._messages(text, plain)
            chars = sum(len(m["content"]) for m in messages)
            booked = c.book(messages, self.room)
        if booked > self.context * CONTEXT_MARGIN:  # Fit.fits says no: the worker splits it
            self._split(text)
        else:
            if not c.sampled:
                exact = booked - self.room  # the configured count of the prompt alone
            elif self._seen <= EXACT_FIRST or self._seen % SAMPLE_EVERY == 0:
                exact = c.exact(messages or self._messages(text, plain))
            else:
                exact = -1  # scaled by characters at the end
            words = min(self.spec.max_words, len(text) // CHARS_PER_WORD + 1)
            t.chars.append(chars)
            t.exact.append(exact)
            t.completion.append(math.ceil(words * COMPLETION_PER_WORD))
            t.requests.append(1)
            t.booked.append(booked)
        if self.probe is not None:
            self._pending.append((len(t.hashes) - 1, cache_key(self.fp, dg)))
            if len(self._pending) >= CACHE_CHUNK:
                self._flush()

    def _messages(self, text: str, plain: bool) -> list[dict[str, Any]]:
        """The request the worker sends for `text` whole (build_messages; its template when nothing is escaped)."""
        if not plain:
            return list(build_messages(text, self.spec))
        return [
            {"role": "system", "content": self._system},
            {"role": "user", "content": self._before + text + self._after},
        ]

    def _split(self, text: str) -> None:
        """An article the worker maps and reduces: its parts, then one combination of their summaries."""
        t = self.tally
        room = self.fit.part_room(self.spec)
        parts = self.fit.parts(text, room) if room >= 100 else [text]
        prompt = booked = 0
        for i, part in enumerate(parts):
            messages = build_messages(part, self.spec, Stage("part", i + 1, len(parts), final=False))
            prompt += self.counting.exact(messages)
            booked += self.counting.book(messages, self.part_room)
        # The combination reads every part's summary (about `expected` tokens each) under the combine prompt.
        combine = build_messages("", self.spec, Stage("combine"))
        prompt += self.counting.exact(combine) + len(parts) * (self.expected + 4)
        booked += self.counting.book(combine, self.room) + len(parts) * (self.expected + 4)
        t.chars.append(0)
        t.exact.append(prompt)
        t.completion.append((len(parts) + 1) * self.expected)
        t.requests.append(len(parts) + 1)
        t.booked.append(booked)
        self.split_articles += 1
        self.split_parts += len(parts)

    def _flush(self) -> None:
        if self.probe is None or not self._pending:
            self._pending = []
            return
        hits = self.probe.hits([k for _, k in self._pending])
        self.tally.cached.update(i for i, k in self._pending if k in hits)
        self._pending = []

    # ---- the figures -------------------------------------------------------------------------------

    def result(self, source: str, invalid: int, took: float) -> Estimate:
        import numpy

        t = self.tally
        est = Estimate(
            source=source,
            model=self.spec.model,
            max_words=self.spec.max_words,
            mode=self.spec.mode,
            articles=len(t.hashes),
            invalid=invalid,
            token_count=self.counting.name,
            completion_room=self.room,
            price_source=self.price_source,
            batch_discount=self.settings.batch_discount,
            split_articles=self.split_articles,
            split_parts=self.split_parts,
            context_tokens=self.context,
            context_source=self.context_source,
            rpm=self.rpm,
            tpm=self.tpm,
            limits_source=self.limits_source,
            concurrency=self.settings.concurrency,
            latency=self.latency,
            cache_note=self.cache_note,
        )
        if t.hashes:
            hashes = numpy.array(t.hashes, dtype=numpy.uint64)
            _, first = numpy.unique(hashes, return_index=True)  # the first of each distinct text
            keep = numpy.zeros(len(hashes), dtype=bool)
            keep[first] = True
            est.distinct = int(keep.sum())
            if not self.fp:
                keep[:] = True  # no cache key, no single flight: --no-cache calls for every copy
            if self.probe is not None:
                hit = numpy.zeros(len(hashes), dtype=bool)
                if t.cached:
                    hit[numpy.fromiter(t.cached, dtype=numpy.int64)] = True
                # A text is answered from the cache when any of its copies' keys is there (they are one key).
                cached_hashes = numpy.unique(hashes[hit])
                answered = numpy.isin(hashes, cached_hashes)
                est.cached = int((keep & answered).sum())
                keep &= ~answered
            chars = numpy.array(t.chars, dtype=numpy.int64)
            exact = numpy.array(t.exact, dtype=numpy.int64)
            known = exact >= 0
            if (~known).any():
                ratio = exact[known & (chars > 0)].sum() / max(1, chars[known & (chars > 0)].sum())
                exact = numpy.where(known, exact, numpy.rint(chars * ratio).astype(numpy.int64))
                est.token_count += f" (exact on {int(known.sum()):,} articles, scaled by characters for the rest)"
            est.prompt_tokens = int(exact[keep].sum())
            est.completion_tokens = int(numpy.array(t.completion, dtype=numpy.int64)[keep].sum())
            est.requests = int(numpy.array(t.requests, dtype=numpy.int64)[keep].sum())
            est.booked_tokens = int(numpy.array(t.booked, dtype=numpy.int64)[keep].sum())
        if self.price is not None:
            est.price_in, est.price_out = self.price.input, self.price.output
            cost = self.price.cost(est.prompt_tokens, est.completion_tokens)
            est.cost_online = round(cost, 8)
            est.cost_batch = round(cost * self.settings.batch_discount, 8)
        est.timings = timings(est.requests, est.booked_tokens, self.settings, self.latency, self.rpm, self.tpm)
        est.took = round(took, 3)
        return est


def run(
    source: Source,
    name: str,
    settings: Settings,
    spec: BatchSpec,
    prices: dict[str, list[float]] | None,
    price_source: str,
    r: redis.Redis | None,
    skip_invalid: bool = False,
    latency: float = LATENCY,
    redis_note: str = "",
) -> Estimate:
    """Read and validate `source` as submit's first pass does (raising its InvalidInput, unless
    `skip_invalid`), counting every valid article on the way; nothing is stored."""
    from .submit import Checker, Resolver, note_repeated, raise_if_invalid

    started = time.perf_counter()
    found = (prices or {}).get(spec.model)
    price = Price(found[0], found[1]) if found else None
    est = Estimator(settings, spec, price, price_source, r, latency, redis_note)
    # A new batch: the checker compares with stored jobs only when resuming, so it needs no store (and no
    # Redis); it prepares nothing for a second pass (there is none).
    checker = Checker(cast("JobStore", None), "", resuming=False, prepare_after=1 << 62)
    checked = checker.check(est.observe(source.records()), lambda: False)
    if checked.repeated_ids:
        note_repeated(source.records(), checked)
    raise_if_invalid(checked, skip_invalid)
    if checked.repeated_ids:
        # Kept (--skip-invalid): the repeats of an id become failed jobs, no call. Which records those are
        # is known only now: counted again without them, as note_repeated reads the input again.
        resolver = Resolver(checked)
        est = Estimator(settings, spec, price, price_source, r, latency, redis_note)
        for _ in est.observe(rec for rec in map(resolver.resolve, source.records()) if rec.error is None):
            pass
    return est.result(name, checked.problems.count, time.perf_counter() - started)
