"""5. Submit rate: `summarize submit FILE` for 100,000 articles of ~3 KB, against the hand-rolled Celery way
(per article `redis.set(text)` + `app.send_task(...)`) measured on a sample and extrapolated. Nothing consumes:
no worker runs, and the queue is one of the benchmark's own. Each run gets a fresh redis-server."""

from __future__ import annotations

import itertools
import json
import time

import redis
from celery import Celery

from contract.keys import PRIORITY_STEPS, Keys
from scripts.stack import BIN

from .common import Ctx, Figure, bench_stack, log, run_child, settings_of, write_jsonl

NAME = "submit"


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


def run(ctx: Ctx) -> None:
    n = 10_000 if ctx.quick else 100_000
    sample = 1_000 if ctx.quick else 5_000
    t0 = time.perf_counter()
    path = write_jsonl(ctx.workdir / f"submit-{n}.jsonl", n)
    size_mb = path.stat().st_size / 1e6
    log(f"submit: wrote {n} articles, {size_mb:.0f} MB, in {time.perf_counter() - t0:.1f}s")

    with bench_stack(ctx, "submit-naive") as stack:
        sent, secs = naive(stack.env["REDIS_URL"], stack.env["SUMMARIZE_QUEUE"], str(path), sample)
        queued = redis.Redis.from_url(stack.env["REDIS_URL"]).llen(stack.env["SUMMARIZE_QUEUE"])
    naive_rate = sent / secs
    log(f"submit: naive {sent} in {secs:.1f}s = {naive_rate:.0f}/s; {queued} messages queued")

    with bench_stack(ctx, "submit-ours") as stack:
        settings = settings_of(stack)
        run = run_child(
            [str(BIN / "summarize"), "submit", str(path), "--batch-id", "bench-submit", "-q"], stack.env, timeout=900
        )
        if run.returncode != 0:
            raise RuntimeError(f"summarize submit failed ({run.returncode}): {run.stderr[-2000:]}")
        client = redis.Redis.from_url(stack.env["REDIS_URL"])
        keys = Keys(settings.key_prefix, settings.queue)
        # kombu keeps each priority step in its own list, under the prefix (see contract/keys.py)
        queued_ours = sum(int(client.llen(keys.broker_queue(step))) for step in PRIORITY_STEPS)
        total = client.hget(keys.batch("bench-submit"), "total")
        mem = client.info("memory")["used_memory"]
        client.close()
    rate = n / run.wall
    log(
        f"submit: ours {n} in {run.wall:.1f}s = {rate:.0f}/s, cpu {run.cpu:.1f}s, "
        f"maxrss {run.maxrss_kb / 1024:.0f} MB, {queued_ours} messages queued, "
        f"batch total {total!r}, redis used {mem / 1e6:.0f} MB"
    )
    expected = -(-n // settings.jobs_per_message)  # one message carries up to jobs_per_message jobs
    if queued_ours != expected or int(total or 0) != n:
        ctx.note(NAME, f"expected {expected} messages for {n} jobs, found {queued_ours} (batch total {total!r})")
    ctx.note(
        NAME,
        f"{n} articles, {size_mb:.0f} MB JSONL; ours = wall time of the whole `summarize submit` process "
        f"(start-up and its validation pass included); naive = {sample} articles in this process, "
        f"rate extrapolated to {n}",
    )
    ctx.add(
        Figure(
            NAME,
            "submit rate / naive SET+send_task",
            rate / naive_rate,
            baseline=f"{rate:,.0f} vs {naive_rate:,.0f} articles/s "
            f"(naive 100k would take {n / naive_rate:.0f}s, ours took {run.wall:.0f}s)",
            target=">= 10",
            ok=rate / naive_rate >= 10,
        )
    )
    ctx.add(
        Figure(
            NAME,
            "producer peak memory (ru_maxrss)",
            run.maxrss_kb / 1024,
            "MB",
            baseline=f"input file {size_mb:.0f} MB; producer CPU {run.cpu:.1f}s",
        )
    )
    ctx.add(Figure(NAME, "redis used_memory after submit", mem / 1e6, "MB", baseline=f"{n} jobs queued"))
    path.unlink(missing_ok=True)
