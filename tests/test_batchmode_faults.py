"""Batch mode when things go wrong, with real processes: a server without a Batch API (issue 19, finding
8), cancel before a pack is uploaded (finding 9), a cancelled batch leaving the packing index (finding 7),
and a third-party Batch API implementation (llmock, pinned in the dev dependencies)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.stack import Stack, free_port
from tests.conftest import batch_id, isolated_group
from tests.faultserver import FaultServer
from tests.test_batchmode import FAST_BATCH, arts, provider_batches


def test_a_server_without_a_batch_api_fails_the_pack_shows_why_and_halts(stack: Stack, redis_url: str) -> None:
    with FaultServer() as srv:
        srv.configure(batch_api_status=404)
        g = isolated_group(stack, redis_url, srv.url, **FAST_BATCH)
        g.worker("nobatch-w1")
        batch = g.client().submit(arts("nb", 5), batch_id=batch_id(), mode="batch")
        deadline = time.monotonic() + 30
        while g.client().store.status(batch.id)["state"] != "halted" and time.monotonic() < deadline:
            time.sleep(0.1)
        status = g.client().store.status(batch.id)
        assert status["state"] == "halted" and "404" in status["halted"], status
        assert status["failed"] == 5 and status["running"] == 0
        assert "404" in (status["packs"][0]["error"] or "")
        shown = g.cli("status", batch.id).stdout
        assert "HALTED" in shown and "404" in shown
        srv.configure(batch_api_status=0)  # the fix: then `retry` sends them again
        assert g.cli("retry", batch.id).returncode == 0
        assert batch.wait(timeout=60)["done"] == 5


def test_with_fallback_mode_online_a_server_without_a_batch_api_runs_the_jobs_online(
    stack: Stack, redis_url: str
) -> None:
    with FaultServer() as srv:
        srv.configure(batch_api_status=404)
        g = isolated_group(stack, redis_url, srv.url, **FAST_BATCH)
        g.worker("nobatch-online-w1")
        batch = g.client().submit(arts("nbo", 5), batch_id=batch_id(), mode="batch", fallback_mode="online")
        final = batch.wait(timeout=60)
        assert (final["done"], final["failed"], final["state"]) == (5, 0, "finished"), final
        assert "404" in (final["packs"][0]["error"] or "") and "online" in final["packs"][0]["error"]
        assert srv.stats()["requests"] == 5  # one online request a job, no provider batch
        refused = g.cli("submit", "-", "--fallback-mode", "online", input='{"text": "x"}\n')
        assert refused.returncode != 0 and "batch mode" in refused.stderr
        warned = g.cli("submit", "-", "--mode", "batch", "-q", input='{"text": "nbo warned"}\n')
        assert warned.returncode == 0 and "no Batch API" in warned.stderr and "--fallback-mode online" in warned.stderr


def test_cancel_stops_a_pack_that_is_not_uploaded_yet(stack: Stack, redis_url: str) -> None:
    with FaultServer() as srv:
        srv.configure(batch_api_status=503)  # uploads fail for now; the worker keeps trying
        g = isolated_group(stack, redis_url, srv.url, **FAST_BATCH)
        g.worker("cancel-upload-w1")
        batch = g.client().submit(arts("cu", 6), batch_id=batch_id(), mode="batch")
        deadline = time.monotonic() + 30
        while not g.client().store.status(batch.id)["packs"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert g.cli("cancel", batch.id).returncode == 0
        srv.configure(batch_api_status=0)  # the upload would go through now: it must not be made
        status = batch.wait(timeout=60)
        assert status["cancelled"] == 6
        assert srv.stats()["files"] == 0 and provider_batches(srv, batch.id) == []


def test_a_cancelled_batch_leaves_the_packing_index(stack: Stack, redis_url: str) -> None:
    with FaultServer() as srv:
        g = isolated_group(stack, redis_url, srv.url, **{**FAST_BATCH, "SUMMARIZE_BATCH_LINGER": "3600"})
        g.worker("cancel-index-w1")
        batch = g.client().submit(arts("ci", 4), batch_id=batch_id(), mode="batch")
        store = g.client().store
        deadline = time.monotonic() + 30
        while store.r.zscore(store.keys.packing_batches, batch.id) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.r.zscore(store.keys.packing_batches, batch.id) is not None  # waiting to be packed
        assert g.cli("cancel", batch.id).returncode == 0
        assert batch.wait(timeout=30)["cancelled"] == 4
        deadline = time.monotonic() + 30  # the reaper's next look drops it (no PACK task for ever)
        while store.r.zscore(store.keys.packing_batches, batch.id) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert store.r.zscore(store.keys.packing_batches, batch.id) is None
        assert not store.r.exists(store.keys.packing(batch.id))


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def llmock_url() -> Iterator[str]:
    port = free_port()
    exe = Path(sys.executable).with_name("llmock")
    proc = subprocess.Popen(
        [str(exe), "serve", "--port", str(port), "--host", "127.0.0.1", "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    try:
        deadline = time.monotonic() + 30
        while not _listening(port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _listening(port), "llmock did not start"
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(10)


def test_batch_mode_against_llmocks_batch_api(stack: Stack, redis_url: str, llmock_url: str) -> None:
    g = isolated_group(stack, redis_url, llmock_url, model="gpt-4o-mini", **FAST_BATCH)
    g.worker("llmock-w1")
    items = arts("lm", 8)
    batch = g.client().submit(items, batch_id=batch_id(), mode="batch")
    status = batch.wait(timeout=90)
    assert status["done"] == 8 and status["failed"] == 0, status
    rows = list(batch.results())
    assert all(r.summary for r in rows) and {r.id for r in rows} == {a["id"] for a in items}
    packs = g.client().store.status(batch.id)["packs"]
    assert len(packs) == 1 and packs[0]["provider_batch"].startswith("batch_") and packs[0]["status"] == "completed"
