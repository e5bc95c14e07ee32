"""5. Submit rate: `summarize submit FILE` for 100,000 articles of ~4 KB (issue 21: >= 20,000 a second, memory flat
from 10,000 to 100,000), against the hand-rolled Celery way
(per article `redis.set(text)` + `app.send_task(...)`) measured on a sample and extrapolated. Nothing consumes:
no worker runs, and the queue is one of the benchmark's own. Each run gets a fresh redis-server."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import redis
from celery import Celery

from contract.keys import PRIORITY_STEPS, Keys
from contract.settings import Settings
from scripts.stack import BIN

from .common import ChildRun, Ctx, Figure, bench_stack, log, run_child, settings_of, write_jsonl

NAME = "submit"
#: characters an article (the issue's figure is for 4 KB articles)
SIZE = 4000


def naive(url: str, queue: str, path: str, sample: int) -> tuple[int, float]:
    """The hand-rolled way: one SET and one send_task per article. Returns (articles, seconds)."""
    r = redis.Redis.from_url(url)
    app = Celery("naive", broker=url, set_as_current=False)
    app.conf.task_default_queue = queue
    batch = "naive"
    sent = 0
    start = time.perf_counter()
    with open(path, encoding="utf-8") as f:
        for line in itertools.islice(f, sample):
            article = json.loads(line)
            r.set(f"article:{batch}:{article['id']}", article["text"])
            app.send_task("summarize.job", args=(batch, article["id"]))
            sent += 1
    elapsed = time.perf_counter() - start
    app.close()
    r.close()
    return sent, elapsed


def ours(ctx: Ctx, path: Path, n: int) -> tuple[ChildRun, int, str, int, Settings]:
    """`summarize submit PATH` in a fresh stack with SUMMARIZE_MAX_QUEUED above the file: the bound is checked
    chunk by chunk (admit.lua) but never waited on, so the rate is the producer's own. Returns the run, the
    messages queued, the batch total, Redis' used memory and the settings."""
    with bench_stack(ctx, "submit-ours", SUMMARIZE_MAX_QUEUED=str(2 * n + 1000)) as stack:
        settings = settings_of(stack)
        run = run_child(
            [str(BIN / "summarize"), "submit", str(path), "--batch-id", "bench-submit", "-q"], stack.env, timeout=900
        )
        if run.returncode != 0:
            raise RuntimeError(f"summarize submit failed ({run.returncode}): {run.stderr[-2000:]}")
        client = redis.Redis.from_url(stack.env["REDIS_URL"])
        keys = Keys(settings.key_prefix, settings.queue)
        # kombu keeps each priority step in its own list, under the prefix (see contract/keys.py)
        queued = sum(int(client.llen(keys.broker_queue(step))) for step in PRIORITY_STEPS)
        total = client.hget(keys.batch("bench-submit"), "total")
        mem = client.info("memory")["used_memory"]
        client.close()
    expected = -(-n // settings.jobs_per_message)  # one message carries up to jobs_per_message jobs
    if queued != expected or int(total or 0) != n:
        ctx.note(NAME, f"expected {expected} messages for {n} jobs, found {queued} (batch total {total!r})")
    return run, queued, repr(total), int(mem), settings


def run(ctx: Ctx) -> None:
    n = 10_000 if ctx.quick else 100_000
    small = 1_000 if ctx.quick else 10_000
    sample = 1_000 if ctx.quick else 5_000
    t0 = time.perf_counter()
    path = write_jsonl(ctx.workdir / f"submit-{n}.jsonl", n, size=SIZE)
    small_path = write_jsonl(ctx.workdir / f"submit-{small}.jsonl", small, size=SIZE)
    one_path = write_jsonl(ctx.workdir / "submit-1.jsonl", 1, size=SIZE)
    size_mb = path.stat().st_size / 1e6
    log(f"submit: wrote {n} articles of ~{SIZE} characters, {size_mb:.0f} MB, in {time.perf_counter() - t0:.1f}s")

    with bench_stack(ctx, "submit-naive") as stack:
        sent, secs = naive(stack.env["REDIS_URL"], stack.env["SUMMARIZE_QUEUE"], str(path), sample)
        queued = redis.Redis.from_url(stack.env["REDIS_URL"]).llen(stack.env["SUMMARIZE_QUEUE"])
    naive_rate = sent / secs
    log(f"submit: naive {sent} in {secs:.1f}s = {naive_rate:.0f}/s; {queued} messages queued")

    start_up, _, _, _, _ = ours(ctx, one_path, 1)  # what any submit pays before its first record
    small_run, _, _, _, _ = ours(ctx, small_path, small)
    big, queued_ours, total, mem, _ = ours(ctx, path, n)
    rate = n / big.wall
    own = n / max(big.wall - start_up.wall, 1e-9)
    log(
        f"submit: ours {n} in {big.wall:.1f}s = {rate:.0f}/s ({own:.0f}/s after the {start_up.wall:.1f}s start-up), "
        f"cpu {big.cpu:.1f}s, maxrss {big.maxrss_kb / 1024:.0f} MB ({small} articles: "
        f"{small_run.maxrss_kb / 1024:.0f} MB), {queued_ours} messages queued, batch total {total}, "
        f"redis used {mem / 1e6:.0f} MB"
    )
    ctx.note(
        NAME,
        f"{n} articles of ~{SIZE} characters, {size_mb:.0f} MB JSONL, SUMMARIZE_MAX_QUEUED above the file; ours = "
        f"wall time of the whole `summarize submit` process (start-up, {start_up.wall:.1f}s here, and its validation "
        f"pass included); naive = {sample} articles in this process, rate extrapolated to {n}",
    )
    ctx.add(
        Figure(
            NAME,
            f"submit rate, {n:,} articles of 4 KB",
            rate,
            "articles/s",
            baseline=f"{own:,.0f}/s after start-up; producer CPU {big.cpu / n * 1e6:.0f} us an article",
            target=">= 20,000",
            ok=rate >= 20_000,
        )
    )
    ctx.add(
        Figure(
            NAME,
            "submit rate / naive SET+send_task",
            rate / naive_rate,
            baseline=f"{rate:,.0f} vs {naive_rate:,.0f} articles/s "
            f"(naive 100k would take {n / naive_rate:.0f}s, ours took {big.wall:.0f}s)",
            target=">= 10",
            ok=rate / naive_rate >= 10,
        )
    )
    ctx.add(
        Figure(
            NAME,
            f"producer peak memory (ru_maxrss), {n:,} articles",
            big.maxrss_kb / 1024,
            "MB",
            baseline=f"input file {size_mb:.0f} MB; {small:,} articles: {small_run.maxrss_kb / 1024:.0f} MB",
        )
    )
    flat = big.maxrss_kb / max(small_run.maxrss_kb, 1)
    ctx.add(
        Figure(
            NAME,
            f"producer peak memory {n:,} / {small:,} articles",
            flat,
            baseline=f"{big.maxrss_kb / 1024:.0f} vs {small_run.maxrss_kb / 1024:.0f} MB",
            target="<= 1.2 (flat)",
            ok=flat <= 1.2,
        )
    )
    ctx.add(Figure(NAME, "redis used_memory after submit", mem / 1e6, "MB", baseline=f"{n} jobs queued"))
    for p in (path, small_path, one_path):
        p.unlink(missing_ok=True)
