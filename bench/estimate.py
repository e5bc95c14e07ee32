"""`summarize estimate` on the submit benchmark's file (100,000 articles of ~4 KB; issue 24: within 1.5x of
submit's validation pass): the estimate's wall time over the time of submit's first pass (producer/submit.py
Checker, as a submit runs it: parse, validate, index ids, and past 10,000 records hash and compress into its
temporary file) on the same file. Both in this process, each run twice, the faster of each kept; the estimate
looks the result cache up in a fresh redis-server (empty: every chunk's look-up is made, none hits)."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from contract.settings import LOCAL_MODEL
from producer import reader
from producer.api import estimate
from producer.submit import PREPARE_AFTER, Checker

from .common import Ctx, Figure, bench_stack, log, settings_of, write_jsonl

NAME = "estimate"
#: characters an article (the submit benchmark's size)
SIZE = 4000


def validation_pass(path: Path, settings_max_bytes: int, store: object, prepare: bool = True) -> float:
    """Seconds of submit's first pass over `path` (what `summarize submit` does before storing anything);
    without `prepare`, its checks alone (nothing hashed and compressed for the second pass)."""
    from typing import cast

    from contract.store import JobStore

    start = time.perf_counter()
    with reader.opened(str(path), settings_max_bytes) as source:
        after = PREPARE_AFTER if prepare else 1 << 62
        checker = Checker(cast(JobStore, store), "bench-estimate", resuming=False, prepare_after=after)
        checked = checker.check(source.records(), lambda: False)
    took = time.perf_counter() - start
    if checked.prepared is not None:
        checked.prepared.drop()
    return took


def run(ctx: Ctx) -> None:
    n = 10_000 if ctx.quick else 100_000
    path = write_jsonl(ctx.workdir / f"estimate-{n}.jsonl", n, size=SIZE)
    with bench_stack(ctx, "estimate") as stack:
        settings = settings_of(stack)
        r = redis.Redis.from_url(stack.env["REDIS_URL"])
        from producer.api import Client

        client = Client(settings)
        passes, bare, ests, local = [], [], [], []
        figures = None
        for _ in range(2):
            passes.append(validation_pass(path, settings.max_article_bytes, client.store))
            bare.append(validation_pass(path, settings.max_article_bytes, client.store, prepare=False))
            t0 = time.perf_counter()
            figures = estimate(str(path), settings, r)
            ests.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            estimate(str(path), settings, r, model=LOCAL_MODEL)
            local.append(time.perf_counter() - t0)
        client.close()
        r.close()
    assert figures is not None
    best_pass, best_bare, best_est, best_local = min(passes), min(bare), min(ests), min(local)
    ratio, ratio_local = best_est / best_pass, best_local / best_pass
    log(
        f"estimate: {n} articles: validation pass {best_pass:.2f}s (checks alone {best_bare:.2f}s), "
        f"estimate {best_est:.2f}s ({ratio:.2f}x), "
        f"with {LOCAL_MODEL}'s own count {best_local:.2f}s ({ratio_local:.2f}x); runs {passes} / {ests} / {local}; "
        f"{figures.prompt_tokens:,} prompt tokens, {figures.requests:,} requests"
    )
    ctx.note(
        NAME,
        f"{n} articles of ~{SIZE} characters; validation pass = producer/submit.py Checker.check as a submit runs "
        "it; estimate = producer.api.estimate with the result-cache look-up against a fresh Redis; fastest of 2 each",
    )
    ctx.add(
        Figure(
            NAME,
            f"estimate / submit's validation pass, {n:,} articles",
            ratio,
            baseline=f"{best_est:.2f}s vs {best_pass:.2f}s (model fake-model: SUMMARIZE_TOKEN_COUNTER's count)",
            target="<= 1.5",
            ok=ratio <= 1.5,
        )
    )
    ctx.add(
        Figure(
            NAME,
            f"estimate / validation pass, {LOCAL_MODEL}'s own count",
            ratio_local,
            baseline=f"{best_local:.2f}s vs {best_pass:.2f}s (its tokenizer exact on a sample, scaled)",
            target="<= 1.5",
            ok=ratio_local <= 1.5,
        )
    )
    ctx.add(
        Figure(
            NAME,
            "estimate / the validation pass's checks alone (nothing prepared)",
            best_est / best_bare,
            baseline=f"{best_est:.2f}s vs {best_bare:.2f}s: what the estimate adds (hashing for the cache keys, "
            "counting) over parsing and checking",
        )
    )
    path.unlink(missing_ok=True)
