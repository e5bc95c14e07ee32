"""Breaker's tests for batch mode (issue 19) and the limiter/cancel path (issue 18, findings 1-2): each
one a break found with real processes (redis-server, Celery workers, the fault server's Batch API)."""

from __future__ import annotations

import time
from collections import Counter

from scripts.stack import Stack
from tests.conftest import batch_id, isolated_group
from tests.faultserver import FaultServer
from tests.test_batchmode import FAST_BATCH, arts, provider_batches


def test_a_create_whose_last_attempt_is_lost_is_not_created_again_blind(stack: Stack, redis_url: str) -> None:
    # The first attempt is refused (token_limit_exceeded, nothing made); the second is accepted but its
    # answer is lost (a gateway's 502). The call's attempts are used up, so the pack goes back to
    # `uploaded` (steps.create -> later(back_to="uploaded")), and the next create starts with
    # looked=False: no look-up, a second provider batch for the same pack.
    with FaultServer(batch_delay=0.2) as srv:
        srv.configure(batch_create_429_next=1, batch_create_502_next=1)
        g = isolated_group(stack, redis_url, srv.url, **{**FAST_BATCH, "SUMMARIZE_DEFER_BASE": "0.5"})
        g.worker("brk-lost-w1")
        batch = g.client().submit(arts("lost", 6), batch_id=batch_id(), mode="batch")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if g.client().store.status(batch.id)["done"] == 6:
                break
            time.sleep(0.2)
        made = provider_batches(srv, batch.id)
        packs = Counter(b["metadata"]["summarize_pack"] for b in made)
        assert set(packs.values()) == {1}, packs  # one provider batch per pack, never two (both billed)


def test_an_auth_error_while_polling_does_not_abandon_a_running_provider_batch(stack: Stack, redis_url: str) -> None:
    # A permanent error is meant to end a pack on upload or create, before anything is paid. Here the
    # provider batch exists and runs; one poll is answered 401 (a key rotated, a gateway's hiccup). The
    # pilot's `except PermanentLLMError` fails the pack anyway: its jobs fail, its hold is replaced by
    # nothing spent, and the provider batch is neither cancelled nor fetched. After the fix, `retry`
    # packs the same jobs again: every article paid for in two provider batches.
    with FaultServer(batch_delay=3.0) as srv:
        g = isolated_group(stack, redis_url, srv.url, **FAST_BATCH)
        g.worker("brk-poll401-w1")
        batch = g.client().submit(arts("p401", 4), batch_id=batch_id(), mode="batch")
        deadline = time.monotonic() + 15
        while not provider_batches(srv, batch.id) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert provider_batches(srv, batch.id), "no provider batch was created"
        srv.configure(batch_api_status=401)
        deadline = time.monotonic() + 6
        while g.client().store.status(batch.id)["state"] == "running" and time.monotonic() < deadline:
            time.sleep(0.1)
        srv.configure(batch_api_status=0)
        if g.client().store.status(batch.id)["state"] == "halted":
            assert g.cli("retry", batch.id).returncode == 0
        deadline = time.monotonic() + 15
        while g.client().store.status(batch.id)["done"] < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        made = provider_batches(srv, batch.id)
        ran = Counter(c for b in made if b["status"] != "cancelled" for c in b["custom_ids"])
        assert set(ran.values()) == {1}, (ran, [(b["id"], b["status"]) for b in made])
