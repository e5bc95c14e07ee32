"""The summarize task: a thin bridge from Celery's thread to the process's event loop (worker/engine.py),
where each job of the message is loaded, summarized and stored."""

from __future__ import annotations

from typing import Any

from contract.errors import JobsFailed
from contract.keys import PRIORITIES
from contract.messaging import TASK_NAME

from .app import app, settings
from .engine import engine


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
