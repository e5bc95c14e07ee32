"""contract/store.py and worker/storage.py: the job store's transitions on the session's real redis-server
(duplicate delivery, leases, reaping, republishing, late results, expiry, resume)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from contract.errors import (
    ConfigError,
)
from contract.keys import Keys
from contract.ops import Bill, Counts, Defer, Done, Fail, Run
from contract.record import Article, Final, digest
from contract.redisconn import make_redis
from contract.settings import Settings
from contract.spec import BatchSpec
from contract.store import JobStore, NewJob
from tests.redisunits import unit_settings, worker_call


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return unit_settings(redis_url)


@pytest.fixture
def store(settings: Settings) -> JobStore:
    return JobStore(make_redis(settings, decode=False), settings)


def new_batch(store: JobStore, bid: str, *texts: str) -> list[tuple[int, str]]:
    store.init_batch(bid, BatchSpec("m", 50), "in.jsonl")
    jobs = [NewJob(f"j{i}", Article(digest(t), f"0:{i + 1}", t)) for i, t in enumerate(texts)]
    return store.create_jobs(bid, jobs).messages


def claim(settings: Settings, message: tuple[int, str]) -> Any:
    step, member = message
    bid, ids = Keys.split_member(member)
    return worker_call(settings, lambda w: w.claim(bid, ids, step, uuid.uuid4().hex))


def test_a_job_delivered_twice_is_stored_and_counted_once(settings: Settings, store: JobStore) -> None:
    (msg,) = new_batch(store, "b1", "text one")
    assert store.create_jobs("b1", [NewJob("j0", Article(digest("text one"), "0:1", "text one"))]).created == []
    first = claim(settings, msg)
    assert [j.job_id for j in first.jobs] == ["j0"]
    assert claim(settings, msg).skipped == {"j0": "busy"}  # a duplicate message while it runs
    job = first.jobs[0]
    done = Done(
        run=Run("b1", "j0", job.token),
        counts=Counts(1, 0, Bill(10, 5, 0.0)),
        final=Final("done", job.article.digest, job.article.origin, summary="sum", attempts=1),
    )
    assert worker_call(settings, lambda w: w.settle([done, done]))[0] == [1, 0]
    assert claim(settings, msg).skipped == {"j0": "done"}
    s = store.status("b1")
    assert (s["total"], s["queued"], s["running"], s["done"], s["failed"]) == (1, 0, 0, 1, 0)
    assert (s["prompt_tokens"], s["completion_tokens"]) == (20, 10)  # billed twice: both ops said so
    (r,) = list(store.results("b1"))
    assert r.summary == "sum" and r.attempts == 1


def test_an_expired_lease_is_reaped_on_redis_time_but_not_right_after_a_gap(
    settings: Settings, store: JobStore
) -> None:
    (msg,) = new_batch(store, "b2", "text")
    claim(settings, msg)
    time.sleep(0.6)
    # The first reap after a gap (no reaper ran yet) trusts no lapsed lease: its holder may not have
    # had a chance to renew since Redis came back. Once reaping has gone on for a lease, it does.
    reclaimed = []
    for _ in range(12):
        reclaimed.append(worker_call(settings, lambda w: w.reap()).reclaimed)
        time.sleep(0.08)
    assert reclaimed[0] == 0 and sum(reclaimed) == 1
    assert store.status("b2")["queued"] == 1


def test_renewal_keeps_a_lease_alive(settings: Settings, store: JobStore) -> None:
    (msg,) = new_batch(store, "b3", "text")
    job = claim(settings, msg).jobs[0]
    for _ in range(15):
        time.sleep(0.08)
        assert worker_call(settings, lambda w: w.renew([job])) == []
        assert worker_call(settings, lambda w: w.reap()).reclaimed == 0
    assert store.status("b3")["running"] == 1


def test_late_result_after_failure_wins_and_counters_follow(settings: Settings, store: JobStore) -> None:
    (msg,) = new_batch(store, "b4", "text")
    job = claim(settings, msg).jobs[0]
    fail = Fail(run=Run("b4", "j0", job.token), counts=Counts(1), final=Final("failed", error="x"))
    assert worker_call(settings, lambda w: w.settle([fail]))[0] == [1]
    assert store.status("b4")["failed"] == 1
    done = Done(run=Run("b4", "j0", "another-run"), counts=Counts(1), final=Final("done", summary="s"))
    assert worker_call(settings, lambda w: w.settle([done]))[0] == [1]
    s = store.status("b4")
    assert (s["failed"], s["done"]) == (0, 1)
    assert not store.r.sismember(store.keys.dead("b4"), "j0")


def test_a_stale_run_can_not_fail_or_defer_a_job_another_run_holds(settings: Settings, store: JobStore) -> None:
    (msg,) = new_batch(store, "b5", "text")
    claim(settings, msg)
    stale = [
        Fail(run=Run("b5", "j0", "old-token"), final=Final("failed")),
        Defer(run=Run("b5", "j0", "old-token"), delay_ms=1000, error_type="X", error="x", counts_as_failure=True),
    ]
    assert worker_call(settings, lambda w: w.settle(stale))[0] == [0, 0]


def test_a_message_the_queue_has_passed_is_republished_while_the_queue_is_busy(
    settings: Settings, store: JobStore
) -> None:
    new_batch(store, "b6", "lost text")  # its message never reaches the queue
    time.sleep(0.3)
    (later,) = new_batch(store, "b7", "later text")  # queued after the lost one plus the grace
    store.r.rpush(store.keys.broker_queue(3), "someone else's message")  # the queue never drains
    worker_call(settings, lambda w: w.reap())
    claim(settings, later)  # a worker took a message queued after the lost one: the queue has passed it
    reaped = worker_call(settings, lambda w: w.reap())
    assert reaped.republished == 1 and reaped.messages == [(3, Keys.member("b6", "j0"))]
    assert worker_call(settings, lambda w: w.reap()).republished == 0  # once, then it has a fresh grace
    assert [j.job_id for j in claim(settings, reaped.messages[0]).jobs] == ["j0"]


def test_a_queued_message_on_an_idle_queue_is_republished_after_the_grace(settings: Settings, store: JobStore) -> None:
    (msg,) = new_batch(store, "b8", "text")
    assert worker_call(settings, lambda w: w.reap()).republished == 0
    time.sleep(0.3)
    assert worker_call(settings, lambda w: w.reap()).messages == [msg]


def test_retry_does_not_resend_invalid_input_records(store: JobStore) -> None:
    store.init_batch("b9", BatchSpec("m", 50), "in.jsonl")
    store.create_jobs("b9", [NewJob("invalid@in.jsonl:1", Article("", "0:1", ""), error="'text' is missing")])
    assert store.status("b9")["failed"] == 1
    assert store.retry_failed("b9") == ([], 0)


def test_results_page_by_a_stable_cursor_while_the_batch_grows(store: JobStore) -> None:
    new_batch(store, "b10", *(f"text {i}" for i in range(5)))
    rows = store.results("b10", chunk=2)
    first = [next(rows).id for _ in range(3)]
    store.create_jobs("b10", [NewJob("late", Article(digest("late"), "1:1", "late"))])
    rest = [r.id for r in rows]
    assert first + rest == ["j0", "j1", "j2", "j3", "j4", "late"]


def test_unfinished_work_never_expires_and_results_expire_after_the_batch(settings: Settings, store: JobStore) -> None:
    (msg,) = new_batch(store, "b11", "one", "two")
    assert all(store.r.ttl(k) == -1 for k in store.keys.batch_keys("b11") if store.r.exists(k))
    jobs = claim(settings, msg).jobs
    ops = [Done(run=Run("b11", j.job_id, j.token), counts=Counts(1), final=Final("done", summary="s")) for j in jobs]
    worker_call(settings, lambda w: w.settle(ops[:1]))
    assert store.r.ttl(store.keys.batch("b11")) == -1  # one job left: nothing expires
    worker_call(settings, lambda w: w.settle(ops[1:]))
    ttls = [store.r.ttl(k) for k in store.keys.batch_keys("b11") if store.r.exists(k)]
    assert ttls and all(0 < t <= settings.result_ttl for t in ttls)


def test_a_resume_with_another_spec_is_refused_naming_the_difference(store: JobStore) -> None:
    store.init_batch("b12", BatchSpec("m", 50), "a.jsonl")
    assert store.init_batch("b12", BatchSpec("m", 50), "b.jsonl") == 1
    with pytest.raises(ConfigError, match="max_words: 50 -> 60"):
        store.init_batch("b12", BatchSpec("m", 60), "a.jsonl")
