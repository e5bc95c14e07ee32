"""The result reader: a finished provider batch's output and error files turned into settle.lua ops, built
by worker/outcome.py like an online answer's and written by the process's one writer.

Lines come in any order and are matched on custom_id (= job id). Every line is judged on its own, whether
or not its job is still held by the pack, so settling is idempotent per line: a fetch that died half way
is done again, the lines already applied are skipped by settle.lua, and the pack's bill (its budget
hold's `spend`) counts every billed line exactly once. An identical article (a twin) takes its leader's
line's outcome, whether the leader was settled by this fetch or an earlier one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from contract.errors import MalformedResponse, PermanentLLMError, UnusableAnswers
from contract.job import ClaimedJob
from contract.openai_shapes import BATCH_CANCELLED, BATCH_EXPIRED
from contract.ops import Bill, Op, Repack, Run
from contract.schema import PACK
from contract.settings import Settings
from contract.spec import BatchSpec

from .. import llm, outcome
from ..prompt import WHOLE
from ..summarize import Summary, Tally, gate, request
from .journal import PackInfo

#: failed lines of a job before it is tried online instead
MAX_PACK_TRIES = 3
#: how a provider batch that ended without a line is reported for that line
_ENDED = {"failed": "batch_failed", "expired": BATCH_EXPIRED, "cancelled": BATCH_CANCELLED}
_STATUS_ERRORS = frozenset({408, 409, 429})


@dataclass(frozen=True)
class Line:
    """One result line: HTTP status (0: the request never ran), body, error code and message, usage."""

    status: int
    body: Any
    code: str = ""
    message: str = ""

    @classmethod
    def of(cls, row: dict[str, Any]) -> Line:
        raw = row.get("response")
        response: dict[str, Any] = raw if isinstance(raw, dict) else {}
        body = response.get("body")
        raw_error = row.get("error")
        error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
        raw_inner = body.get("error") if isinstance(body, dict) else None
        inner: dict[str, Any] = raw_inner if isinstance(raw_inner, dict) else {}
        return cls(
            int(response.get("status_code") or 0),
            body,
            str(error.get("code") or inner.get("code") or ""),
            str(error.get("message") or inner.get("message") or ""),
        )

    @property
    def usage(self) -> llm.Usage:
        return llm.Usage.of(self.body) if self.status == 200 else llm.Usage()


def parse(raw: bytes) -> dict[str, Line]:
    out: dict[str, Line] = {}
    for text in raw.decode("utf-8").splitlines():
        if text.strip():
            row = json.loads(text)
            if isinstance(row, dict) and row.get("custom_id") is not None:
                out[str(row["custom_id"])] = Line.of(row)
    return out


@dataclass
class Settled:
    ops: list[Op] = field(default_factory=list)
    done: int = 0
    retried: int = 0
    failed: int = 0
    #: what the provider billed for the pack's lines (every line once, settled now or earlier)
    bill: Bill = field(default_factory=Bill)


class Reader:
    def __init__(self, settings: Settings, spec: BatchSpec, info: PackInfo, cancelled: bool) -> None:
        self.settings, self.spec, self.info, self.cancelled = settings, spec, info, cancelled
        self.price = spec.price(spec.model)

    def settle(self, lines: dict[str, Line], held: dict[str, ClaimedJob], twins: dict[str, str]) -> Settled:
        out = Settled()
        for line in lines.values():
            usage = line.usage
            out.bill += self._bill(usage)
        for job_id, job in held.items():
            leader = twins.get(job_id)
            if leader is None:
                self._leader(out, job, lines.get(job_id))
            else:
                self._twin(out, job, lines.get(leader))
        return out

    def _bill(self, usage: llm.Usage) -> Bill:
        return Bill.priced(usage.prompt_tokens, usage.completion_tokens, self.price, self.settings.batch_discount)

    def _tally(self, usage: llm.Usage) -> Tally:
        return Tally(requests=1, billed=self._bill(usage))

    def _leader(self, out: Settled, job: ClaimedJob, line: Line | None) -> None:
        if line is not None and line.status == 200:
            tally = self._tally(line.usage)
            try:
                summary = self._summary(job, line)
            except MalformedResponse as exc:
                tally.unusable = 1
                if job.unusable + 1 >= self.settings.max_unusable:
                    unusable = UnusableAnswers(f"{job.unusable + 1} paid answers could not be used; the last: {exc}")
                    self._fail(out, job, unusable, tally)
                else:
                    self._repack(out, job, tally, type(exc).__name__, str(exc))
                return
            out.ops.append(outcome.done(job, summary, tally, spec=self.spec))
            out.done += 1
            return
        if self.cancelled:
            out.ops.append(outcome.cancelled(job, Tally()))
            return
        status, code, message = self._unanswered(line)
        transient = code in _ENDED.values() or code == "missing" or status in _STATUS_ERRORS or status == 0
        transient = transient or status >= 500
        if transient and not (code == "batch_failed" and job.deferrals >= 1):
            self._repack(out, job, Tally(requests=1 if status else 0), code or f"HTTP {status}", message)
            return
        error = PermanentLLMError(f"the provider batch answered {code or status}: {message}"[:2000], status or None)
        self._fail(out, job, error, Tally(requests=1 if status else 0))

    def _unanswered(self, line: Line | None) -> tuple[int, str, str]:
        if line is not None:
            return line.status, line.code, line.message
        ended = self.info.get(PACK.status)
        code = _ENDED.get(ended, "missing")
        return 0, code, self.info.get(PACK.errors) or f"the provider batch ended {ended} without this line"

    def _summary(self, job: ClaimedJob, line: Line) -> Summary:
        completion = llm.validated(line.body)
        ask = gate(
            request(job.text, self.spec, WHOLE, self.settings.max_summary_chars), outcome.required(job.text, self.spec)
        )
        return Summary(ask.check(completion.content), completion.model or self.spec.model)

    def _twin(self, out: Settled, job: ClaimedJob, line: Line | None) -> None:
        """An identical article that shared its leader's line: its answer, at no cost of its own."""
        if line is not None and line.status == 200:
            try:
                summary = self._summary(job, line)
            except MalformedResponse:
                summary = None
            if summary is not None:
                done = outcome.done(job, summary, Tally(), spec=self.spec)
                # Answered by the leader's call: a cached answer in its record, like an online twin's.
                out.ops.append(replace(done, final=replace(done.final, cached=True)))
                out.done += 1
                return
        if self.cancelled:
            out.ops.append(outcome.cancelled(job, Tally()))
        else:
            self._repack(out, job, Tally(), "", "")

    def _fail(self, out: Settled, job: ClaimedJob, error: Exception, tally: Tally) -> None:
        op, _ = outcome.failed(job, error, tally, self.settings, 0.0)
        out.ops.append(op)
        out.failed += 1

    def _repack(self, out: Settled, job: ClaimedJob, tally: Tally, error_type: str, error: str) -> None:
        online = bool(error_type) and job.deferrals + 1 >= MAX_PACK_TRIES
        out.ops.append(repack(job, tally, online, error_type, error))
        out.retried += 1


def repack(job: ClaimedJob, tally: Tally, online: bool, error_type: str, error: str) -> Op:
    """The job's line goes into a later pack (or online): settle.lua's batch-mode kind."""
    return Repack(run=Run.of(job), counts=tally.unflushed(), online=online, error_type=error_type, error=error)
