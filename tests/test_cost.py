"""Never pay twice, never overspend, with real processes: the result cache, single flight, tokens and cost,
a budget cap, pause, resume and cancel."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from scripts.stack import Stack
from tests.conftest import Group, batch_id, isolated_group
from tests.faultserver import FaultServer, article_key
from tests.helpers import poll

PRICE_IN, PRICE_OUT = 2.0, 8.0  # USD per million tokens, given per batch


def arts(tag: str, n: int, distinct: int | None = None) -> list[dict[str, str]]:
    distinct = distinct or n
    return [
        {
            "id": f"{tag}{i}",
            "text": f"{tag} story {i % distinct}: the port authority approved the dredging plan "
            f"for berth {i % distinct}.",
        }
        for i in range(n)
    ]


def calls(server: FaultServer, items: list[dict[str, str]]) -> int:
    by_article = server.stats()["by_article"]
    return sum(by_article.get(article_key(t), 0) for t in {a["text"] for a in items})


@pytest.fixture(scope="module")
def slowish() -> Iterator[FaultServer]:
    with FaultServer(latency=0.5) as srv:
        yield srv


@pytest.fixture(scope="module")
def paced(stack: Stack, redis_url: str, slowish: FaultServer) -> Group:
    g = isolated_group(stack, redis_url, slowish.url, SUMMARIZE_CONCURRENCY="8", SUMMARIZE_JOBS_PER_MESSAGE="4")
    g.worker("cost-w1")
    return g


def test_a_batch_submitted_again_costs_no_call(fault: Group, fault_server: FaultServer) -> None:
    items = arts("again", 200)
    first = fault.client().submit(items, batch_id=batch_id())
    assert first.wait(timeout=120)["done"] == 200
    paid = calls(fault_server, items)
    assert paid == 200
    second = fault.client().submit(items, batch_id=batch_id())
    status = second.wait(timeout=60)
    assert status["done"] == 200 and status["cached"] == 200 and status["calls"] == 0
    assert calls(fault_server, items) == paid  # 0 LLM calls
    rows = list(second.results())
    assert all(r.cached and r.usage == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0} for r in rows)
    assert [r.summary for r in rows] == [r.summary for r in first.results()]
    fresh = fault.client().submit(items[:5], batch_id=batch_id(), no_cache=True)
    assert fresh.wait(timeout=60)["cached"] == 0 and calls(fault_server, items) == paid + 5  # --no-cache


def test_identical_articles_in_flight_at_once_cost_one_call_each(paced: Group, slowish: FaultServer) -> None:
    items = arts("twin", 100, distinct=50)
    batch = paced.client().submit(items, batch_id=batch_id())
    status = batch.wait(timeout=120)
    assert status["done"] == 100
    assert calls(slowish, items) == 50  # exactly one call per distinct text
    rows = {r.id: r for r in batch.results()}
    for i in range(50):
        assert rows[f"twin{i}"].summary == rows[f"twin{i + 50}"].summary


def test_cost_is_usage_times_the_price_for_every_row(fault: Group, tmp_path_factory: pytest.TempPathFactory) -> None:
    batch = fault.client().submit(
        arts("cost", 12), batch_id=batch_id(), price_in=PRICE_IN, price_out=PRICE_OUT, no_cache=True
    )
    status = batch.wait(timeout=60)
    rows = list(batch.results())
    total = 0.0
    for r in rows:
        assert r.usage is not None and r.cost_usd is not None
        expected = (r.usage["prompt_tokens"] * PRICE_IN + r.usage["completion_tokens"] * PRICE_OUT) / 1e6
        assert r.cost_usd == pytest.approx(expected, rel=1e-9)
        total += r.cost_usd
    assert status["cost_usd"] == pytest.approx(total, rel=1e-6)
    unknown = fault.client().submit(arts("unpriced", 2), batch_id=batch_id(), no_cache=True)  # fake-model: no price
    assert unknown.wait(timeout=60)["cost_usd"] is None
    assert all(r.cost_usd is None for r in unknown.results())  # null, never 0
    refused = fault.cli("submit", "-", "--budget-usd", "1", input=json.dumps({"text": "x"}) + "\n")
    assert refused.returncode == 3 and "needs the price" in refused.stderr


def test_a_token_budget_pauses_the_batch_and_resume_finishes_it(stack: Stack, redis_url: str) -> None:
    with FaultServer(latency=0.2) as srv:
        g = isolated_group(stack, redis_url, srv.url, SUMMARIZE_CONCURRENCY="4", SUMMARIZE_JOBS_PER_MESSAGE="2")
        g.worker("budget-w")
        items = arts("bud", 30)
        need = 30 * 380  # about what a request books: its prompt (~140 tokens) + max_tokens (224)
        batch = g.client().submit(items, batch_id=batch_id(), budget_tokens=need // 3)
        poll(batch.status, lambda s: s["state"] == "paused", timeout=60, interval=0.2)
        time.sleep(1.5)  # calls in flight finish
        s = batch.status()
        assert s["state"] == "paused" and s["reason"] == "budget"
        assert s["failed"] == 0 and 0 < s["done"] < 30
        # What the provider billed (its usage figures, summed over every row) never went over the cap.
        billed = sum(r.usage["total_tokens"] for r in batch.results() if r.usage)
        assert billed == s["total_tokens"] == s["spent_tokens"] and billed <= need // 3, (billed, need // 3)
        paused = g.cli("status", batch.id).stdout
        assert "paused (budget)" in paused
        assert g.cli("resume", batch.id, "--budget-tokens", str(need * 2)).returncode == 0
        final = batch.wait(timeout=120)
        assert final["done"] == 30 and final["state"] == "finished"


def test_pause_stops_new_calls_and_resume_goes_on(paced: Group, slowish: FaultServer) -> None:
    items = arts("pau", 60)
    batch = paced.client().submit(items, batch_id=batch_id())
    poll(batch.status, lambda s: s["done"] >= 5, timeout=30, interval=0.1)
    assert paced.cli("pause", batch.id).returncode == 0
    assert paced.cli("pause", batch.id).returncode == 0  # safe to repeat
    time.sleep(2.5)  # within a second every worker knows; calls in flight finish
    before = calls(slowish, items)
    time.sleep(2)
    s = batch.status()
    assert calls(slowish, items) == before and s["state"] == "paused" and s["failed"] == 0 and s["done"] < 60
    assert paced.cli("resume", batch.id).returncode == 0
    assert batch.wait(timeout=120)["done"] == 60
    assert calls(slowish, items) == 60  # nothing paid twice


def test_cancel_stops_calls_within_those_in_flight(paced: Group, slowish: FaultServer) -> None:
    items = arts("can", 1000)
    batch = paced.client().submit(items, batch_id=batch_id())
    poll(batch.status, lambda s: s["done"] >= 100, timeout=60, interval=0.1)
    assert paced.cli("cancel", batch.id).returncode == 0
    at_cancel = calls(slowish, items)
    wait = paced.cli("wait", batch.id, "--timeout", "60", "-q")
    assert wait.returncode == 1  # some jobs were cancelled
    time.sleep(1.5)
    s = batch.status()
    assert s["state"] == "cancelled" and s["cancelled"] > 800 and s["done"] + s["cancelled"] == 1000
    assert calls(slowish, items) <= at_cancel + 8  # at most the requests in flight at the cancel
    assert paced.cli("cancel", batch.id).returncode == 0  # safe to repeat
    rows = {r.status for r in batch.results()}
    assert rows == {"done", "cancelled"}
    print(
        f"cancel after {s['done']} of 1000: {calls(slowish, items) - at_cancel} calls finished after it, "
        f"{s['cancelled']} cancelled"
    )


def test_a_waiting_twin_takes_over_when_the_worker_making_the_call_dies(stack: Stack, redis_url: str) -> None:
    with FaultServer(latency=3.0) as srv:
        g = isolated_group(
            stack,
            redis_url,
            srv.url,
            SUMMARIZE_JOBS_PER_MESSAGE="1",
            SUMMARIZE_LEASE_SECONDS="2",
            SUMMARIZE_LLM_TIMEOUT="10",
        )
        first = g.worker("flight-w1")
        items = arts("flight", 4, distinct=1)
        batch = g.client().submit(items, batch_id=batch_id())
        poll(srv.stats, lambda stats: stats["in_flight"] >= 1, timeout=20, interval=0.05)
        assert batch.status()["running"] == 1  # one call; its three twins wait, holding no slot
        first.kill9()
        g.worker("flight-w2")
        assert batch.wait(timeout=60)["done"] == 4
        assert calls(srv, items) == 2  # the call lost with the worker, and the one a twin made after
        assert len({r.summary for r in batch.results()}) == 1
