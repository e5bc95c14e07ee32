"""The summarize task: for each job of the message, load it, call the summarize function, store the outcome."""

from __future__ import annotations

import uuid
from collections import Counter

from contract.errors import ProviderRejected
from contract.messaging import TASK_NAME

from .app import app
from .outcome import settle_failure
from .runtime import Runtime, runtime
from .summarize import Attempts, summarize


@app.task(name=TASK_NAME)
def summarize_jobs(batch_id: str, job_ids: list[str] | str) -> dict[str, int]:
    """Run the message's jobs side by side in the process's LLM pool; returns outcome counts for Flower."""
    rt = runtime()
    ids = [job_ids] if isinstance(job_ids, str) else job_ids
    return dict(Counter(rt.pool.map(lambda job_id: run_job(rt, batch_id, job_id), ids)))


def run_job(rt: Runtime, batch_id: str, job_id: str) -> str:
    job = rt.store.claim(batch_id, job_id, token=uuid.uuid4().hex)
    if isinstance(job, str):
        return f"skipped-{job}"  # a duplicate delivery of a job that is done, failed or running elsewhere
    attempts = Attempts()
    with rt.leases.hold(job):
        try:
            if job.halted:
                raise ProviderRejected(f"batch halted by an earlier provider error: {job.halted}")
            result = summarize(job.text, job.max_words, job.model, rt.provider.for_job(attempts),
                               rt.settings.max_summary_chars)
        except Exception as exc:
            return settle_failure(rt.store, job, exc, attempts.n)
        rt.store.complete(job, result.text, result.model, result.usage, attempts.n)
    return "done"
