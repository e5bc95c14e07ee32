"""JobAccount (worker/account.py) alone: the verdicts of send.lua turned into holds or the errors the call
path stops on, and holds handed back to settle.lua, on a real Redis with the worker's own store, batch-state
copies and writer (no engine)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest

from contract.errors import BatchCancelled, BatchPaused, BudgetWait, RunLost
from contract.job import ClaimedJob
from contract.keys import Keys
from contract.models import Price
from contract.record import Article, digest
from contract.redisconn import make_async_redis, make_redis
from contract.settings import Settings
from contract.spec import BatchSpec
from contract.store import JobStore, Message, NewJob
from worker.account import JobAccount
from worker.batches import Batches
from worker.llm import Usage
from worker.storage import WorkerStore
from worker.summarize import Billed, Hold
from worker.writer import Writer

PRICE = Price(1.0, 2.0)
PRICED = BatchSpec("m", 50, prices={"m": [PRICE.input, PRICE.output]})
UNPRICED = BatchSpec("m", 50)


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings.from_dsn(redis_url, key_prefix=f"a{uuid.uuid4().hex[:6]}")


@pytest.fixture
def store(settings: Settings) -> JobStore:
    return JobStore(make_redis(settings, decode=False), settings)


@dataclass
class Rig:
    """A batch's claimed jobs and the process pieces an account is built from."""

    bid: str
    spec: BatchSpec
    jobs: list[ClaimedJob]
    store: WorkerStore
    batches: Batches
    writer: Writer

    def account(self, job: ClaimedJob | None = None) -> JobAccount:
        return JobAccount(job or self.jobs[0], self.spec, store=self.store, batches=self.batches, writer=self.writer)


def run(
    settings: Settings,
    store: JobStore,
    spec: BatchSpec,
    body: Callable[[Rig], Awaitable[Any]],
    jobs: int = 1,
    budget_usd: float | None = None,
    budget_tokens: int | None = None,
) -> Any:
    """A batch of `jobs` articles, claimed by one run each, then `body` on a fresh event loop, as a worker's."""
    bid = f"b{uuid.uuid4().hex[:8]}"
    store.init_batch(bid, spec, "in.jsonl")
    texts = [f"article {i} {bid}" for i in range(jobs)]
    messages = store.create_jobs(
        bid, [NewJob(f"j{i}", Article(digest(t), f"0:{i + 1}", t)) for i, t in enumerate(texts)]
    )
    if budget_usd is not None or budget_tokens is not None:
        store.control(bid, "budget", budget_usd=budget_usd, budget_tokens=budget_tokens)

    async def go() -> Any:
        client = make_async_redis(settings)
        worker = WorkerStore(client, settings)
        published: list[Message] = []

        async def publish(ms: list[Message]) -> None:
            published.extend(ms)

        writer = Writer(worker, publish)
        writer.start()
        batches = Batches(client, worker.keys, settings.openai_base_url)
        try:
            gen, rev, _ = await batches.spec(bid)
            claimed: list[ClaimedJob] = []
            for step, member in messages.messages:
                _, ids = Keys.split_member(member)
                claimed += (await worker.claim(bid, ids, step, uuid.uuid4().hex, gen=gen, rev=rev)).jobs
            assert len(claimed) == jobs
            return await body(Rig(bid, spec, claimed, worker, batches, writer))
        finally:
            await writer.close()
            await client.aclose()

    return asyncio.run(go())


def money(store: JobStore, bid: str) -> dict[str, Any]:
    s = store.status(bid)
    keys = ("state", "reason", "held_usd", "held_tokens", "spent_usd", "spent_tokens", "estimated_tokens")
    return {k: s[k] for k in keys}


def test_a_go_holds_the_calls_worst_case_and_its_bill_replaces_the_hold(settings: Settings, store: JobStore) -> None:
    async def body(rig: Rig) -> None:
        acct = rig.account()
        hold = await acct.admit("m", 1000, 200)
        assert hold == Hold(PRICE.cost(1000, 200), 1200)
        held = money(store, rig.bid)
        assert (held["held_tokens"], held["held_usd"]) == (1200, round(PRICE.cost(1000, 200), 6))
        await acct.release(hold, "m", Billed(Usage(300, 50)))
        after = money(store, rig.bid)
        assert (after["held_tokens"], after["held_usd"]) == (0, 0.0)
        assert (after["spent_tokens"], after["spent_usd"]) == (350, round(PRICE.cost(300, 50), 6))
        assert after["estimated_tokens"] == 0

    run(settings, store, PRICED, body, budget_tokens=10_000)


