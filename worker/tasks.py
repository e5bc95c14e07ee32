"""The summarize task: load the job, call the summarize function, store the outcome."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from contract.errors import ProviderRejected
from contract.messaging import TASK_NAME

from .app import app
from .outcome import settle_failure
from .runtime import runtime
from .summarize import Attempts, summarize

log = logging.getLogger(__name__)


@app.task(name=TASK_NAME, bind=True)
def summarize_job(self: Any, batch_id: str, job_id: str) -> str:
    rt = runtime()
    job = rt.store.claim(batch_id, job_id, token=self.request.id or uuid.uuid4().hex)
    if isinstance(job, str):
        return f"skipped ({job})"  # a duplicate delivery of a job that is done, failed or running elsewhere
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
