"""Money and identity with real processes: budget holds that die with their run, cache hits that prove
their article, a batch id reused after purge, failed jobs that expire with their batch, counters that
never drift, ops for a batch that is gone, twins that share a failure, a fallback's answer cached as its
own, a gateway failing every request alike. (The invariant check of tests/conftest.py runs after each.)"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from contract.keys import Keys
from producer.api import publish
from scripts.stack import Stack
from tests.conftest import Group, batch_id, isolated_group
from tests.faultserver import FaultServer, article_key, expected_summary
from tests.helpers import poll, wait_until, write_jsonl


def arts(tag: str, n: int, extra: str = "") -> list[dict[str, str]]:
    return [
        {"id": f"{tag}{i}", "text": f"{tag} report {i}: the harbour board approved the new pier {i}. {extra}".strip()}
        for i in range(n)
    ]


def calls(server: FaultServer, items: list[dict[str, str]]) -> int:
    by_article = server.stats()["by_article"]
    return sum(by_article.get(article_key(t), 0) for t in {a["text"] for a in items})


def redis_keys_of(g: Group, bid: str) -> list[str]:
    """Every key of the group's prefix that names the batch (its own keys and its jobs')."""
    r = g.client().redis
    return sorted(
        k.decode() if isinstance(k, bytes) else k for k in r.scan_iter(match=f"{{{g.settings.key_prefix}}}:*{bid}*")
    )


@pytest.fixture(scope="module")
def slow() -> Iterator[FaultServer]:
    with FaultServer(latency=1.0) as srv:
        yield srv


# ---- 1. holds after a crash, and a budget that is enough ---------------------------------------------


def test_kill9_under_a_budget_leaves_no_hold_and_a_second_worker_finishes(
    stack: Stack, redis_url: str, slow: FaultServer
) -> None:
    g = isolated_group(stack, redis_url, slow.url, SUMMARIZE_CONCURRENCY="8", SUMMARIZE_JOBS_PER_MESSAGE="4")
    w1 = g.worker("hk-w1")
    # News-sized articles (~1 KB): with a 12-token answer to a 20-word article, max_tokens alone would be
    # most of each call's bound, and no budget proportional to real use could carry a crash's bounds.
    body = " ".join(["The harbour board said the works on the eastern quay would go on through the winter."] * 12)
    probe = g.client().submit(arts("hkp", 8, body), batch_id=batch_id(), no_cache=True)
    per_job = probe.wait(timeout=60)["total_tokens"] / 8
    items = arts("hk", 40, body)
    cap = int(per_job * 40 * 1.6)  # the held-out check: 1.6 times what the batch really needs
    batch = g.client().submit(items, batch_id=batch_id(), budget_tokens=cap)
    wait_until(lambda: (s := batch.status())["done"] >= 8 and s["held_tokens"] > 0, 60, "calls in flight")
    w1.kill9()
    at_kill = batch.status()
    assert at_kill["held_tokens"] > 0  # holds of calls in flight, now owned by no live run
    g.worker("hk-w2")
    final = batch.wait(timeout=120)
    assert (final["done"], final["failed"], final["state"]) == (40, 0, "finished"), final
    # The reaper took the dead run's jobs back, and their holds with them: counted as estimated spend, at
    # the provider's count of the same prompt (known once the jobs ran again) + the whole max_tokens.
    assert final["held_tokens"] == 0
    assert 0 < final["estimated_tokens"] <= at_kill["held_tokens"]
    assert final["spent_tokens"] <= cap
    raw = g.client().redis.hmget(Keys(g.settings.key_prefix).batch(batch.id), ["held_tokens", "held_usd"])
    assert [float(v or 0) for v in raw] == [0.0, 0.0]  # in Redis' own fields: nothing held by a dead run
    billed = sum(r.usage["total_tokens"] for r in batch.results() if r.usage)
    assert final["spent_tokens"] >= billed  # what the provider reported, plus the estimates
    print(
        f"kill -9 under a budget of 1.6x need ({cap} tokens): 40/40 done, {at_kill['held_tokens']} tokens held "
        f"at the kill, {final['estimated_tokens']} counted as estimated in the end, 0 held, spent "
        f"{final['spent_tokens']} ({billed} billed)"
    )


def test_a_budget_a_quarter_above_need_finishes_without_pausing(
    stack: Stack, redis_url: str, slow: FaultServer
) -> None:
    g = isolated_group(stack, redis_url, slow.url, SUMMARIZE_CONCURRENCY="8", SUMMARIZE_JOBS_PER_MESSAGE="4")
    g.worker("bq-w1")
    probe = g.client().submit(arts("bqp", 8), batch_id=batch_id(), no_cache=True)
    per_job = probe.wait(timeout=60)["total_tokens"] / 8
    items = arts("bq", 40)
    need = int(per_job * 40)
    batch = g.client().submit(items, batch_id=batch_id(), budget_tokens=int(need * 1.25))
    final = batch.wait(timeout=120)
    assert (final["done"], final["state"]) == (40, "finished"), final
    assert final["held_tokens"] == 0 and final["estimated_tokens"] == 0
    assert final["spent_tokens"] == final["total_tokens"] <= int(need * 1.25)
    print(f"budget 1.25x need ({int(need * 1.25)} tokens): 40/40 done, spent {final['spent_tokens']}, 0 pauses")


def test_dense_text_never_crosses_a_token_cap(stack: Stack, redis_url: str) -> None:
    # CJK: 3 bytes a character, billed here at 2 bytes a token (6 times the 4-characters guess).
    with FaultServer(latency=0.3) as srv:
        srv.configure(billed_bytes_per_token=2)
        g = isolated_group(stack, redis_url, srv.url, SUMMARIZE_CONCURRENCY="8", SUMMARIZE_JOBS_PER_MESSAGE="2")
        g.worker("cjk-w1")
        items = [{"id": f"cjk{i}", "text": f"港口管理局批准了第{i}号码头的疏浚计划。" * 20} for i in range(20)]
        cap = 12_000
        batch = g.client().submit(items, batch_id=batch_id(), budget_tokens=cap)
        s = poll(batch.status, lambda s: s["state"] in ("paused", "finished") and s["running"] == 0, 90)
        billed = sum(r.usage["total_tokens"] for r in batch.results() if r.usage)
        assert s["state"] == "paused" and s["reason"] == "budget", s
        assert billed == s["spent_tokens"] <= cap, (billed, s)
        assert s["held_tokens"] == 0
        print(f"CJK under a {cap}-token cap, billed at 2 bytes a token: {billed} billed, {s['done']} done, paused")


# ---- 2, 9. cache identity and a batch id reused after purge -----------------------------------------


def test_a_cache_hit_never_answers_with_another_articles_summary(fault: Group) -> None:
    bid = batch_id()
    x = {"id": "1", "text": "Article X: the river authority closed the old ferry crossing for repairs."}
    y = {"id": "1", "text": "Article Y: the city council voted to plant four thousand street trees."}
    assert fault.client().submit([x], batch_id=bid).wait(timeout=60)["done"] == 1
    assert fault.cli("purge", bid).returncode == 0
    assert fault.client().submit([y], batch_id=bid).wait(timeout=60)["done"] == 1
    again = fault.client().submit([x], batch_id=batch_id())
    assert again.wait(timeout=60)["done"] == 1
    (row,) = list(again.results())
    assert row.summary == expected_summary(x["text"]), row
    assert not row.cached  # its pointer was purged; Y's record does not prove to be X's answer
    print("cache identity: X, purge, Y under the same ids, X again: X's own summary, cached=False")


def test_a_batch_id_reused_after_purge_runs_with_its_new_settings(local: Group, tmp_path: Path) -> None:
    src = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {
                "id": f"r{i}",
                "text": " ".join(
                    f"Sentence {k} of report {i} says the regional transit agency will extend the tram line "
                    f"by {k} kilometres through the northern districts next year."
                    for k in range(30)
                ),
            }
            for i in range(3)
        ],
    )
    bid = batch_id()
    assert (
        local.cli("submit", str(src), "--batch-id", bid, "--max-words", "20", "--no-cache", "--wait", "-q").returncode
        == 0
    )
    short = [len((r["summary"] or "").split()) for r in local.results(bid)]
    assert local.cli("purge", bid).returncode == 0
    sub = local.cli("submit", str(src), "--batch-id", bid, "--max-words", "120", "--no-cache", "--wait", "-q")
    assert sub.returncode == 0, sub.stderr
    long = [len((r["summary"] or "").split()) for r in local.results(bid)]
    assert max(short) <= 25 and min(long) > 25, (short, long)
    print(f"id reused after purge: --max-words 20 gave {short} words, then --max-words 120 gave {long}")


# ---- 3. a failed job's article expires with its batch; a resubmit runs every job again ----------------


def test_a_failed_job_leaves_nothing_after_the_ttl_and_a_resubmit_runs_every_job(
    stack: Stack, redis_url: str, fault_server: FaultServer, tmp_path: Path
) -> None:
    g = isolated_group(stack, redis_url, fault_server.url, SUMMARIZE_RESULT_TTL="2")
    g.worker("ttl-w1")
    items = [*arts("ttl", 3), {"id": "bad", "text": "ttl bad [[fault:400]] the harbour board met."}]
    src = write_jsonl(tmp_path / "in.jsonl", items)
    bid = batch_id()
    assert g.cli("submit", str(src), "--batch-id", bid, "--no-cache", "--wait", "-q").returncode == 1
    before = calls(fault_server, items)
    wait_until(lambda: not redis_keys_of(g, bid), 20, "every key of the batch gone after its TTL")
    index = Keys(g.settings.key_prefix).batches
    # The batches index (what the exporter reads on every scrape) keeps only batches that still exist.
    wait_until(lambda: g.client().redis.zscore(index, bid) is None, 20, "the expired batch out of the index")
    again = g.cli("submit", str(src), "--batch-id", bid, "--no-cache", "--wait", "-q")
    assert again.returncode == 1, again.stderr
    status = g.client().store.status(bid)
    assert (status["total"], status["done"], status["failed"]) == (4, 3, 1)
    assert calls(fault_server, items) == before + 4  # every job ran again, none swallowed as "already there"
    print("failed job after a 2 s TTL: 0 keys of the batch left, out of the index; resubmit ran 4 of 4 again")


# ---- 4. resume racing the workers' view of the batch ------------------------------------------------


def test_pause_and_resume_in_quick_succession_never_strand_a_job(stack: Stack, redis_url: str) -> None:
    with FaultServer(latency=0.3) as srv:
        g = isolated_group(stack, redis_url, srv.url, SUMMARIZE_CONCURRENCY="16", SUMMARIZE_JOBS_PER_MESSAGE="2")
        g.worker("pr-w1")
        items = arts("pr", 80)
        batch = g.client().submit(items, batch_id=batch_id())
        for _ in range(3):
            batch.pause()
            time.sleep(1.3)  # every worker's copy of the state says paused now
            batch.resume()  # jobs claimed in the next second still see "paused" in that copy
            time.sleep(0.6)
        final = batch.wait(timeout=30)
        assert final["done"] == 80, final
        assert calls(srv, items) == 80


# ---- 6. ops for a batch that is gone ---------------------------------------------------------------


def test_a_purge_force_with_calls_in_flight_leaves_no_zombie(
    stack: Stack, redis_url: str, slow: FaultServer, tmp_path: Path
) -> None:
    g = isolated_group(stack, redis_url, slow.url, SUMMARIZE_CONCURRENCY="8")
    g.worker("zb-w1")
    bid = batch_id()
    items = arts("zb", 8, "[[fault:hang:2]]")
    batch = g.client().submit(items, batch_id=bid, budget_tokens=1_000_000)
    wait_until(lambda: batch.status()["running"] > 0, 30, "calls in flight")
    assert g.cli("purge", bid, "--force").returncode == 0
    time.sleep(4)  # the calls in flight come back and their runs settle
    assert redis_keys_of(g, bid) == []
    st = g.cli("status", bid)
    assert st.returncode != 0 and len(st.stderr.strip().splitlines()) == 1 and "Traceback" not in st.stderr
    src = write_jsonl(tmp_path / "in.jsonl", arts("zb2", 2))
    assert g.cli("submit", str(src), "--batch-id", bid, "--wait", "-q").returncode == 0
    print(f"purge --force with calls in flight: 0 keys after the late answers; status: {st.stderr.strip()}")


# ---- 8. twins share a failure; a fallback's answer is cached as its own ------------------------------


def test_identical_articles_share_their_leaders_failure(fault: Group, fault_server: FaultServer) -> None:
    text = "Twin report: the ferry company changed its timetable again. [[fault:garbage]] [[id:tw1]]"
    items = [{"id": f"tw{i}", "text": text} for i in range(10)]
    batch = fault.client().submit(items, batch_id=batch_id())
    final = batch.wait(timeout=60)
    assert (final["failed"], final["done"]) == (10, 0), final
    paid = calls(fault_server, items)
    assert paid <= 6  # one article's unusable allowance, not 6 per twin
    print(f"10 identical articles, every answer unusable: {paid} paid calls in all, 10 failed")


def test_a_fallback_models_answer_is_cached_under_the_fallback(fault: Group, fault_server: FaultServer) -> None:
    fault_server.configure(missing_models=["gone-model"])
    try:
        items = [{"id": "fb", "text": "Fallback report: the library extended its opening hours. [[id:fb1]]"}]
        first = fault.client().submit(items, batch_id=batch_id(), model="gone-model", fallback_model="fake-model")
        assert first.wait(timeout=60)["done"] == 1
        (row,) = list(first.results())
        assert row.model == "fake-model"
        direct = fault.client().submit(items, batch_id=batch_id(), model="fake-model")
        assert direct.wait(timeout=60)["done"] == 1
        (hit,) = list(direct.results())
        assert hit.cached and hit.summary == row.summary  # the fallback's own fingerprint
    finally:
        fault_server.configure(missing_models=[])


# ---- the same permanent error from the first calls halts the batch -----------------------------------


def test_a_gateway_failing_every_request_alike_halts_the_batch(stack: Stack, redis_url: str) -> None:
    with FaultServer() as srv:
        g = isolated_group(stack, redis_url, srv.url, SUMMARIZE_CONCURRENCY="4", SUMMARIZE_HALT_AFTER_SAME_ERRORS="5")
        g.worker("halt-w1")
        items = arts("gw", 60, "[[fault:400]]")
        batch = g.client().submit(items, batch_id=batch_id())
        final = batch.wait(timeout=60)
        assert final["state"] == "halted" and "same error" in (final["halted"] or ""), final
        paid = calls(srv, items)
        # The threshold, plus the calls that left before the fifth failure was stored (writes are batched
        # a few milliseconds; at no latency a few rounds of 4 in flight): a small number, never the 60.
        assert paid <= 30
        print(f"60 articles all answered 400 alike: halted after {paid} calls, {final['failed']} failed")
        status = g.cli("status", batch.id)
        assert "retry" in status.stdout


# ---- 5. counters never drift (a lapsed lease delivered again while the batch is paused) --------------


def test_a_lapsed_lease_delivered_again_while_paused_keeps_the_counts(stack: Stack, redis_url: str) -> None:
    with FaultServer(latency=0.2) as srv:
        g = isolated_group(stack, redis_url, srv.url, SUMMARIZE_CONCURRENCY="4")
        items = arts("lp", 6, "[[fault:hangx1:8]]")
        w = g.worker("lp-w1")
        batch = g.client().submit(items, batch_id=batch_id())
        wait_until(lambda: batch.status()["running"] > 0, 30, "running")
        w.kill9()
        time.sleep(float(g.settings.lease_seconds) + 0.5)  # leases lapse; no reaper runs (no worker)
        batch.pause()
        # Deliver the batch's messages again by hand, as a redelivery would, before any reaper.
        keys = Keys(g.settings.key_prefix, g.settings.queue)
        ids = [str(i) for i in g.client().redis.lrange(keys.batch_ids(batch.id), 0, -1)]
        publish(g.client(), [(3, Keys.member(batch.id, *ids))])
        g.worker("lp-w2")
        wait_until(lambda: batch.status()["running"] == 0, 30, "every job parked")
        s = batch.status()
        assert s["queued"] == 6 and s["running"] == 0, s  # parked jobs count as queued; nothing negative
        batch.resume()
        assert batch.wait(timeout=60)["done"] == 6


# ---- 10. a halt with a way out ------------------------------------------------------------------------


def test_no_key_asks_the_endpoint_for_its_model_and_retry_can_change_the_model(
    fault: Group, fault_server: FaultServer, tmp_path: Path
) -> None:
    no_key = {k: v for k, v in fault.env.items() if k not in ("OPENAI_API_KEY", "SUMMARIZE_MODEL")}
    src = write_jsonl(tmp_path / "in.jsonl", arts("nk", 3))
    bid = batch_id()
    sub = subprocess_cli(fault, no_key, "submit", str(src), "--batch-id", bid, "--wait", "-q")
    assert sub.returncode == 0, sub.stderr
    assert fault.client().store.spec(bid).model == "fake-model"  # the one model /v1/models lists

    fault_server.configure(missing_models=["gone-model"])
    try:
        bid2 = batch_id()
        src2 = write_jsonl(tmp_path / "in2.jsonl", arts("hm", 4))
        halted = fault.cli("submit", str(src2), "--batch-id", bid2, "--model", "gone-model", "--wait", "-q")
        assert halted.returncode == 1
        status = fault.cli("status", bid2).stdout
        assert "HALTED" in status and "--model" in status
        assert fault.cli("retry", bid2, "--model", "fake-model").returncode == 0
        final = fault.client().batch(bid2).wait(timeout=60)
        assert final["done"] == 4 and final["state"] == "finished", final
        assert fault.client().store.spec(bid2).model == "fake-model"
    finally:
        fault_server.configure(missing_models=[])


def subprocess_cli(g: Group, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    from scripts.stack import BIN, ROOT

    return subprocess.run(
        [str(BIN / "summarize"), *args], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
    )


# ---- 8b. a run that lost its lease makes no further call --------------------------------------------


def test_a_run_that_lost_its_lease_stops_before_its_next_call(stack: Stack, redis_url: str) -> None:
    import os
    import signal

    with FaultServer(latency=1.0) as srv:
        g = isolated_group(stack, redis_url, srv.url, SUMMARIZE_CONTEXT_TOKENS="1200", SUMMARIZE_CONCURRENCY="16")
        text = " ".join(
            f"Paragraph {k}: the water board said the reservoir at site {k} reached {k * 7} percent of its "
            "capacity after the spring rains, and the pumping station will run at half speed until June."
            for k in range(60)
        )
        a = g.worker("ll-a")
        batch = g.client().submit([{"id": "long", "text": text}], batch_id=batch_id(), no_cache=True)
        wait_until(lambda: srv.stats()["requests"] >= 2, 30, "the parts' requests sent")
        os.kill(a.pid, signal.SIGSTOP)  # mid-call: its lease lapses while it can't renew
        try:
            g.worker("ll-b")
            final = batch.wait(timeout=60)
            assert final["done"] == 1
            before_wake = srv.stats()["requests"]
        finally:
            os.kill(a.pid, signal.SIGCONT)
        time.sleep(3)  # A wakes with its parts answered; its next call would be the combine
        (row,) = list(batch.results())
        parts = row.chunks
        assert parts >= 2
        # A's parts in flight when it stopped (paid, unavoidably: all of them, unless a busy machine had not
        # sent them all yet) + B's parts + B's combine. Nothing of A's once it woke: not its combine.
        after = srv.stats()["requests"]
        assert after == before_wake, (before_wake, after)
        assert 2 + parts + 1 <= after <= 2 * parts + 1, (after, parts)
        print(f"lease lost mid map-reduce ({parts} parts): {after} requests in all, 0 after the loss")


# ---- 3b. a batch still being submitted is not over -----------------------------------------------------


def test_a_batch_being_submitted_does_not_finish_or_expire_under_its_submit(
    stack: Stack, redis_url: str, fault_server: FaultServer
) -> None:
    from contract.record import Article, digest
    from contract.spec import BatchSpec
    from contract.store import NewJob

    g = isolated_group(stack, redis_url, fault_server.url, SUMMARIZE_RESULT_TTL="1")
    g.worker("sl-w1")
    client = g.client()
    store, bid = client.store, batch_id()
    keys = Keys(g.settings.key_prefix)

    def chunk(tag: str, n: int) -> None:
        jobs = [
            NewJob(f"{tag}{i}", Article(digest(t), f"0:{i}", t))
            for i, t in enumerate(f"{tag} text {i} of the port." for i in range(n))
        ]
        publish(client, store.create_jobs(bid, jobs).messages)

    store.init_batch(bid, BatchSpec("fake-model", 30), "chunks")
    store.submitting(bid, 30)  # a submit storing its chunks, waiting for room between them
    chunk("a", 3)
    wait_until(lambda: store.status(bid)["done"] == 3, 30, "the first chunk done")
    time.sleep(1.5)  # longer than the results' TTL: today the batch would have finished and expired
    assert client.redis.ttl(keys.batch(bid)) == -1 and store.status(bid)["state"] == "running"
    chunk("b", 2)  # the next chunk finds its batch, spec and all
    wait_until(lambda: store.status(bid)["done"] == 5, 30, "the second chunk done")
    store.submitting(bid, 0)  # the submit ends: now the batch is over
    assert store.status(bid)["state"] == "finished" and client.redis.ttl(keys.batch(bid)) > 0

    # A submit that went away: its lease lapses and the reaper finishes the batch.
    gone = batch_id()
    store.init_batch(gone, BatchSpec("fake-model", 30), "chunks")
    store.submitting(gone, 1)
    bid = gone
    chunk("c", 2)
    wait_until(lambda: client.redis.ttl(keys.batch(gone)) > 0, 30, "the reaper finishing the abandoned batch")
    assert store.status(gone)["done"] == 2


def test_a_usd_budget_needs_the_fallback_models_price_too(fault: Group) -> None:
    refused = fault.cli(
        "submit",
        "-",
        "--model",
        "gpt-4o-mini",
        "--fallback-model",
        "no-such-model",
        "--budget-usd",
        "1",
        input='{"text": "priced primary, unpriced fallback"}\n',
    )
    assert refused.returncode == 3 and "'no-such-model' (the fallback model)" in refused.stderr, refused.stderr
