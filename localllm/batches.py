"""The Files and Batch APIs' state and batch runner, in memory and independent of any web framework.

Both the offline server and the test fault server put their own routes over one ``BatchStore`` and
hand it the function that answers one request line, so batches behave the same on both and the
fault server only adds its faults (a ``BatchPlan`` per batch).

A batch moves ``validating`` -> ``in_progress`` -> (``delay`` seconds) -> lines run one after another
-> ``finalizing`` -> ``completed`` (or ``failed`` when the input file does not validate, ``expired``
when the plan cuts it short, ``cancelling`` -> ``cancelled`` when cancelled). Successful lines go to
the output file and requests answered with an error to the error file, in OpenAI's line shapes; lines
that never ran come back in the error file with ``batch_cancelled`` or ``batch_expired``.

Everything lives in this process's memory until it exits (or ``reset()``): files, batches and their
results. Uploads are capped per file and in total (``max_file_bytes``, ``max_total_bytes``), which is
what bounds it; nothing is evicted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from contract.openai_shapes import (
    BATCH_CANCELLED,
    BATCH_COMPLETION_WINDOW,
    BATCH_EXPIRED,
    BATCH_OUTPUT_PURPOSE,
    BATCH_PURPOSE,
    BATCH_STATUS_TIMESTAMPS,
    CHAT_COMPLETIONS_URL,
    TERMINAL_BATCH_STATUSES,
    TOKEN_LIMIT_EXCEEDED,
    BatchInputError,
    BatchRequest,
    BatchView,
    JSONObject,
    batch_error,
    batch_error_line,
    batch_object,
    batch_response_line,
    error_body,
    file_deleted,
    file_object,
    jsonl,
    list_page,
    new_id,
    parse_batch_input,
)
from localllm.errors import ApiError, not_found

#: (request body) -> (HTTP status, response body) for one batch line.
LineRunner = Callable[[JSONObject], Awaitable[tuple[int, Any]]]
#: (request body) -> tokens it holds in the enqueued-token budget (prompt plus completion room).
TokenCounter = Callable[[JSONObject], int]

MAX_FILE_BYTES = 200 * 1024 * 1024  # OpenAI's limit for a batch input file
MAX_TOTAL_BYTES = 1024 * 1024 * 1024
MAX_METADATA_PAIRS = 16
DEFAULT_LIST_LIMIT = 20
MAX_LIST_LIMIT = 100
_FILE_PURPOSES = frozenset({BATCH_PURPOSE, "assistants", "fine-tune", "vision", "user_data", "evals"})


@dataclass(slots=True)
class StoredFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def public(self) -> JSONObject:
        return file_object(
            self.id, filename=self.filename, purpose=self.purpose, size=len(self.data), created_at=self.created_at
        )


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """How a batch runs: the processing delay and, for fault injection, how it goes wrong."""

    delay: float = 0.0
    fail_validation: bool = False
    expire_fraction: float | None = None  # share of the lines run before the batch expires; None = never


@dataclass(slots=True)
class Batch:
    view: BatchView
    requests: list[BatchRequest]
    input_errors: list[JSONObject]
    plan: BatchPlan
    tokens: int  # held in the enqueued-token budget until the batch ends
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    outputs: list[JSONObject] = field(default_factory=list)
    errors: list[JSONObject] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    @property
    def id(self) -> str:
        return self.view.id

    @property
    def status(self) -> str:
        return self.view.status

    def custom_ids(self) -> list[str]:
        return [r.custom_id for r in self.requests]

    def public(self) -> JSONObject:
        return batch_object(self.view)


class BatchStore:
    def __init__(
        self,
        run_line: LineRunner,
        count_tokens: TokenCounter,
        *,
        enqueued_token_limit: int = 0,
        max_file_bytes: int = MAX_FILE_BYTES,
        max_total_bytes: int = MAX_TOTAL_BYTES,
    ) -> None:
        self.run_line = run_line
        self.count_tokens = count_tokens
        self.enqueued_token_limit = enqueued_token_limit  # 0 = unlimited
        self.max_file_bytes = max_file_bytes
        self.max_total_bytes = max_total_bytes
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, Batch] = {}  # in creation order

    # ------------------------------------------------------------------ files

    def add_file(self, filename: str, purpose: str, data: bytes) -> StoredFile:
        if purpose not in _FILE_PURPOSES:
            raise ApiError(400, f"Invalid purpose {purpose!r}.", param="purpose")
        if len(data) > self.max_file_bytes:
            raise ApiError(413, f"File is larger than {self.max_file_bytes} bytes.", param="file")
        if sum(len(f.data) for f in self.files.values()) + len(data) > self.max_total_bytes:
            raise ApiError(400, "This server's file storage is full; delete files first.", param="file")
        return self._store(filename, purpose, data)

    def _store(self, filename: str, purpose: str, data: bytes) -> StoredFile:
        stored = StoredFile(new_id("file-"), filename, purpose, data, int(time.time()))
        self.files[stored.id] = stored
        return stored

    def file(self, file_id: str) -> StoredFile:
        stored = self.files.get(file_id)
        if stored is None:
            raise not_found("file", file_id)
        return stored

    def delete_file(self, file_id: str) -> JSONObject:
        self.file(file_id)
        del self.files[file_id]
        return file_deleted(file_id)

    # ------------------------------------------------------------------ batches

    def enqueued_tokens(self) -> int:
        return sum(b.tokens for b in self.batches.values() if b.status not in TERMINAL_BATCH_STATUSES)

    def create_batch(self, payload: Any, plan: BatchPlan) -> Batch:
        """Validate the create request, register the batch and start running it in the background."""
        if not isinstance(payload, dict):
            raise ApiError(400, "Request body must be a JSON object.")
        source = self._input_file(payload.get("input_file_id"))
        endpoint = payload.get("endpoint")
        if endpoint != CHAT_COMPLETIONS_URL:
            raise ApiError(400, f"Unsupported endpoint {endpoint!r}; use {CHAT_COMPLETIONS_URL}.", param="endpoint")
        window = payload.get("completion_window")
        if window != BATCH_COMPLETION_WINDOW:
            raise ApiError(400, f"completion_window must be {BATCH_COMPLETION_WINDOW!r}.", param="completion_window")
        metadata = _metadata(payload.get("metadata"))
        try:
            requests, input_errors = parse_batch_input(source.data, url=endpoint), []
        except BatchInputError as exc:
            requests, input_errors = [], exc.errors
        tokens = sum(self.count_tokens(r.body) for r in requests)
        limit = self.enqueued_token_limit
        if limit and self.enqueued_tokens() + tokens > limit:
            raise ApiError(
                429,
                f"Enqueued token limit reached: {self.enqueued_tokens()} tokens are enqueued and this batch holds "
                f"{tokens}; the limit is {limit}. Try again once some batches have completed.",
                "tokens",
                TOKEN_LIMIT_EXCEEDED,
            )
        view = BatchView(
            id=new_id("batch_"),
            input_file_id=source.id,
            created_at=int(time.time()),
            metadata=metadata,
            timestamps={},
            counts=(len(requests), 0, 0),
            model=_model_of(requests),
        )
        batch = Batch(view, requests, input_errors, plan, tokens)
        self.batches[batch.id] = batch
        batch.task = asyncio.get_running_loop().create_task(self._run(batch))
        return batch

    def _input_file(self, file_id: Any) -> StoredFile:
        if not isinstance(file_id, str) or not file_id:
            raise ApiError(400, "input_file_id is required.", param="input_file_id")
        source = self.file(file_id)
        if source.purpose != BATCH_PURPOSE:
            raise ApiError(400, f"File {file_id!r} was not uploaded with purpose 'batch'.", param="input_file_id")
        return source

    def batch(self, batch_id: str) -> Batch:
        found = self.batches.get(batch_id)
        if found is None:
            raise not_found("batch", batch_id)
        return found

    def list_batches(self, limit: str | int | None = None, after: str | None = None) -> JSONObject:
        """Newest first; ``after`` is the last id of the previous page; ``limit`` as the query string has it."""
        size = DEFAULT_LIST_LIMIT if limit in (None, "") else limit
        if isinstance(size, str):
            size = int(size) if size.isdigit() else 0
        if not isinstance(size, int) or not 1 <= size <= MAX_LIST_LIMIT:
            raise ApiError(400, f"limit must be an integer from 1 to {MAX_LIST_LIMIT}.", param="limit")
        newest_first = list(reversed(self.batches.values()))
        start = 0
        if after:
            ids = [b.id for b in newest_first]
            if after not in ids:
                raise not_found("batch", after)
            start = ids.index(after) + 1
        page = newest_first[start : start + size]
        return list_page([b.public() for b in page], has_more=start + size < len(newest_first))

    def cancel_batch(self, batch_id: str) -> Batch:
        batch = self.batch(batch_id)
        if batch.status in TERMINAL_BATCH_STATUSES:
            raise ApiError(400, f"Cannot cancel a batch with status {batch.status!r}.")
        if batch.status != "cancelling":
            batch.cancel.set()
            _move(batch, "cancelling")
        return batch

    async def reset(self) -> None:
        """Forget every file and batch, stopping the batches still running."""
        await self.close()
        self.files.clear()
        self.batches.clear()

    async def close(self) -> None:
        tasks = [b.task for b in self.batches.values() if b.task is not None and not b.task.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ------------------------------------------------------------------ runner

    async def _run(self, batch: Batch) -> None:
        await asyncio.sleep(0)  # the create call answers "validating" before anything moves
        if batch.input_errors or batch.plan.fail_validation:
            batch.view.errors = batch.input_errors or [
                batch_error("invalid_request", "The batch input file failed validation.", line=1)
            ]
            batch.tokens = 0
            _move(batch, "failed")
            return
        if not batch.cancel.is_set():
            _move(batch, "in_progress")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(batch.cancel.wait(), timeout=batch.plan.delay)
            await self._run_lines(batch)
        if not batch.cancel.is_set():
            _move(batch, "finalizing")
            await asyncio.sleep(0)
        self._finish(batch)

    async def _run_lines(self, batch: Batch) -> None:
        fraction = batch.plan.expire_fraction
        expire_after = None if fraction is None else int(len(batch.requests) * fraction)
        for index, request in enumerate(batch.requests):
            if batch.cancel.is_set() or (expire_after is not None and index >= expire_after):
                return
            status, body = await self._answer(request.body)
            line = batch_response_line(request.custom_id, status, body)
            (batch.outputs if 200 <= status < 300 else batch.errors).append(line)
            _count(batch, status, body)

    async def _answer(self, body: JSONObject) -> tuple[int, Any]:
        try:
            return await self.run_line(body)
        except ApiError as exc:
            return exc.status, exc.body()
        except Exception as exc:  # one broken line must not leave its batch in_progress forever
            return 500, error_body(f"Internal error: {type(exc).__name__}", "server_error")

    def _finish(self, batch: Batch) -> None:
        done = len(batch.outputs) + len(batch.errors)
        unrun = batch.requests[done:]
        if unrun:
            cancelled = batch.cancel.is_set()
            code = BATCH_CANCELLED if cancelled else BATCH_EXPIRED
            message = (
                "The batch was cancelled before this request ran."
                if cancelled
                else ("The batch expired before this request could be completed.")
            )
            batch.errors.extend(batch_error_line(r.custom_id, code, message) for r in unrun)
            total, completed, failed = batch.view.counts
            batch.view.counts = (total, completed, failed + len(unrun))
        if batch.outputs:
            batch.view.output_file_id = self._result_file(batch, "output", batch.outputs)
        if batch.errors:
            batch.view.error_file_id = self._result_file(batch, "error", batch.errors)
        batch.tokens = 0
        final = "cancelled" if batch.cancel.is_set() else "expired" if unrun else "completed"
        _move(batch, final)

    def _result_file(self, batch: Batch, kind: str, lines: list[JSONObject]) -> str:
        return self._store(f"{batch.id}_{kind}.jsonl", BATCH_OUTPUT_PURPOSE, jsonl(lines)).id


def _move(batch: Batch, status: str) -> None:
    batch.view.status = status
    stamps = batch.view.timestamps if batch.view.timestamps is not None else {}
    stamps[BATCH_STATUS_TIMESTAMPS[status]] = int(time.time())
    batch.view.timestamps = stamps


def _count(batch: Batch, status: int, body: Any) -> None:
    total, completed, failed = batch.view.counts
    ok = 200 <= status < 300
    batch.view.counts = (total, completed + ok, failed + (not ok))
    usage = body.get("usage") if ok and isinstance(body, dict) else None
    if isinstance(usage, dict):
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int) and isinstance(completion, int):
            batch.view.tokens = (batch.view.tokens[0] + prompt, batch.view.tokens[1] + completion)


def _metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    pairs = value.items() if isinstance(value, dict) else ()
    valid = all(isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512 for k, v in pairs)
    if not isinstance(value, dict) or len(value) > MAX_METADATA_PAIRS or not valid:
        raise ApiError(
            400, "metadata must be an object of at most 16 string keys (64 chars) and values (512).", param="metadata"
        )
    return dict(value)


def _model_of(requests: list[BatchRequest]) -> str | None:
    model = requests[0].body.get("model") if requests else None
    return model if isinstance(model, str) else None
