"""Cancel and pause reach the calls that wait for their turn: a job that booked a limiter slot before the
cancel checks its batch's state (on Redis, in send.lua) right before its request leaves, and gives the
slot back. Counted on the fault server's answer times (wall clock, one machine)."""

from __future__ import annotations

import time

from scripts.stack import Stack
from tests.conftest import batch_id, isolated_group
from tests.faultserver import FaultServer
from tests.helpers import articles, poll, wait_until

LATENCY = 0.5
#: a request that passed its last check before the cancel is answered within its latency; the margin
#: covers the second a worker's copy of the state may be old for the jobs not yet at their check
BOUND = LATENCY + 1.0


def test_cancel_starts_no_call_after_it_even_for_booked_slots(stack: Stack, redis_url: str) -> None:
    with FaultServer(latency=LATENCY) as srv:
        g = isolated_group(
            stack, redis_url, srv.url, SUMMARIZE_RPM="600", SUMMARIZE_CONCURRENCY="64", SUMMARIZE_JOBS_PER_MESSAGE="8"
        )
        g.worker("cx-w1")
        batch = g.client().submit(articles("cx", 300), batch_id=batch_id())
        wait_until(lambda: batch.status()["done"] >= 10, 30, "calls under way")
        cancelled_at = time.time()
        batch.cancel()
        final = poll(batch.status, lambda s: s["queued"] + s["running"] == 0, 60)
        late = [t for t in srv.stats()["ok_times"] if t > cancelled_at + BOUND]
        print(
            f"RPM 600, cancel after {final['done']} done: {len(late)} answers later than {BOUND} s after it, "
            f"{final['cancelled']} cancelled"
        )
        assert late == []
        assert final["cancelled"] > 0 and final["done"] + final["cancelled"] == 300
        # Jobs that were waiting for their slot ended cancelled, not done long after.
        assert final["done"] < 10 + 64


def test_pause_starts_no_call_after_it_and_resume_goes_on(stack: Stack, redis_url: str) -> None:
    with FaultServer(latency=LATENCY) as srv:
        g = isolated_group(
            stack, redis_url, srv.url, SUMMARIZE_RPM="120", SUMMARIZE_CONCURRENCY="32", SUMMARIZE_JOBS_PER_MESSAGE="4"
        )
        g.worker("px-w1")
        batch = g.client().submit(articles("px", 40), batch_id=batch_id())
        wait_until(lambda: batch.status()["done"] >= 3, 30, "calls under way")
        paused_at = time.time()
        batch.pause()
        time.sleep(BOUND + 1.5)
        late = [t for t in srv.stats()["ok_times"] if t > paused_at + BOUND]
        s = batch.status()
        assert late == [] and s["state"] == "paused" and s["done"] < 40, (len(late), s)
        srv.configure(latency=0)
        batch.resume()
        final = batch.wait(timeout=120)
        assert final["done"] == 40
        assert srv.stats()["requests"] == 40  # nothing paid twice
