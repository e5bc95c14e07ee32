"""7. Redis memory per job, queued and finished, for 100,000 news articles of ~4 KB; export and purge speed.

The articles are news prose built from the half of samples/articles.jsonl the compression dictionary was
NOT trained on (scripts/train_zdict.py), so the figure is what the dictionary gains on text it has not
seen. They are submitted by `summarize submit` (the real producer) and finished through the worker's
own store calls (claim.lua, then settle.lua with the final record a worker writes, an 80-word summary)
without LLM calls, which have nothing to do with Redis memory.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from pathlib import Path

import redis

from contract.keys import PRIORITY_STEPS, Keys
from contract.ops import Bill, Counts, Done, Run
from contract.record import Final
from contract.redisconn import make_async_redis
from contract.settings import Settings
from scripts.stack import BIN
from worker.storage import WorkerStore

from .common import Ctx, Figure, bench_stack, log, settings_of

NAME = "redis"
SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "articles.jsonl"
#: the samples the compression dictionary did not see (see scripts/train_zdict.py)
HELD_OUT = slice(6, 12)
SUMMARY_WORDS = 80


def news(n: int, size: int = 4096) -> list[str]:
    """n distinct articles of about `size` characters, each a run of whole held-out sample articles."""
    texts = [json.loads(line)["text"] for line in SAMPLES.read_text(encoding="utf-8").splitlines()][HELD_OUT]
    out = []
    for i in range(n):
        parts, k = [f"Story {i} from the regional desk, filed at {i % 24:02d}:{i % 60:02d}."], i
        while sum(len(p) + 2 for p in parts) < size:
            parts.append(texts[k % len(texts)])
            k += 1 + (i // len(texts)) % (len(texts) - 1)
        out.append("\n\n".join(parts)[:size])
    return out


def run(ctx: Ctx) -> None:
    n = 10_000 if ctx.quick else 100_000
    articles = news(n)
    path = ctx.workdir / f"news-{n}.jsonl"
    path.write_text("".join(json.dumps({"id": f"n{i:07d}", "text": t}) + "\n" for i, t in enumerate(articles)))
    with bench_stack(ctx, NAME) as stack:
        settings = settings_of(stack)
        r = redis.Redis.from_url(settings.redis_url)
        base = int(r.info("memory")["used_memory"])
        bid = "bench-redis"
        started = time.monotonic()
        sub = subprocess.run(
            [str(BIN / "summarize"), "submit", str(path), "--batch-id", bid, "-q"],
            env=stack.env,
            capture_output=True,
            text=True,
        )
        if sub.returncode != 0:
            raise RuntimeError(f"submit failed: {sub.stderr[-2000:]}")
        submit_s = time.monotonic() - started
        queued = settled_memory(r) - base
        log(f"submitted {n} in {submit_s:.1f}s; {queued / n:.0f} bytes a queued job")
        asyncio.run(finish(settings, bid, articles))
        # The submit's Celery messages are still queued (no worker consumed them); a real run has none left.
        keys = Keys(settings.key_prefix, settings.queue)
        r.delete(*(keys.broker_queue(step) for step in PRIORITY_STEPS))
        finished = settled_memory(r) - base
        out = ctx.workdir / "export.jsonl"
        started = time.monotonic()
        exp = subprocess.run(
            [str(BIN / "summarize"), "results", bid, "--out", str(out)], env=stack.env, capture_output=True, text=True
        )
        export_s = time.monotonic() - started
        rows = sum(1 for _ in out.open(encoding="utf-8")) if exp.returncode == 0 else 0
        started = time.monotonic()
        purged = subprocess.run([str(BIN / "summarize"), "purge", bid], env=stack.env, capture_output=True, text=True)
        purge_s = time.monotonic() - started
        left = int(r.info("memory")["used_memory"]) - base
    text_kb = sum(len(a.encode()) for a in articles) / n / 1024
    ctx.note(
        NAME,
        f"{n} news articles of {text_kb:.1f} KB (the held-out half of the samples), submitted with "
        f"`summarize submit`, finished with the worker's store calls and an {SUMMARY_WORDS}-word summary; "
        "bytes = redis used_memory delta / jobs; export = `summarize results B --out FILE` wall time, "
        "process start included",
    )
    ctx.add(
        Figure(
            NAME,
            "Redis bytes per queued job",
            queued / n,
            "B",
            baseline=f"{text_kb:.1f} KB article",
            target="<= 2500",
            ok=queued / n <= 2500,
        )
    )
    ctx.add(
        Figure(
            NAME,
            "Redis bytes per finished job",
            finished / n,
            "B",
            baseline="80-word summary",
            target="<= 600",
            ok=finished / n <= 600,
        )
    )
    ctx.add(
        Figure(
            NAME,
            "Redis per million articles queued / finished",
            queued / n * 1e6 / 2**30,
            "GiB",
            baseline=f"finished {finished / n * 1e6 / 2**30:.2f} GiB",
        )
    )
    ctx.add(
        Figure(
            NAME,
            "export rows/s to a file",
            rows / export_s if export_s else 0.0,
            "rows/s",
            baseline=f"{rows} rows in {export_s:.1f}s",
            target=">= 50,000",
            ok=rows / export_s >= 50_000,
        )
    )
    ctx.add(Figure(NAME, "submit articles/s (validate, compress, store, publish)", n / submit_s, "articles/s"))
    ctx.add(
        Figure(
            NAME,
            "purge: Redis left after it",
            left / 2**20,
            "MiB",
            baseline=f"took {purge_s:.1f}s" if purged.returncode == 0 else "purge failed",
        )
    )


def settled_memory(r: redis.Redis) -> int:
    """used_memory once the AOF rewrite buffer and client buffers a burst leaves behind have drained."""
    last = -1
    for _ in range(20):
        now = int(r.info("memory")["used_memory"])
        if abs(now - last) < 64 * 1024:
            return now
        last = now
        time.sleep(0.5)
    return last


async def finish(settings: Settings, batch_id: str, articles: list[str]) -> None:
    """Every job claimed and settled as a worker would, with an 80-word summary, 20 jobs a message."""
    client = make_async_redis(settings)
    store = WorkerStore(client, settings)
    keys = Keys(settings.key_prefix, settings.queue)
    ids = [i if isinstance(i, str) else i.decode() for i in await client.lrange(keys.batch_ids(batch_id), 0, -1)]
    for start in range(0, len(ids), settings.jobs_per_message):
        claimed = await store.claim(batch_id, ids[start : start + settings.jobs_per_message], 3, uuid.uuid4().hex)
        ops = []
        for job in claimed.jobs:
            summary = " ".join(job.text.split()[:SUMMARY_WORDS])
            final = Final(
                "done",
                job.article.digest,
                job.article.origin,
                summary=summary,
                model="gpt-4o-mini",
                prompt_tokens=1100,
                completion_tokens=110,
                attempts=1,
                finished_ms=int(time.time() * 1000),
                cost_usd=0.000231,
            )
            ops.append(Done(run=Run.of(job), counts=Counts(1, 0, Bill(1100, 110, 0.000231)), final=final))
        await store.settle(ops)
    await client.aclose()
