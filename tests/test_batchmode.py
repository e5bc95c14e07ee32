"""Batch mode with real processes against the fault server's Batch API: every job in exactly one provider
batch, cost at the discount, a worker killed right after a create, error lines and an expired batch,
packs split within the limits, cancel."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from scripts.stack import Stack
from tests.conftest import Group, batch_id, isolated_group
from tests.faultserver import FaultServer

PRICE_IN, PRICE_OUT = 1.0, 4.0
FAST_BATCH = {
    "SUMMARIZE_BATCH_LINGER": "1",
    "SUMMARIZE_BATCH_POLL": "0.5",
    "SUMMARIZE_REAP_INTERVAL": "0.3",
    # A pack's step is leased for its calls' bound (attempts x timeout + the retry budget): kept short
    # here so a pack left by a killed worker is taken up within seconds.
    "SUMMARIZE_LLM_TIMEOUT": "8",
    "SUMMARIZE_ATTEMPT_BUDGET": "2",
    "SUMMARIZE_MAX_ATTEMPTS_PER_RUN": "2",
}


def arts(tag: str, n: int, marker: str = "") -> list[dict[str, str]]:
    return [
        {"id": f"{tag}{i}", "text": f"{tag} story {i}: the library board voted on the new wing. {marker}"}
        for i in range(n)
    ]


def provider_batches(server: FaultServer, batch: str) -> list[dict[str, Any]]:
    return [b for b in server.stats()["batches"] if (b.get("metadata") or {}).get("summarize_batch") == batch]


@pytest.fixture(scope="module")
def provider() -> Iterator[FaultServer]:
    with FaultServer(batch_delay=0.5) as srv:
        yield srv


@pytest.fixture(scope="module")
def batcher(stack: Stack, redis_url: str, provider: FaultServer) -> Group:
    g = isolated_group(stack, redis_url, provider.url, **FAST_BATCH)
    g.worker("batch-w1")
    return g


def test_a_thousand_articles_each_in_exactly_one_provider_batch_at_the_discount(
    batcher: Group, provider: FaultServer
) -> None:
    items = arts("bm", 1000)
    batch = batcher.client().submit(items, batch_id=batch_id(), mode="batch", price_in=PRICE_IN, price_out=PRICE_OUT)
    status = batch.wait(timeout=120)
    assert status["done"] == 1000 and status["failed"] == 0
    sent = Counter(cid for b in provider_batches(provider, batch.id) for cid in b["custom_ids"])
    assert set(sent) == {a["id"] for a in items} and set(sent.values()) == {1}
    for r in batch.results():
        assert r.usage is not None and r.cost_usd is not None
        online = (r.usage["prompt_tokens"] * PRICE_IN + r.usage["completion_tokens"] * PRICE_OUT) / 1e6
        assert r.cost_usd == pytest.approx(online * 0.5, rel=1e-9)  # SUMMARIZE_BATCH_DISCOUNT
    shown = batcher.cli("status", batch.id).stdout
    assert "provider batch batch_" in shown and "completed" in shown
    assert batcher.client().store.status(batch.id)["packs"][0]["request_counts"]["completed"] > 0


def test_packs_stay_within_the_limits(stack: Stack, redis_url: str, provider: FaultServer) -> None:
    g = isolated_group(stack, redis_url, provider.url, SUMMARIZE_BATCH_MAX_REQUESTS="100", **FAST_BATCH)
    g.worker("batch-limit-w")
    items = arts("lim", 250)
    batch = g.client().submit(items, batch_id=batch_id(), mode="batch")
    assert batch.wait(timeout=120)["done"] == 250
    made = provider_batches(provider, batch.id)
    assert len(made) >= 3 and all(len(b["custom_ids"]) <= 100 for b in made)
    assert sum(len(b["custom_ids"]) for b in made) == 250


def test_a_worker_killed_right_after_create_makes_no_second_provider_batch(stack: Stack, redis_url: str) -> None:
    with FaultServer(batch_delay=0.5) as srv:
        srv.configure(batch_create_response_delay=6.0)
        g = isolated_group(stack, redis_url, srv.url, SUMMARIZE_LEASE_SECONDS="3", **FAST_BATCH)
        first = g.worker("batch-kill-w1")
        items = arts("kill", 40)
        batch = g.client().submit(items, batch_id=batch_id(), mode="batch")
        deadline = time.monotonic() + 30
        while not provider_batches(srv, batch.id) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert provider_batches(srv, batch.id), "no create reached the provider"
        first.kill9()  # the provider created the batch; the worker never heard back
        srv.configure(batch_create_response_delay=0.0)
        g.worker("batch-kill-w2")
        assert batch.wait(timeout=120)["done"] == 40
        made = provider_batches(srv, batch.id)
        packs = Counter(b["metadata"]["summarize_pack"] for b in made)
        assert set(packs.values()) == {1}, packs  # never two provider batches for one pack
        sent = Counter(cid for b in made for cid in b["custom_ids"])
        assert set(sent.values()) == {1}


def test_error_lines_and_an_expired_batch_are_retried_and_done(stack: Stack, redis_url: str) -> None:
    with FaultServer(batch_delay=0.5) as srv:
        srv.configure(batch_expire_next=1)
        g = isolated_group(stack, redis_url, srv.url, **FAST_BATCH)
        g.worker("batch-retry-w")
        items = arts("ok", 20) + arts("err", 5, "[[fault:500x1]]")
        batch = g.client().submit(items, batch_id=batch_id(), mode="batch")
        status = batch.wait(timeout=120)
        assert status["done"] == 25 and status["failed"] == 0
        made = provider_batches(srv, batch.id)
        assert any(b["status"] == "expired" for b in made) and len(made) >= 2
        # Never in two provider batches at once: a job goes into a later one only after the earlier ended.
        spans: dict[str, list[tuple[int, str]]] = {}
        for b in sorted(made, key=lambda b: b["created_at"]):
            for cid in b["custom_ids"]:
                spans.setdefault(cid, []).append((b["created_at"], b["status"]))
        assert all(all(s in ("completed", "expired", "failed", "cancelled") for _, s in v[:-1]) for v in spans.values())
        rows = {r.id: r for r in batch.results()}
        assert all(rows[f"err{i}"].status == "done" for i in range(5))


def test_cancel_also_cancels_the_provider_batches(stack: Stack, redis_url: str) -> None:
    with FaultServer(batch_delay=30.0) as srv:
        g = isolated_group(stack, redis_url, srv.url, **FAST_BATCH)
        g.worker("batch-cancel-w")
        batch = g.client().submit(arts("cnl", 30), batch_id=batch_id(), mode="batch")
        deadline = time.monotonic() + 30
        while not provider_batches(srv, batch.id) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert g.cli("cancel", batch.id).returncode == 0
        status = batch.wait(timeout=60)
        assert status["cancelled"] == 30 and status["state"] == "cancelled"
        assert all(b["status"] in ("cancelling", "cancelled") for b in provider_batches(srv, batch.id))
