"""Reliability under steady load and skewed clocks, with real processes: results outlive long batches, an
evicting Redis is refused, lost messages come back while the queue never drains, deployments sharing a
Redis stay apart, a fast clock reaps nothing live, and the token limit is never crossed."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from contract.keys import PRIORITY_STEPS, Keys
from scripts.stack import Stack
from tests.conftest import batch_id, isolated_group
from tests.faultserver import FaultServer, article_key, expected_summary
from tests.helpers import articles, wait_until, write_jsonl

LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


def test_results_outlive_a_batch_that_runs_longer_than_the_ttl(
    stack: Stack, redis_url: str, slow_server: FaultServer
) -> None:
    """SUMMARIZE_RESULT_TTL=3 on a batch that takes about 8 s: nothing expires while work is unfinished, and
    the results are kept for the TTL after the batch is over."""
    g = isolated_group(stack, redis_url, slow_server.url, SUMMARIZE_RESULT_TTL="3", SUMMARIZE_CONCURRENCY="2")
    g.worker("ttl-w")
    arts = articles("ttl", 16)
    client = g.client()
    started = time.monotonic()
    batch = client.submit(arts, batch_id=batch_id())
    status = batch.wait(timeout=90)
    took = time.monotonic() - started
    assert took > 6 and status["done"] == 16
    rows = list(batch.results())
    assert [r.summary for r in rows] == [expected_summary(a["text"]) for a in arts]
    keys = [k for k in client.store.keys.batch_keys(batch.id) if client.redis.exists(k)]
    assert keys and all(0 < client.redis.ttl(k) <= 3 for k in keys)
    print(f"TTL 3 s, batch of {took:.1f} s: 16 of 16 done, results complete, then kept {client.redis.ttl(keys[0])} s")


def test_an_evicting_redis_is_refused_unless_allowed(fault_server: FaultServer, tmp_path: Path) -> None:
    with Stack() as own:
        own.redis(extra=["--maxmemory", "100mb", "--maxmemory-policy", "allkeys-lru"])
        g = isolated_group(own, own.env["REDIS_URL"], fault_server.url)
        src = write_jsonl(tmp_path / "in.jsonl", articles("ev", 3))
        refused = g.cli("submit", str(src))
        assert refused.returncode == 3
        line = refused.stderr.strip()
        assert "\n" not in line and "maxmemory-policy allkeys-lru" in line and "SUMMARIZE_ALLOW_EVICTION" in line
        worker = own.worker("evict-w", env=g.env, wait=False)
        assert worker.popen is not None
        assert worker.popen.wait(timeout=60) != 0
        assert "maxmemory-policy allkeys-lru" in worker.log.read_text()
        allowed = g.cli("submit", str(src), env={"SUMMARIZE_ALLOW_EVICTION": "true"})
        assert allowed.returncode == 0, allowed.stderr


def test_lost_messages_come_back_while_the_queue_never_drains(stack: Stack, redis_url: str) -> None:
    """Messages taken off the queue and never run (as when a worker dies between BRPOP and kombu's unacked
    record) are published again within SUMMARIZE_QUEUED_GRACE plus the backlog ahead, although other
    batches keep the shared queue from ever draining."""
    with FaultServer(latency=0.3) as srv:
        g = isolated_group(
            stack,
            redis_url,
            srv.url,
            SUMMARIZE_QUEUED_GRACE="3",
            SUMMARIZE_CONCURRENCY="4",
            SUMMARIZE_JOBS_PER_MESSAGE="4",
        )
        client = g.client()
        lost = client.submit(articles("lost", 8), batch_id=batch_id())
        keys = Keys(g.settings.key_prefix, g.settings.queue)
        removed = 0
        for m in g.queued_messages():
            if m.args[0] == lost.id:
                removed += int(client.redis.lrem(keys.broker_queue(m.step), 1, m.raw))
        assert removed == 2

        feeding = threading.Event()
        lengths: list[int] = []

        def queued() -> int:
            return sum(int(client.redis.llen(keys.broker_queue(s))) for s in PRIORITY_STEPS)

        def feed() -> None:
            # Tops the shared queue up whenever it is below twelve messages (the worker's threads take several at
            # once; the rest is seconds of its work), so it never drains however fast or slow the machine is,
            # and never grows without bound.
            n = 0
            while not feeding.is_set():
                if queued() < 12:
                    client.submit(articles(f"feed{n}x", 24), batch_id=batch_id())
                    n += 1
                lengths.append(queued())
                time.sleep(0.1)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        try:
            time.sleep(1)
            g.worker("lost-w")
            started = time.monotonic()
            status = lost.wait(timeout=150)
            took = time.monotonic() - started
        finally:
            feeding.set()
            feeder.join(10)
        assert status["done"] == 8
        assert min(lengths[2:]) > 0, lengths  # the queue never drained meanwhile
        republished = int(client.redis.hget(keys.stats, "republished") or 0)
        assert republished >= 8
        print(
            f"lost messages: 8 jobs whose 2 messages were lost done {took:.1f}s after the worker started, "
            f"queue length stayed {min(lengths[2:])}..{max(lengths)}"
        )


def test_two_deployments_on_one_redis_never_take_each_others_messages(
    stack: Stack, redis_url: str, fault_server: FaultServer
) -> None:
    """Different SUMMARIZE_KEY_PREFIX, the same (default) queue name: kombu's keys follow the prefix."""
    groups = [isolated_group(stack, redis_url, fault_server.url, SUMMARIZE_QUEUE="summarize") for _ in range(2)]
    for i, g in enumerate(groups):
        g.worker(f"deploy-w{i}")
    batches = [g.client().submit(articles(f"dep{i}x", 30), batch_id=batch_id()) for i, g in enumerate(groups)]
    for b in batches:
        assert b.wait(timeout=90)["done"] == 30
    for g in groups:
        assert int(g.client().redis.hget(Keys(g.settings.key_prefix).stats, "republished") or 0) == 0


