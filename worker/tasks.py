"""The summarize task: a thin bridge from Celery's thread to the process's event loop (worker/engine.py),
where each job of the message is loaded, summarized and stored."""

from __future__ import annotations

import threading
from typing import Any

from contract.errors import JobsFailed
from contract.keys import PRIORITIES
from contract.messaging import FETCH_TASK, PACK_TASK, POLL_TASK, TASK_NAME

from .app import app, settings
from .batchmode import Packs
from .engine import engine

_packs_lock = threading.Lock()
_packs: list[Packs] = []


@app.task(name=TASK_NAME)
def summarize_jobs(batch_id: str, job_ids: list[str] | str, step: int = PRIORITIES["normal"]) -> dict[str, Any]:
    """Run the message's jobs; the result (shown in Flower) counts outcomes and names failed jobs."""
    ids = [job_ids] if isinstance(job_ids, str) else list(job_ids)
    report = engine(settings, app).run_message(batch_id, ids, step)
    result = report.as_result()
    if report.failed and report.outcomes["failed"] == len(ids):
        # Every job failed for good: Flower shows the task as failed, naming each job and its error.
        named = ", ".join(f"{job_id}: {kind}" for job_id, kind in report.failed.items())
        raise JobsFailed(f"all {len(ids)} job(s) of batch {batch_id} failed: {named}")
    return result


def packs() -> Packs:
    with _packs_lock:
        if not _packs:
            _packs.append(Packs(settings, app))
        return _packs[0]


@app.task(name=PACK_TASK)
def pack_batch(batch_id: str) -> dict[str, Any]:
    """Batch mode: send the batch's waiting jobs to the provider's Batch API, in packs within its limits."""
    return {"provider_batches": packs().pack(batch_id)}


@app.task(name=POLL_TASK)
def poll_pack(pack_id: str) -> dict[str, Any]:
    """Batch mode: look at a pack's provider batch (or carry on a pack a dead worker left half done)."""
    return {"state": packs().poll(pack_id)}


@app.task(name=FETCH_TASK)
def fetch_pack(pack_id: str) -> dict[str, Any]:
    """Batch mode: settle every job of a finished provider batch from its output and error files."""
    return packs().fetch(pack_id)