def test_without_a_price_a_call_holds_tokens_and_no_usd(settings: Settings, store: JobStore) -> None:
    async def body(rig: Rig) -> None:
        acct = rig.account()
        assert acct.price("m") is None
        hold = await acct.admit("m", 100, 20)
        assert hold == Hold(0.0, 120)  # send.lua was told -1 (unknown) and held 0 USD
        await acct.release(hold, "m", Billed(Usage(40, 10)))
        after = money(store, rig.bid)
        assert (after["held_tokens"], after["spent_tokens"], after["spent_usd"]) == (0, 50, 0.0)

    run(settings, store, UNPRICED, body)


def test_a_usd_cap_without_a_price_pauses_the_batch_and_the_process_knows_at_once(
    settings: Settings, store: JobStore
) -> None:
    async def body(rig: Rig) -> None:
        with pytest.raises(BatchPaused, match="budget"):
            await rig.account().admit("m", 100, 20)
        assert money(store, rig.bid)["state"] == "paused"
        # Resumed in Redis: this process's copy, noted from send.lua's verdict, still says paused for up
        # to a second (what the job's next guard reads), proving the account noted it.
        store.control(rig.bid, "resume")
        with pytest.raises(BatchPaused):
            await rig.batches.check(rig.bid)

    run(settings, store, UNPRICED, body, budget_usd=1.0)


def test_a_call_that_fits_only_once_calls_in_flight_settle_waits_then_goes(settings: Settings, store: JobStore) -> None:
    async def body(rig: Rig) -> None:
        first, second = rig.account(rig.jobs[0]), rig.account(rig.jobs[1])
        hold = await first.admit("m", 1000, 200)
        with pytest.raises(BudgetWait):
            await second.admit("m", 1000, 200)
        assert money(store, rig.bid)["held_tokens"] == 1200  # the wait held nothing
        await first.release(hold, "m", Billed(Usage(500, 100)))
        assert await second.admit("m", 1000, 200) == Hold(PRICE.cost(1000, 200), 1200)
        assert money(store, rig.bid)["state"] == "running"

    run(settings, store, PRICED, body, jobs=2, budget_tokens=2000)


def test_a_call_that_would_not_fit_even_alone_pauses_the_batch(settings: Settings, store: JobStore) -> None:
    async def body(rig: Rig) -> None:
        with pytest.raises(BatchPaused, match="budget"):
            await rig.account().admit("m", 1000, 200)
        m = money(store, rig.bid)
        assert (m["state"], m["reason"], m["held_tokens"]) == ("paused", "budget", 0)

    run(settings, store, PRICED, body, budget_tokens=1000)


def test_a_run_that_no_longer_holds_its_job_or_whose_batch_was_made_again_is_refused(
    settings: Settings, store: JobStore
) -> None:
    async def body(rig: Rig) -> None:
        job = rig.jobs[0]
        with pytest.raises(RunLost, match="lost"):
            await rig.account(replace(job, token=uuid.uuid4().hex)).admit("m", 10, 10)
        with pytest.raises(RunLost, match="gone"):
            await rig.account(replace(job, gen="another")).admit("m", 10, 10)
        assert money(store, rig.bid)["held_tokens"] == 0

    run(settings, store, PRICED, body)


def test_a_cancelled_batch_stops_the_call(settings: Settings, store: JobStore) -> None:
    async def body(rig: Rig) -> None:
        store.control(rig.bid, "cancel")
        with pytest.raises(BatchCancelled):
            await rig.account().admit("m", 10, 10)
        assert money(store, rig.bid)["held_tokens"] == 0

    run(settings, store, PRICED, body)


def test_a_call_that_may_have_been_billed_is_spent_at_its_bound(settings: Settings, store: JobStore) -> None:
    async def body(rig: Rig) -> None:
        acct = rig.account()
        hold = await acct.admit("m", 1000, 200)
        await acct.release(hold, "m", Billed(estimated=True))
        m = money(store, rig.bid)
        assert (m["held_tokens"], m["spent_tokens"], m["estimated_tokens"]) == (0, 1200, 1200)
        assert m["spent_usd"] == round(PRICE.cost(1000, 200), 6)

    run(settings, store, PRICED, body, budget_tokens=10_000)


def test_releasing_no_hold_writes_nothing(settings: Settings, store: JobStore) -> None:
    async def body(rig: Rig) -> None:
        before = money(store, rig.bid)
        await rig.account().release(Hold(), "m", Billed(Usage(300, 50)))
        assert money(store, rig.bid) == before

    run(settings, store, PRICED, body)