@pytest.mark.skipif(not os.path.exists(LIBFAKETIME), reason="libfaketime (Debian package faketime) is not installed")
def test_a_worker_with_a_fast_clock_reaps_nothing_live(stack: Stack, redis_url: str) -> None:
    """One worker's clock is 90 s ahead and it runs the fleet's housekeeping; the other holds most jobs with
    slow LLM calls. Leases and deferrals are judged on Redis' clock, so no article is summarized twice."""
    with FaultServer(latency=6.0) as srv:
        g = isolated_group(
            stack,
            redis_url,
            srv.url,
            SUMMARIZE_LEASE_SECONDS="3",
            SUMMARIZE_REAP_INTERVAL="0.3",
            SUMMARIZE_CONCURRENCY="40",
            SUMMARIZE_LLM_TIMEOUT="30",
            SUMMARIZE_JOBS_PER_MESSAGE="10",
        )
        holder = g.worker("clock-holder")
        arts = articles("clk", 40)
        batch = g.client().submit(arts, batch_id=batch_id())
        wait_until(lambda: batch.status()["running"] >= 30, 30, "the holder to take the jobs")
        g.worker(
            "clock-fast",
            LD_PRELOAD=LIBFAKETIME,
            FAKETIME="+90s",
            FAKETIME_DONT_FAKE_MONOTONIC="1",
            SUMMARIZE_REAP_INTERVAL="0.1",
        )
        status = batch.wait(timeout=120)
        assert status["done"] == 40
        calls = [srv.stats()["by_article"].get(article_key(a["text"]), 0) for a in arts]
        assert calls == [1] * 40, calls  # nothing summarized twice
        assert int(g.client().redis.hget(Keys(g.settings.key_prefix).stats, "reclaimed") or 0) == 0
        assert holder.popen is not None and holder.popen.poll() is None


def test_the_token_limit_is_never_crossed_and_mostly_used_in_the_first_minute(stack: Stack, redis_url: str) -> None:
    """Four workers under one SUMMARIZE_TPM; the provider counts prompt (4 characters a token) + max_tokens in
    any rolling minute and answers 429 to anything over."""
    tpm = 12_000
    with FaultServer(tpm=tpm) as srv:
        g = isolated_group(
            stack, redis_url, srv.url, SUMMARIZE_TPM=str(tpm), SUMMARIZE_CONCURRENCY="8", SUMMARIZE_JOBS_PER_MESSAGE="2"
        )
        for i in range(4):
            g.worker(f"tpm-w{i}")
        body = "The regional transit board met on Tuesday to discuss the timetable. " * 6
        arts = [{"id": f"tpm{i}", "text": f"{i}: {body}"} for i in range(60)]
        batch = g.client().submit(arts, batch_id=batch_id())
        time.sleep(66)
        stats = srv.stats()
        admitted = stats["tokens_admitted_times"]
        assert stats["overshoot_429"] == 0, stats["overshoot_by"]
        first = admitted[0][0]
        in_first_minute = sum(tokens for at, tokens in admitted if at - first < 60)
        assert in_first_minute >= 0.85 * tpm, (in_first_minute, tpm)
        assert in_first_minute <= tpm
        print(
            f"TPM {tpm}: 4 workers, {in_first_minute} tokens admitted in the first minute "
            f"({in_first_minute / tpm:.2f} of the limit), 0 overshoot 429s"
        )
        batch_status = batch.status()
        assert batch_status["failed"] == 0


def test_faketime_is_where_the_test_expects_it() -> None:
    if shutil.which("faketime"):
        assert os.path.exists(LIBFAKETIME)
