"""The Python API for scripts:

from producer import Client
batch = Client().submit(["text one", {"id": "a2", "text": "text two", "url": "..."}])
batch.wait(progress=True)
for result in batch.results():
    print(result.id, result.summary)
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from contract.errors import BatchNotFound, BatchPaused, ConfigError
from contract.job import unfinished
from contract.keys import BATCH_ID_RE
from contract.models import known_price, load_prices
from contract.record import JobResult
from contract.redisconn import check_reachable, make_redis
from contract.settings import Settings
from contract.spec import PLACEHOLDERS, BatchSpec, unknown_placeholders
from contract.store import JobStore

from . import output
from .output import ROW_STATUS
from .progress import ProgressBar, counts_line, projection, projection_line

if TYPE_CHECKING:
    from celery import Celery

    from . import reader
    from .estimate import Estimate
    from .submit import SubmitReport


def publish(client: Client, messages: list[tuple[int, str]]) -> None:
    """Celery is imported only by what publishes: reading commands start faster without it."""
    from contract.messaging import publish as send

    send(client.celery, client.settings, messages)


def served_model(base_url: str, timeout: float = 10.0) -> str:
    """The model to use when none was named and no key is set: the one the endpoint's /v1/models lists
    (vLLM, Ollama, llama.cpp and proxies serve it). Several, none, or no answer: a ConfigError naming
    them and how to choose."""
    import json as _json
    import urllib.error
    import urllib.request

    from contract.settings import redact_url

    where = redact_url(base_url)
    # A proxy in the environment must not stand between us and a server on this machine.
    opener = urllib.request.build_opener(*([urllib.request.ProxyHandler({})] if _loopback(base_url) else []))
    try:
        with opener.open(f"{base_url}/models", timeout=timeout) as r:
            listed = [str(m.get("id")) for m in _json.loads(r.read()).get("data", []) if m.get("id")]
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(
            f"no model named (--model or SUMMARIZE_MODEL) and {where}/models did not list one ({exc}): name one"
        ) from None
    if len(listed) == 1:
        return listed[0]
    if not listed:
        raise ConfigError(f"no model named (--model or SUMMARIZE_MODEL) and {where}/models lists none: name one")
    raise ConfigError(
        f"no model named (--model or SUMMARIZE_MODEL) and {where} serves several: " + ", ".join(listed[:20])
    )


def batch_api_missing(settings: Settings, timeout: float = 5.0) -> str | None:
    """A cheap look before a batch-mode submit: the endpoint answering 404 (or 405) to GET /batches has no
    Batch API (vLLM's online server, Ollama, llama.cpp), so the batch would halt at its first pack. The
    sentence to warn with, or None (it has one, or the look was inconclusive)."""
    import urllib.error
    import urllib.request

    from contract.settings import redact_url

    base = settings.openai_base_url
    opener = urllib.request.build_opener(*([urllib.request.ProxyHandler({})] if _loopback(base) else []))
    req = urllib.request.Request(f"{base}/batches?limit=1")
    req.add_header("Authorization", "Bearer " + str(settings.openai_api_key))
    try:
        with opener.open(req, timeout=timeout):
            return None
    except urllib.error.HTTPError as exc:
        if exc.code in (404, 405):
            return (
                f"{redact_url(base)} answers {exc.code} to /batches: it seems to have no Batch API, so the batch "
                "will halt at its first pack; use --fallback-mode online (or --mode online)"
            )
        return None
    except (OSError, ValueError):
        return None


def _loopback(url: str) -> bool:
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def new_batch_id() -> str:
    return f"b{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def paused_note(status: dict[str, Any]) -> str:
    """Why a batch is paused and the command that goes on, in one line."""
    b, left = status["batch"], unfinished(status)
    if status.get("reason") != "budget":
        return f"batch {b} is paused (summarize pause): {left} job(s) wait; go on with: summarize resume {b}"
    spent = []
    if status.get("budget_usd") is not None:
        spent.append(f"${status['spent_usd']:.4f} of ${status['budget_usd']:.4f}")
    if status.get("budget_tokens") is not None:
        spent.append(f"{status['spent_tokens']} of {status['budget_tokens']} tokens")
    flag = "--budget-usd USD" if status.get("budget_usd") is not None else "--budget-tokens N"
    return (
        f"batch {b} is paused by its budget ({', '.join(spent)} spent; the next call would go over it): "
        f"{left} job(s) wait; go on with a larger cap: summarize resume {b} {flag}"
    )


def check_budget(budget_usd: float | None, budget_tokens: int | None) -> None:
    """A cap of nothing or less would only pause the batch before its first call: refused, naming the option."""
    if budget_usd is not None and not budget_usd > 0:
        raise ConfigError(f"--budget-usd must be more than 0, got {budget_usd:g}")
    if budget_tokens is not None and (isinstance(budget_tokens, bool) or int(budget_tokens) != budget_tokens):
        raise ConfigError(f"--budget-tokens must be a whole number of tokens, got {budget_tokens!r}")
    if budget_tokens is not None and budget_tokens < 1:
        raise ConfigError(f"--budget-tokens must be at least 1, got {budget_tokens}")


def build_spec(
    settings: Settings, stored: BatchSpec | None, model: str | None, max_words: int | None, **options: Any
) -> tuple[BatchSpec, dict[str, Any]]:
    """The batch's spec, and its budget (budget_usd, budget_tokens: state, not spec, as resume changes it).

    For a batch that exists (`stored`), what is left out is taken from its stored spec, so the same
    file with only `--batch-id` resumes it; what is given must match it (init_batch names a difference)."""
    options = {k: v for k, v in options.items() if v is not None}
    budget: dict[str, Any] = {k: options.pop(k) for k in ("budget_usd", "budget_tokens") if k in options}
    check_budget(budget.get("budget_usd"), budget.get("budget_tokens"))
    unknown = unknown_placeholders(options["prompt"]) if isinstance(options.get("prompt"), str) else []
    if unknown:
        names = ", ".join("{" + n + "}" for n in unknown)
        raise ConfigError(
            f"the prompt has an unknown placeholder {names}: the only one is "
            + ", ".join("{" + n + "}" for n in PLACEHOLDERS)
            + f" (write {{{{{unknown[0]}}}}} for a literal {{{unknown[0]}}})"
        )
    price_in, price_out = options.pop("price_in", None), options.pop("price_out", None)
    if stored is None:
        model = model or settings.model or served_model(settings.openai_base_url)
        # How its models are called (chat or reasoning parameters), when the submit does not say.
        options.setdefault("model_family", settings.model_family or None)
        options.setdefault("reasoning_effort", settings.reasoning_effort)
        options.setdefault("reasoning_tokens", settings.reasoning_tokens)
        max_words = settings.max_words if max_words is None else max_words
        options["fallback_model"] = options.get("fallback_model") or settings.fallback_model or None
        options["prices"] = prices_for(settings, model, options["fallback_model"], price_in, price_out)
    else:
        model = model or stored.model
        max_words = stored.max_words if max_words is None else max_words
        for f in dataclasses.fields(BatchSpec):
            if f.name not in ("model", "max_words", "prices"):
                options.setdefault(f.name, getattr(stored, f.name))
        given = price_in is not None or price_out is not None
        options["prices"] = (
            prices_for(settings, model, options["fallback_model"], price_in, price_out) if given else stored.prices
        )
    try:
        spec = BatchSpec(model=model, max_words=max_words, **options)
    except TypeError as exc:
        raise ConfigError(f"submit(): {exc}") from None
    if "budget_usd" in budget:
        # Every model the batch may call: a call at an unknown price would be held and spent at $0.
        fallback = spec.fallback_model or settings.fallback_model
        for m in [model] + ([fallback] if fallback else []):
            if spec.price(m) is None:
                raise ConfigError(
                    f"a budget in USD needs the price of {m!r}"
                    + (" (the fallback model)" if m != model else "")
                    + ", which is not known: give --price-in and --price-out (USD per million tokens), "
                    "or SUMMARIZE_PRICES"
                )
    return spec, budget


def prices_for(
    settings: Settings, model: str, fallback: str | None, price_in: float | None, price_out: float | None
) -> dict[str, list[float]] | None:
    """Each model's price as known now (--price-in/--price-out, SUMMARIZE_PRICES, the built-in table)."""
    table = load_prices(settings.prices) if settings.prices else {}
    prices: dict[str, list[float]] = {}
    for name in filter(None, (model, fallback)):
        found = table.get(name) or known_price(name)
        if found is not None:
            prices[name] = [found.input, found.output]
    if (price_in is None) != (price_out is None):
        raise ConfigError("--price-in and --price-out go together")
    if price_in is not None and price_out is not None:
        if price_in < 0 or price_out < 0:
            raise ConfigError("prices can't be negative")
        prices[model] = [float(price_in), float(price_out)]
    return prices or None


def estimate(
    source: str | os.PathLike[str] | Iterable[str | dict[str, Any]],
    settings: Settings | None = None,
    r: Any = "",
    name: str = "",
    model: str | None = None,
    max_words: int | None = None,
    skip_invalid: bool = False,
    input_format: str | None = None,
    text_field: str | None = None,
    id_field: str | None = None,
    latency: float = 2.0,
    **options: Any,
) -> Estimate:
    """`summarize estimate`: what submitting `source` (a path, or items) would send, cost and take, read and
    validated as submit does (its InvalidInput), nothing stored. `r` is a Redis client (bytes) for the
    result-cache look-up; left out, one to settings' Redis is made, and an unreachable Redis is said in
    the estimate's cache_note, not raised. Options as submit's (spec options; budgets are ignored)."""
    from . import estimate as est
    from . import reader

    settings = settings or Settings.from_env()
    if latency <= 0:
        raise ConfigError(f"--latency must be more than 0 seconds, got {latency:g}")
    options = {k: v for k, v in options.items() if k not in ("budget_usd", "budget_tokens", "priority")}
    spec, _ = build_spec(settings, None, model, max_words, **options)
    given = options.get("price_in") is not None
    source_of_price = (
        "--price-in/--price-out"
        if given
        else "SUMMARIZE_PRICES"
        if settings.prices and spec.model in load_prices(settings.prices)
        else "the built-in model table"
    )
    note, own = "", None
    if isinstance(r, str):  # not given: this process connects, and says so if it can't
        from contract.errors import BrokerUnavailable

        try:
            check_reachable(settings)
            r = own = make_redis(settings, max_connections=2, decode=False)
        except BrokerUnavailable as exc:
            r, note = None, f"not looked up: {exc}"
    fields = reader.Fields.of(text_field, id_field)
    try:
        if isinstance(source, str | os.PathLike):
            path = os.fspath(source)
            with reader.opened(path, settings.max_article_bytes, input_format, fields) as src:
                return est.run(
                    src,
                    name or ("<stdin>" if path == "-" else path),
                    settings,
                    spec,
                    spec.prices,
                    source_of_price,
                    r,
                    skip_invalid,
                    latency,
                    note,
                )
        if isinstance(source, bytes | dict):
            raise ConfigError("estimate() takes a path or an iterable of articles; wrap a single text in a list")
        with reader.opened_items(source, settings.max_article_bytes, fields) as src:
            return est.run(
                src, name or "<items>", settings, spec, spec.prices, source_of_price, r, skip_invalid, latency, note
            )
    finally:
        if own is not None:
            own.close()


class Batch:
    """A handle on one batch: status, wait, results, export, retry."""

    def __init__(self, client: Client, batch_id: str, report: SubmitReport | None = None) -> None:
        self.client, self.id, self.report = client, batch_id, report
        #: what reading the input skipped (a directory's subdirectories and other files)
        self.notes: list[str] = []

    def status(self) -> dict[str, Any]:
        return self.client.store.status(self.id)

    def progress(self, status: dict[str, Any] | None = None) -> dict[str, Any]:
        """While it runs: rate so far, ETA and the whole batch's projected cost (progress.projection), on
        Redis' clock (the batch's creation time is Redis')."""
        status = status or self.status()
        r = self.client.store.r
        created = r.hget(self.client.store.keys.batch(self.id), "created")
        sec, usec = r.time()
        return projection(status, int(created or 0), sec * 1000 + usec // 1000)

    def wait(
        self, timeout: float | None = None, progress: bool = False, poll: float = 0.5, keep_waiting: bool = False
    ) -> dict[str, Any]:
        """Block until every job is done, failed or cancelled; returns the last status. Raises TimeoutError
        after `timeout` seconds, and BatchPaused (its `status` attached) as soon as the batch is paused, by
        the user or by its budget, since nothing would move until someone resumes it (unless `keep_waiting`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        status = self.status()
        bar = ProgressBar(f"batch {self.id}", status["total"]) if progress else None
        try:
            while True:
                left = unfinished(status)
                paused = status["state"] == "paused"
                if bar:
                    bar.update(
                        status["total"] - left,
                        f"paused ({status['reason']}): waiting for a resume"
                        if paused
                        else f"running {status['running']} failed {status['failed']}, "
                        + projection_line(self.progress(status)),
                    )
                if left <= 0:
                    return status
                if paused and not keep_waiting:
                    error = BatchPaused(paused_note(status))
                    error.status = status  # type: ignore[attr-defined]
                    raise error
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"batch {self.id} not finished after {timeout:g} s: {counts_line(status)}")
                time.sleep(poll)
                status = self.status()
        finally:
            if bar:
                bar.close()

    def results(self) -> Iterator[JobResult]:
        """Every job in input order (unfinished ones with their current status: queued or running)."""
        for r in self.client.store.results(self.id):
            yield dataclasses.replace(r, status=ROW_STATUS[r.status]) if r.status in ROW_STATUS else r

    def export(
        self,
        path: str | os.PathLike[str],
        format: str | output.Format | None = None,
        status: str | Iterable[str] | None = None,
        flagged: bool = False,
    ) -> output.Exported:
        """Every job's row in input order to the file `path` ('-': stdout), in `format` (a name of
        producer.output.FORMATS: "jsonl", "csv"; None: the one the path's suffix names, `.jsonl` or `.csv`),
        exactly as `summarize results --out` writes it. Returns what it wrote: `.rows`, `.path`, `.format`,
        `.unfinished` (jobs not finished yet: their rows say queued or running) and the batch's `.status`.
        ConfigError for a suffix no format has, an unknown format, or a file that can't be written.
        `status` ("failed", or several): only the rows of jobs in it (as `results --status`)."""
        wanted = [status] if isinstance(status, str) else (list(status) if status is not None else None)
        return output.export(self, path, output.resolve(path, format), statuses=wanted, flagged=flagged)

    def iter_results(self, follow: bool = False, after: str = "0-0") -> Iterator[JobResult]:
        """Finished jobs in the order they finished. With follow=True it waits for the rest and ends when
        the batch is over; without, it ends with the jobs finished so far."""
        for _, row in self.client.store.follow(self.id, after, stop_when_over=follow):
            yield row

    def retry(
        self,
        model: str | None = None,
        fallback_model: str | None = None,
        price_in: float | None = None,
        price_out: float | None = None,
        budget_usd: float | None = None,
        budget_tokens: int | None = None,
        flagged: bool = False,
    ) -> int:
        """Requeue the batch's failed jobs (the dead-letter set); returns how many. What made a halted batch
        fail can be changed first: another model, a fallback, prices, a new budget. The change is recorded
        in the batch's spec (`status` shows it); jobs already done keep the model that wrote them.
        `flagged`: requeue instead the done jobs whose answer some check flagged (docs/quality.md)."""
        check_budget(budget_usd, budget_tokens)
        store = self.client.store
        if any(v is not None for v in (model, fallback_model, price_in, price_out)):
            stored = store.spec(self.id)
            new_model = model or stored.model
            fallback = stored.fallback_model if fallback_model is None else (fallback_model or None)
            prices = dict(stored.prices or {})
            if price_in is not None or price_out is not None:
                prices.update(self.client._prices(new_model, fallback, price_in, price_out) or {})
            else:
                known = self.client._prices(new_model, fallback, None, None) or {}
                prices.update({k: v for k, v in known.items() if k not in prices})
            spec = dataclasses.replace(stored, model=new_model, fallback_model=fallback, prices=prices or None)
            if store.require_batch(self.id).get("budget_usd") or budget_usd is not None:
                for m in [new_model] + ([fallback] if fallback else []):
                    if spec.price(m) is None:
                        raise ConfigError(f"a budget in USD needs the price of {m!r}: give --price-in and --price-out")
            store.respec(self.id, spec)
        if budget_usd is not None or budget_tokens is not None:
            store.control(self.id, "budget", budget_usd, budget_tokens)
        if flagged:
            messages, n = store.retry_flagged(self.id, list(store.flagged_ids(self.id)))
        else:
            messages, n = store.retry_failed(self.id)
        publish(self.client, messages)
        return n

    def pause(self) -> str:
        """No new calls for this batch (calls in flight finish and are stored); returns its state."""
        return self.client.store.control(self.id, "pause")[0]

    def resume(self, budget_usd: float | None = None, budget_tokens: int | None = None) -> str:
        """Go on (after pause, or after the budget stopped it: give a larger one); returns its state.
        A cancelled batch can't go on (ConfigError); a halted one goes on with `retry` after the fix."""
        check_budget(budget_usd, budget_tokens)
        state = self.client.store.require_batch(self.id).get("state", "running")
        if state == "cancelled":
            raise ConfigError(
                f"batch {self.id} was cancelled: it can't be resumed; submit its articles again under a new --batch-id"
            )
        if state == "halted":
            raise ConfigError(
                f"batch {self.id} is halted by a provider error (see summarize status {self.id}): fix the cause, "
                f"then summarize retry {self.id}"
            )
        state, reason = self.client.store.control(self.id, "budget", budget_usd, budget_tokens)
        if state == "paused" and reason == "budget" and budget_usd is None and budget_tokens is None:
            raise ConfigError(
                f"batch {self.id} stopped at its budget: resume it with a larger --budget-usd or --budget-tokens"
            )
        state, _ = self.client.store.control(self.id, "resume")
        if state == "running":
            messages, _ = self.client.store.unpark(self.id)
            publish(self.client, messages)
        return state

    def purge(self, force: bool = False) -> int:
        """Remove the batch from Redis (export its results first); refuses while jobs are unfinished unless
        `force`. Returns how many jobs it removed."""
        return self.client.store.purge(self.id, force)

    def cancel(self) -> int:
        """No further calls; every job that has not started ends 'cancelled'. Returns how many ended now."""
        self.client.store.control(self.id, "cancel")
        return self.client.store.cancel_waiting(self.id)


class Client:
    """Talks to Redis and the broker only: importing it never loads the worker or the LLM client."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        check_reachable(self.settings)
        self.redis = make_redis(self.settings, max_connections=8)
        self.store = JobStore(make_redis(self.settings, max_connections=8, decode=False), self.settings)

    @cached_property
    def celery(self) -> Celery:
        """The broker connection, made when something is published (reading commands never need it)."""
        from contract.messaging import make_celery

        return make_celery(self.settings, "producer")

    def batch(self, batch_id: str) -> Batch:
        self.store.require_batch(batch_id)
        return Batch(self, batch_id)

    def batches(self, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        """The batches Redis holds, newest first, a page of `limit` from `offset`: batch id, state, counts,
        created_ms and finished_ms, cost_usd, model, mode and priority (as `summarize batches --json`)."""
        return self.store.batches(limit, offset)[1]

    def submit(
        self,
        items: Iterable[str | dict[str, Any]],
        batch_id: str | None = None,
        model: str | None = None,
        max_words: int | None = None,
        skip_invalid: bool = False,
        progress: bool = False,
        text_field: str | None = None,
        id_field: str | None = None,
        **options: Any,
    ) -> Batch:
        """Submit texts or dicts ({'text', optional 'id', anything else kept as metadata}; `text_field` and
        `id_field` name other keys for those). Any iterable of dicts streams: a generator, a
        `datasets.Dataset`, `df.itertuples()` turned into dicts; only a sequence is not spooled to disk first.

        `options` take what shapes the answers, stored once with the batch: priority ('high', 'normal',
        'low'), prompt (task instructions; `{max_words}` may appear), temperature, json_schema (a dict),
        fallback_model, no_cache, price_in and price_out (USD per million tokens, for the model),
        require_checks (checks whose flag makes an answer unusable, docs/quality.md) and language (the
        summaries' ISO 639-1 code when the prompt asks for another than the article's); and
        the budget: budget_usd, budget_tokens (the batch pauses before a call would go over).
        """
        if isinstance(items, str | bytes | dict):
            raise ConfigError("submit() takes an iterable of articles; wrap a single text or dict in a list")
        from . import reader  # the submit path's modules: reading commands start without them

        batch_id, stored = self._target(batch_id)
        spec, budget = self._spec(stored, model, max_words, **options)
        fields = reader.Fields.of(text_field, id_field)
        with reader.opened_items(items, self.settings.max_article_bytes, fields) as source:
            return self._submit(source, "<items>", spec, budget, batch_id, stored, skip_invalid, progress)

    def submit_path(
        self,
        path: str,
        batch_id: str | None = None,
        model: str | None = None,
        max_words: int | None = None,
        skip_invalid: bool = False,
        progress: bool = False,
        stop: threading.Event | None = None,
        input_format: str | None = None,
        text_field: str | None = None,
        id_field: str | None = None,
        sample: int | None = None,
        seed: int = 0,
        **options: Any,
    ) -> Batch:
        """Submit a file (JSON lines, plain or .gz/.zst; CSV, TSV; Parquet; one .txt/.md article), a directory
        of .txt/.md files, or '-' for stdin (spec as for submit). The format is `input_format` (one of
        reader.INPUT_FORMATS), else the file's suffix says it; `text_field` and `id_field` name the columns.

        Setting `stop` ends the submit after the chunk in flight; the same call again resumes it.
        `sample` N: a trial; the whole file is validated (the same errors), then only N of its valid articles,
        chosen at random by `seed` (the same N for the same seed and file), are submitted, as a batch of their
        own; the rest is not. Its `report.records` says how many (all of them when the file has fewer).
        """
        from . import reader

        fields = reader.Fields.of(text_field, id_field)
        batch_id, stored = self._target(batch_id)
        spec, budget = self._spec(stored, model, max_words, **options)
        if sample is not None:
            with reader.opened(path, self.settings.max_article_bytes, input_format, fields) as whole:
                picked = self._sampled(whole, sample, seed, skip_invalid, stop)
                name = "<stdin>" if path == "-" else path
                batch = self._submit(
                    reader.Source(lambda: iter(picked)), name, spec, budget, batch_id, stored, False, progress, stop
                )
                batch.notes = whole.notes
                return batch
        with reader.opened(path, self.settings.max_article_bytes, input_format, fields) as source:
            batch = self._submit(
                source, "<stdin>" if path == "-" else path, spec, budget, batch_id, stored, skip_invalid, progress, stop
            )
            batch.notes = source.notes
            return batch

    def _sampled(
        self, source: reader.Source, n: int, seed: int, skip_invalid: bool, stop: threading.Event | None
    ) -> list[reader.Record]:
        """`n` valid records of `source` chosen by `seed`, in input order, after submit's whole first pass
        (its errors raised as for the whole file, unless `skip_invalid`: then only valid ones are chosen)."""
        import random

        from .submit import Checker, Resolver, note_repeated, raise_if_invalid

        if isinstance(n, bool) or n < 1:
            raise ConfigError(f"--sample must be at least 1, got {n!r}")
        should_stop: Callable[[], bool] = stop.is_set if stop is not None else (lambda: False)
        checked = Checker(self.store, "", resuming=False, prepare_after=1 << 62).check(source.records(), should_stop)
        if checked.repeated_ids:
            note_repeated(source.records(), checked)
        raise_if_invalid(checked, skip_invalid)
        resolver = Resolver(checked)
        # The records a submit would store as valid: those with no error, the repeats of an id left out.
        valid = (r for r in map(resolver.resolve, source.records()) if r.error is None)
        count = checked.records - checked.problems.count
        chosen = set(random.Random(seed).sample(range(count), min(n, count)))
        return [r for i, r in enumerate(valid) if i in chosen]

    def _target(self, batch_id: str | None) -> tuple[str, BatchSpec | None]:
        """The batch id to submit to, and its stored spec when it exists already (a resume or an extension)."""
        batch_id = batch_id or new_batch_id()
        if not BATCH_ID_RE.match(batch_id):
            raise ConfigError(f"batch id {batch_id!r} must match {BATCH_ID_RE.pattern}")
        try:
            return batch_id, self.store.spec(batch_id)
        except (BatchNotFound, KeyError):
            return batch_id, None

    def _spec(
        self, stored: BatchSpec | None, model: str | None, max_words: int | None, **options: Any
    ) -> tuple[BatchSpec, dict[str, Any]]:
        return build_spec(self.settings, stored, model, max_words, **options)

    def _prices(
        self, model: str, fallback: str | None, price_in: float | None, price_out: float | None
    ) -> dict[str, list[float]] | None:
        return prices_for(self.settings, model, fallback, price_in, price_out)

    def estimate(
        self,
        source: str | os.PathLike[str] | Iterable[str | dict[str, Any]],
        model: str | None = None,
        max_words: int | None = None,
        skip_invalid: bool = False,
        input_format: str | None = None,
        text_field: str | None = None,
        id_field: str | None = None,
        latency: float = 2.0,
        **options: Any,
    ) -> Estimate:
        """What submitting `source` (a path, as submit_path takes; or items, as submit takes) with these
        options would send, cost and take: read and validated as submit does (the same InvalidInput),
        nothing stored. The result cache is looked up in this client's Redis. See producer/estimate.py."""
        return estimate(
            source,
            self.settings,
            self.store.r,
            "",
            model,
            max_words,
            skip_invalid,
            input_format,
            text_field,
            id_field,
            latency,
            **options,
        )

    def _submit(
        self,
        source: reader.Source,
        name: str,
        spec: BatchSpec,
        budget: dict[str, Any],
        batch_id: str,
        stored: BatchSpec | None,
        skip_invalid: bool,
        progress: bool,
        stop: threading.Event | None = None,
    ) -> Batch:
        from .submit import Checker, Enqueuer, Resolver, note_repeated, raise_if_invalid

        should_stop: Callable[[], bool] = stop.is_set if stop is not None else (lambda: False)
        resuming = stored is not None or self.store.r.exists(self.store.keys.batch(batch_id)) == 1
        checked = Checker(self.store, batch_id, resuming).check(source.records(), should_stop)
        if checked.repeated_ids:
            note_repeated(source.records(), checked)
        raise_if_invalid(checked, skip_invalid)
        index = self.store.init_batch(batch_id, spec, name)
        if budget:
            self.store.control(batch_id, "budget", budget.get("budget_usd"), budget.get("budget_tokens"))
        bar = ProgressBar(f"submit {batch_id}", checked.records) if progress else None
        enqueuer = Enqueuer(
            self.store,
            lambda messages: publish(self, messages),
            batch_id,
            index,
            skip_invalid,
            on_chunk=bar.advance if bar else None,
            should_stop=should_stop,
            step=spec.step,
            on_wait=bar.note if bar else None,
        )
        report = enqueuer.run(source.records(), Resolver(checked))
        if bar:
            bar.close()
        return Batch(self, batch_id, report)

    def close(self) -> None:
        self.redis.close()
        self.store.r.close()
        if "celery" in self.__dict__:
            self.celery.close()


def submit(items: Iterable[str | dict[str, Any]], **kwargs: Any) -> Batch:
    """Shortcut: Client().submit(...) with settings from the environment."""
    return Client().submit(items, **kwargs)
