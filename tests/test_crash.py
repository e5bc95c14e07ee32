"""Crashes with real processes: kill -9 of a worker, SIGTERM, a Redis restart, an interrupted producer.

For each: every article ends done, and LLM calls are repeated at most for jobs in flight at the fault.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from contract.keys import Keys
from producer.api import Batch
from scripts.stack import BIN, ROOT, Stack
from tests.conftest import batch_id, isolated_group
from tests.faultserver import FaultServer, article_key, expected_summary
from tests.helpers import articles, wait_until, write_jsonl

CONCURRENCY = 8


def calls_per_article(server: FaultServer, arts: list[dict[str, str]]) -> list[int]:
    by_article = server.stats()["by_article"]
    return [by_article.get(article_key(a["text"]), 0) for a in arts]


def all_done(batch: Batch, arts: list[dict[str, str]], server: FaultServer, timeout: float) -> list[int]:
    """Wait for the batch: every article done with its own summary, none lost. The LLM calls made per article."""
    status = batch.wait(timeout=timeout)
    assert (status["total"], status["done"], status["failed"]) == (len(arts), len(arts), 0), status
    results = {r.id: r for r in batch.results()}
    assert len(results) == len(arts)
    for a in arts:
        r = results[a["id"]]
        assert r.status == "done", r
        assert r.summary == expected_summary(a["text"])
    return calls_per_article(server, arts)


def repeats(calls: list[int]) -> int:
    """LLM calls made for an article beyond its first."""
    return sum(c - 1 for c in calls if c > 1)


def test_kill9_worker_mid_batch_loses_nothing(stack: Stack, redis_url: str, slow_server: FaultServer) -> None:
    slow_server.reset()
    g = isolated_group(stack, redis_url, slow_server.url, SUMMARIZE_CONCURRENCY=str(CONCURRENCY))
    arts = articles("k", 40)
    w1 = g.worker("kill-w1")
    batch = g.client().submit(arts, batch_id=batch_id())
    wait_until(
        lambda: (s := batch.status())["done"] >= CONCURRENCY and s["running"] >= CONCURRENCY // 2,
        60,
        "a batch under way",
    )
    w1.kill9()
    in_flight = batch.status()["running"]

    g.worker("kill-w2")
    calls = all_done(batch, arts, slow_server, timeout=120)
    repeated = repeats(calls)
    print(
        f"kill -9: 40 submitted, 40 done, 0 lost, {repeated} repeated LLM calls, {in_flight} held by the worker "
        f"(at most {CONCURRENCY} of them calling the LLM) at kill"
    )
    assert min(calls) >= 1
    assert repeated <= CONCURRENCY  # only requests in flight are paid twice
    reclaimed = int(g.client().redis.hget(Keys(g.settings.key_prefix).stats, "reclaimed") or 0)
    assert reclaimed == in_flight  # the reaper, not the hour-long visibility timeout, brought them back


def test_sigterm_finishes_or_hands_back_within_bound(stack: Stack, redis_url: str, slow_server: FaultServer) -> None:
    slow_server.reset()
    # A tight rate limit keeps most threads waiting in the limiter: those must hand their jobs back.
    g = isolated_group(stack, redis_url, slow_server.url, SUMMARIZE_CONCURRENCY=str(CONCURRENCY), SUMMARIZE_RPM="120")
    arts = articles("t", 24)
    w1 = g.worker("term-w1")
    batch = g.client().submit(arts, batch_id=batch_id())
    wait_until(lambda: batch.status()["done"] >= 3, 60, "first jobs done")
    started = time.monotonic()
    w1.signal(signal.SIGTERM)
    assert w1.popen is not None
    w1.popen.wait(timeout=60)
    took = time.monotonic() - started
    # Bounded by one LLM request (timeout 2 s here) plus Celery's own shutdown, not by the backlog.
    assert took < 20, f"warm shutdown took {took:.1f}s"
    after_stop = batch.status()
    assert after_stop["running"] == 0 and after_stop["done"] < 24

    g.worker("term-w2")
    calls = all_done(batch, arts, slow_server, timeout=120)
    print(f"SIGTERM: 24 submitted, 24 done, 0 lost, {repeats(calls)} repeated LLM calls, shutdown took {took:.1f}s")
    assert calls == [1] * 24  # handed-back jobs had not called the LLM yet: nothing paid twice


def test_redis_restart_mid_batch(slow_server: FaultServer) -> None:
    slow_server.reset()
    with Stack() as own:
        r1 = own.redis()
        port = int(r1.env["PORT"])
        g = isolated_group(own, own.env["REDIS_URL"], slow_server.url, SUMMARIZE_CONCURRENCY=str(CONCURRENCY))
        arts = articles("r", 40)
        g.worker("redis-w1")
        client = g.client()
        batch = client.submit(arts, batch_id=batch_id())
        wait_until(lambda: batch.status()["done"] >= 4, 60, "first jobs done")
        in_flight = batch.status()["running"]
        r1.stop()  # SIGTERM: Redis fsyncs its append-only file and exits
        time.sleep(3)
        own.redis(port)  # same port, same data directory: the AOF is replayed
        calls = all_done(batch, arts, slow_server, timeout=180)
        repeated = repeats(calls)
        print(
            f"Redis restart: 40 submitted, 40 done, 0 lost, {repeated} repeated LLM calls, "
            f"{in_flight} in flight at the stop"
        )
        assert min(calls) >= 1 and repeated <= CONCURRENCY


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_submit_resumes_without_double_enqueue(
    stack: Stack, redis_url: str, fault_server: FaultServer, tmp_path: Path, sig: int
) -> None:
    g = isolated_group(stack, redis_url, fault_server.url)
    n = 3000
    src = write_jsonl(
        tmp_path / "big.jsonl",
        ({"id": f"p{i}", "text": f"Resumable article {i} on the water board."} for i in range(n)),
    )
    bid = batch_id()
    argv = [str(BIN / "summarize"), "submit", str(src), "--batch-id", bid, "-q"]
    first = subprocess.Popen(argv, env=g.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = g.client()
    wait_until(lambda: client.store.existing_ids(bid) >= 1000 or first.poll() is not None, 60, "submit under way")
    first.send_signal(sig)
    out, err = first.communicate(timeout=60)
    stored_at_stop = client.store.existing_ids(bid)
    if sig == signal.SIGINT:
        assert first.returncode == 130 and "resume with" in err and bid in out
    assert stored_at_stop < n, "the submit finished before it could be interrupted; make the file bigger"

    second = subprocess.run(argv, env=g.env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert f"{stored_at_stop} already there" in second.stderr
    assert client.store.existing_ids(bid) == n

    queued = Counter(job for m in g.queued_messages() for job in m.args[1])
    assert max(queued.values()) == 1  # no job enqueued twice
    orphans = n - len(queued)  # stored by the killed run but never published
    print(
        f"interrupted submit ({signal.Signals(sig).name}): {n} records, {stored_at_stop} stored before the stop, "
        f"{len(queued)} messages, 0 duplicates, {orphans} orphans left to the reaper"
    )
    if sig == signal.SIGINT:
        assert orphans == 0  # a graceful stop finishes the chunk it is publishing

    # A worker drains the queue; the reaper then publishes any orphan. Every article ends done.
    g.worker(f"resume-w-{signal.Signals(sig).name}", SUMMARIZE_CONCURRENCY="64")
    status = client.batch(bid).wait(timeout=240)
    assert status["done"] == n and status["failed"] == 0
