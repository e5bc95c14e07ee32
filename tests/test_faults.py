"""Provider faults through a real worker and the fault-injecting server: bad bodies, outages, bad keys."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.stack import Stack
from tests.conftest import Group, batch_id, isolated_group
from tests.faultserver import FaultServer, article_key, expected_summary
from tests.helpers import id_text, write_jsonl


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[FaultServer]:
    with FaultServer(api_key="sk-good-key") as srv:
        yield srv


def test_malformed_bodies_are_retried_and_never_stored(fault: Group, tmp_path: Path) -> None:
    arts = {
        "garbage": "A 200 whose body is not JSON. [[fault:garbagex1]] The dam was inspected.",
        "empty": "A 200 with no choices. [[fault:emptyx1]] The ferry resumed service.",
        "blank": "A 200 with empty content. [[fault:blankx2]] The festival was postponed.",
        "length": "A summary cut off at max_tokens. [[fault:lengthx1]] The vote was delayed.",
    }
    bid = fault.submit_and_wait(write_jsonl(tmp_path / "in.jsonl", id_text(arts)))
    rows = fault.results_by_id(bid)
    for key, text in arts.items():
        assert rows[key]["summary"] == expected_summary(text), rows[key]
    assert rows["blank"]["attempts"] == 3 and rows["garbage"]["attempts"] == 2


def test_output_that_stays_bad_fails_after_a_bounded_number_of_paid_answers(
    fault: Group,
    fault_server: FaultServer,
) -> None:
    """An answer cut off (or blank) every time is paid for at most SUMMARIZE_MAX_UNUSABLE (6) times, then
    fails with an error that says what to change; it is never deferred for the retry horizon."""
    texts = {
        "cut": "Always cut off. [[fault:length]] Story of the dam.",
        "blank": "Always blank. [[fault:blank]] Story of the ferry.",
        "fine": "A neighbour that is answered at once. The school reopened.",
    }
    batch = fault.client().submit(id_text(texts), batch_id=batch_id())
    started = time.monotonic()
    status = batch.wait(timeout=150)
    took = time.monotonic() - started
    assert (status["failed"], status["done"]) == (2, 1)
    rows = {r.id: r for r in batch.results()}
    calls = fault_server.stats()["by_article"]
    for key in ("cut", "blank"):
        r = rows[key]
        assert r.summary is None and r.error_type == "UnusableAnswers" and r.attempts <= 6, r
        assert calls[article_key(texts[key])] <= 6
    assert "more room" in (rows["cut"].error or "") and "another model" in (rows["cut"].error or "")
    assert "response content is empty" in (rows["blank"].error or "")
    assert rows["fine"].summary == expected_summary(texts["fine"])
    print(
        f"unusable answers: failed after {rows['cut'].attempts} and {rows['blank'].attempts} paid calls "
        f"in {took:.1f}s; the neighbour done"
    )


def test_a_server_that_trickles_bytes_cannot_hold_a_job_past_the_deadline(fault: Group) -> None:
    """A byte every half second never trips a per-read timeout; SUMMARIZE_LLM_TIMEOUT (2 s here) bounds the
    whole request, so the job is retried instead of held for minutes."""
    text = "A trickled answer. [[fault:tricklex1:0.5]] The bridge reopened."
    batch = fault.client().submit([{"id": "slow", "text": text}], batch_id=batch_id())
    started = time.monotonic()
    assert batch.wait(timeout=60)["done"] == 1
    took = time.monotonic() - started
    (row,) = list(batch.results())
    assert row.summary == expected_summary(text) and row.attempts == 2 and took < 20


def test_outage_of_a_provider_is_ridden_out_without_holding_slots(stack: Stack, redis_url: str) -> None:
    with FaultServer() as srv:
        g = isolated_group(stack, redis_url, srv.url)
        g.worker("outage-w")
        srv.outage(15, status=503)
        texts = [f"Outage article {i}: the transit agency cut weekend service." for i in range(10)]
        batch = g.client().submit([{"id": f"o{i}", "text": t} for i, t in enumerate(texts)], batch_id=batch_id())
        waiting_outside_slots = 0
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            s = batch.status()
            # Queued here means deferred: handed back with a delay instead of sleeping in a worker slot.
            if s["queued"] > 0 and s["done"] == 0:
                waiting_outside_slots = max(waiting_outside_slots, s["queued"])
            time.sleep(0.2)
        during = srv.stats()["statuses"].get("503", 0)
        status = batch.wait(timeout=120)
        assert status["done"] == 10 and status["failed"] == 0
        assert [r.summary for r in batch.results()] == [expected_summary(t) for t in texts]
        assert waiting_outside_slots >= 5
        # 10 jobs x 15 s: backoff keeps this to a few calls per job per deferral, not hundreds.
        assert during < 10 * 15, during
        print(f"outage 15s: 10 submitted, 10 done, {during} calls refused during the outage")


def test_bad_key_halts_the_batch_and_retry_resumes_it(
    stack: Stack, redis_url: str, keyed_server: FaultServer, tmp_path: Path
) -> None:
    g = isolated_group(stack, redis_url, keyed_server.url, OPENAI_API_KEY="sk-bad-key", SUMMARIZE_CONCURRENCY="4")
    g.worker("halt-w")
    texts = [f"Halt article {i}: the school board met." for i in range(30)]
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"h{i}", "text": t} for i, t in enumerate(texts)])
    bid = g.submit_and_wait(src, exit_code=1)
    refused = keyed_server.stats()["statuses"].get("401", 0)
    # The jobs in flight when the first 401 came back, and those already past their last check before the
    # halt was stored: a few, never one per article.
    assert refused <= 2 * 4
    status = json.loads(g.cli("status", bid, "--json").stdout)
    assert status["failed"] == 30 and "401" in status["halted"]
    human = g.cli("status", bid).stdout
    assert "HALTED" in human and f"summarize retry {bid}" in human
    assert all(r["error_type"] == "ProviderRejected" for r in g.results(bid))

    keyed_server.configure(api_key="sk-bad-key")  # the user fixes the key at the provider
    assert g.cli("retry", bid).returncode == 0
    assert g.cli("wait", bid, "--timeout", "60", "-q").returncode == 0
    assert [r["summary"] for r in g.results(bid)] == [expected_summary(t) for t in texts]
    print(f"bad key: 30 submitted, {refused} LLM calls refused before the halt, 30 done after retry")


def test_unreachable_llm_endpoint_fails_clearly_after_the_horizon(stack: Stack, redis_url: str) -> None:
    g = isolated_group(
        stack, redis_url, "http://127.0.0.1:9/v1", SUMMARIZE_RETRY_HORIZON="1", SUMMARIZE_ATTEMPT_BUDGET="1"
    )
    g.worker("unreachable-w")
    batch = g.client().submit(["An article nobody can summarize today."], batch_id=batch_id())
    assert batch.wait(timeout=60)["failed"] == 1
    (r,) = list(batch.results())
    assert r.error_type == "TransientLLMError" and "connection failed" in (r.error or "")
