"""The engine's claim gate and request slots (worker/engine.py), on a real event loop: a message waits before
its claim only while the process's claimed-and-unfinished jobs are at the bound, first come first claimed;
a warm shutdown lets every waiting message through and hands every job waiting for a slot back at once."""

from __future__ import annotations

import asyncio

import pytest

from contract.errors import HandBack
from contract.settings import Settings
from worker.app import app
from worker.engine import ClaimGate, Slots, claim_bound

pytestmark = pytest.mark.timeout(30)


def test_bound_and_thread_count_follow_the_settings() -> None:
    s = Settings.from_env({"SUMMARIZE_CONCURRENCY": "200", "SUMMARIZE_CLAIM_AHEAD": "0.5"})
    assert claim_bound(s) == 300
    assert claim_bound(Settings.from_env({"SUMMARIZE_CONCURRENCY": "3", "SUMMARIZE_CLAIM_AHEAD": "0"})) == 3
    # the worker's threads: one per message the bound admits (defaults: 200 x 6 jobs, 20 a message)
    assert claim_bound(Settings.from_env({})) == 1200
    assert app.conf.worker_concurrency == -(-claim_bound(Settings.from_env()) // 20)


def test_gate_waits_at_the_bound_and_admits_in_arrival_order() -> None:
    async def scenario() -> None:
        gate = ClaimGate(bound=40)
        await gate.reserve(20)
        await gate.reserve(20)  # 40 held: the next message waits
        order: list[str] = []

        async def message(name: str) -> None:
            await gate.reserve(20)
            order.append(name)

        first, second = asyncio.create_task(message("first")), asyncio.create_task(message("second"))
        await asyncio.sleep(0.01)
        assert order == [] and gate.held == 40
        gate.release(1)  # one job of 40 ended: below the bound, so one whole message is claimed
        await asyncio.sleep(0.01)
        assert order == ["first"] and gate.held == 59
        gate.release(19)
        await asyncio.sleep(0.01)
        assert order == ["first"]  # 40 held again
        gate.release(1)
        await asyncio.gather(first, second)
        assert order == ["first", "second"] and gate.held == 59

    asyncio.run(scenario())


def test_a_cancelled_waiter_passes_its_turn_on() -> None:
    async def scenario() -> None:
        gate = ClaimGate(bound=1)
        await gate.reserve(1)
        doomed = asyncio.create_task(gate.reserve(1))
        later = asyncio.create_task(gate.reserve(1))
        await asyncio.sleep(0.01)
        gate.release(1)  # the turn goes to `doomed`, cancelled before it runs
        doomed.cancel()
        await asyncio.wait_for(later, 1)
        assert gate.held == 1

    asyncio.run(scenario())


def test_shutdown_opens_the_gate_and_hands_back_slot_waiters() -> None:
    async def scenario() -> None:
        gate, slots = ClaimGate(bound=1), Slots(1)
        await gate.reserve(1)
        waiting_message = asyncio.create_task(gate.reserve(20))
        await slots.acquire()
        waiting_job = asyncio.create_task(slots.acquire())
        await asyncio.sleep(0.01)
        assert not waiting_message.done() and not waiting_job.done()
        gate.open_all()
        slots.close()
        await asyncio.wait_for(waiting_message, 1)  # claimed at once, to be handed back
        with pytest.raises(HandBack):
            await waiting_job
        with pytest.raises(HandBack):
            await slots.acquire()  # nothing starts after the shutdown began
        slots.release()  # the job in flight ends normally

    asyncio.run(scenario())


def test_slots_pass_straight_to_the_longest_waiting_job() -> None:
    async def scenario() -> None:
        slots = Slots(2)
        await slots.acquire()
        await slots.acquire()
        got: list[int] = []

        async def job(i: int) -> None:
            await slots.acquire()
            got.append(i)

        tasks = [asyncio.create_task(job(i)) for i in range(3)]
        await asyncio.sleep(0.01)
        slots.release()
        await asyncio.sleep(0.01)
        # a newcomer may not take the slot that was handed on
        assert got == [0] and slots.free == 0
        slots.release()
        slots.release()
        await asyncio.gather(*tasks)
        assert got == [0, 1, 2] and slots.free == 0

    asyncio.run(scenario())
