"""Breaker's findings against issue 17 (money and identity), each a scenario with real processes that
fails on the change as it stands. (The invariant check of tests/conftest.py runs after each.)"""

from __future__ import annotations

import time
from typing import Any

from producer.api import Batch
from scripts.stack import Stack
from tests.conftest import Group, batch_id, isolated_group
from tests.faultserver import FaultServer, expected_summary
from tests.helpers import poll, wait_until


def _keys(g: Group, pattern: str) -> list[str]:
    r = g.client().redis
    return sorted(k.decode() if isinstance(k, bytes) else k for k in r.scan_iter(match=pattern))


def _forget_everything(g: Group) -> None:
    """What a Redis restart without AOF does to this deployment: every key under its prefix is gone
    (the generation counter included), while its workers keep running."""
    r = g.client().redis
    # the store's keys ({prefix}:..., a hash tag) and the broker's (prefix:...): one Redis here
    for k in list(r.scan_iter(match=f"{{{g.settings.key_prefix}}}:*")) + list(
        r.scan_iter(match=f"{g.settings.key_prefix}:*")
    ):
        r.delete(k)


def test_purge_force_with_a_twin_waiting_leaves_no_waiters_set(stack: Stack, redis_url: str) -> None:
    # Two identical articles: one leader calls, its twin waits in `w:<cache key>` (a set, no TTL).
    # purge --force with the call in flight: the leader's op is for a batch that is gone and writes
    # nothing (land() never runs), and purge.lua never takes the twin out of the waiters set.
    with FaultServer(latency=1.5) as srv:
        g = isolated_group(stack, redis_url, srv.url, SUMMARIZE_LLM_TIMEOUT="10")
        g.worker("pw-w1")
        text = "Twin purge report: the county opened a second ferry landing at the north quay. [[id:pw1]]"
        bid = batch_id()
        batch = g.client().submit([{"id": "a", "text": text}, {"id": "b", "text": text}], batch_id=bid)
        wait_until(lambda: batch.status()["running"] == 1, 30, "the leader's call in flight")
        assert _keys(g, f"{{{g.settings.key_prefix}}}:w:*"), "the twin waits in a waiters set"
        assert g.cli("purge", bid, "--force").returncode == 0
        wait_until(lambda: srv.stats()["requests"] >= 1 and srv.stats()["ok"] >= 1, 30, "the leader's answer")
        time.sleep(float(g.settings.lease_seconds) + 1)  # the old run settles; its flight key lapses
        leftovers = _keys(g, f"{{{g.settings.key_prefix}}}:w:*") + _keys(g, f"{{{g.settings.key_prefix}}}:f:*")
        assert leftovers == [], f"keys left behind by a purged batch (no TTL): {leftovers}"


def test_a_redis_restart_without_aof_then_the_same_batch_id_never_gets_an_old_runs_answer(
    stack: Stack, redis_url: str
) -> None:
    # The generation is an INCR of one counter in Redis: a Redis that lost its data hands out gen 1
    # again. A run of the lost batch (gen 1, job "1") still in flight then settles into the new batch
    # (gen 1, job "1", another article): settle.lua's live() sees the same generation, done() takes a
    # late result without checking the run, and the new job's row carries the old article's summary.
    with FaultServer() as srv:
        g = isolated_group(stack, redis_url, srv.url, SUMMARIZE_LLM_TIMEOUT="15", SUMMARIZE_LEASE_SECONDS="20")
        g.worker("rr-w1")
        bid = batch_id()
        x = {"id": "1", "text": "Article X: the river authority closed the old ferry crossing. [[fault:hangx1:4]]"}
        y = {"id": "1", "text": "Article Y: the city council voted to plant street trees. [[fault:hangx1:8]]"}
        first = g.client().submit([x], batch_id=bid)
        wait_until(lambda: first.status()["running"] == 1, 30, "X's call in flight")
        _forget_everything(g)  # Redis restarted without persistence
        second = g.client().submit([y], batch_id=bid)
        final = second.wait(timeout=60)
        assert final["done"] == 1, final
        (row,) = list(second.results())
        assert row.summary == expected_summary(y["text"]), f"job 1 of the new batch answered with X's summary: {row}"


def test_a_budget_given_to_a_running_batch_caps_what_the_batch_spends(stack: Stack, redis_url: str) -> None:
    # Calls made before the batch had a budget take no hold and send no spend op, so spent_tokens never
    # counts them: a budget given with `resume --budget-tokens` (the README's way to set a cap on a
    # batch that is going) starts from 0 and the batch spends far past it, with status saying it kept it.
    with FaultServer(latency=0.5) as srv:
        g = isolated_group(stack, redis_url, srv.url, SUMMARIZE_CONCURRENCY="4", SUMMARIZE_JOBS_PER_MESSAGE="2")
        g.worker("bg-w1")
        items = [
            {"id": f"bg{i}", "text": f"bg report {i}: the harbour board approved the new pier {i}."} for i in range(16)
        ]
        batch = g.client().submit(items, batch_id=batch_id(), no_cache=True)
        wait_until(lambda: batch.status()["done"] >= 8, 60, "half the batch done without a budget")
        # Paused first, so the cap is computed from a total no call in flight can still move (read while
        # running, ~8 calls a second landed between the read and the resume on a busy machine: the batch was
        # then over the cap before it had one, and the test failed with nothing overspent).
        assert g.cli("pause", batch.id).returncode == 0
        s = _settled(batch)
        cap = s["total_tokens"] + 4 * (s["total_tokens"] // max(1, s["done"]))  # room for ~4 more jobs
        assert g.cli("resume", batch.id, "--budget-tokens", str(cap)).returncode == 0
        s = _settled(batch)
        assert s["total_tokens"] <= cap, (
            f"budget {cap} tokens, but the batch was billed {s['total_tokens']} "
            f"(status says spent {s['spent_tokens']}, state {s['state']}, {s['done']} done)"
        )


def _settled(batch: Batch) -> dict[str, Any]:
    return poll(batch.status, lambda s: s["state"] in ("paused", "finished") and s["running"] == 0, 60)


def test_a_cache_hit_never_answers_for_another_reasoning_effort(stack: Stack, redis_url: str) -> None:
    # The answer fingerprint (worker/batches.py fingerprint) hashes model, base URL, prompt, schema, max
    # words and temperature, but not what a reasoning model is told to spend on thinking
    # (reasoning_effort, reasoning_tokens, model_family): a batch that asks for "high" is answered from
    # the cache with what "low" wrote, and no request with effort "high" is ever made.
    with FaultServer() as srv:
        srv.configure(reasoning_models=["gpt-5-mini"], reasoning_tokens=64)
        g = isolated_group(stack, redis_url, srv.url, "gpt-5-mini")
        g.worker("re-w1")
        item = [{"id": "e1", "text": "Effort report: the port authority dredged the eastern channel. [[id:re1]]"}]
        low = g.client().submit(item, batch_id=batch_id(), reasoning_effort="low")
        assert low.wait(timeout=60)["done"] == 1
        high = g.client().submit(item, batch_id=batch_id(), reasoning_effort="high")
        assert high.wait(timeout=60)["done"] == 1
        (row,) = list(high.results())
        efforts = srv.stats()["reasoning_efforts"]
        assert not row.cached and efforts.get("high") == 1, (row, efforts)
