"""The fault server's Files and Batch APIs: the shared in-memory store, with batch-level faults on top.

Batch lines are answered by the same path as online requests, so article directives apply to them
too and share the per-article counters (``[[fault:500x1]]`` fails the first run in any batch, online or
not, and succeeds later). Batch-level faults come from the config, each ``*_next`` counter used up by
one create: ``batch_create_429_next`` (create answers 429 ``token_limit_exceeded``),
``batch_fail_next`` (the batch fails validation), ``batch_expire_next`` (it expires after half its
lines; the rest come back as ``batch_expired``), ``batch_create_502_next`` (the batch is made, then the
create answers 502, as a gateway losing the answer). ``batch_api_status`` answers every Files and Batch
route with that status (404: a server without a Batch API; 500: a gateway without credentials for it).
``batch_delay`` is the processing delay and
``batch_create_response_delay`` holds the create's answer after the batch exists.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from contract.openai_shapes import TOKEN_LIMIT_EXCEEDED, JSONObject
from localllm.batches import MAX_FILE_BYTES, Batch, BatchPlan, BatchStore
from localllm.errors import ApiError
from tests.faultserver.completion import batch_answer, parse_chat
from tests.faultserver.gateway import STATE_KEY, gate, read_json
from tests.faultserver.state import FaultState

MAX_UPLOAD_BYTES = MAX_FILE_BYTES + 64 * 1024  # the file plus multipart framing
EXPIRE_FRACTION = 0.5
STORE_KEY = web.AppKey("batch_store", BatchStore)


def install(app: web.Application, state: FaultState) -> None:
    async def run_line(body: JSONObject) -> tuple[int, Any]:
        try:
            status, answer = batch_answer(state, body)
        except ApiError as exc:
            status, answer = exc.status, exc.body()
        key = str(status)
        state.batch_line_statuses[key] = state.batch_line_statuses.get(key, 0) + 1
        return status, answer

    app[STORE_KEY] = BatchStore(run_line, _request_tokens)
    app.on_cleanup.append(_close)
    app.router.add_post("/v1/files", create_file)
    app.router.add_get("/v1/files/{file_id}", get_file)
    app.router.add_delete("/v1/files/{file_id}", delete_file)
    app.router.add_get("/v1/files/{file_id}/content", file_content)
    app.router.add_post("/v1/batches", create_batch)
    app.router.add_get("/v1/batches", list_batches)
    app.router.add_get("/v1/batches/{batch_id}", get_batch)
    app.router.add_post("/v1/batches/{batch_id}/cancel", cancel_batch)


def _request_tokens(body: JSONObject) -> int:
    try:
        return parse_chat(body).request_tokens
    except ApiError:
        return 0  # a malformed line holds nothing: it fails at once


async def _close(app: web.Application) -> None:
    await app[STORE_KEY].close()


async def reset(app: web.Application) -> None:
    await app[STORE_KEY].reset()


def stats(app: web.Application) -> JSONObject:
    store = app[STORE_KEY]
    return {
        "batches": [_batch_stats(b) for b in store.batches.values()],
        "files": len(store.files),
        "enqueued_tokens": store.enqueued_tokens(),
    }


def _batch_stats(batch: Batch) -> JSONObject:
    public = batch.public()
    keys = (
        "id",
        "status",
        "metadata",
        "request_counts",
        "created_at",
        "input_file_id",
        "output_file_id",
        "error_file_id",
    )
    return {**{k: public[k] for k in keys}, "custom_ids": batch.custom_ids()}


def _open(request: web.Request) -> tuple[FaultState, BatchStore]:
    state = request.app[STATE_KEY]
    gate(state, request)
    if state.config.batch_api_status:
        status = state.config.batch_api_status
        raise ApiError(status, "faultserver: Missing credentials" if status == 500 else "Not Found")
    return state, request.app[STORE_KEY]


async def create_file(request: web.Request) -> web.StreamResponse:
    _, store = _open(request)
    form = await request.post()
    upload, purpose = form.get("file"), form.get("purpose")
    if not isinstance(upload, web.FileField) or not isinstance(purpose, str):
        raise ApiError(400, "Both 'file' (a file) and 'purpose' fields are required.", param="file")
    stored = store.add_file(upload.filename or "upload", purpose, upload.file.read())
    return web.json_response(stored.public())


async def get_file(request: web.Request) -> web.StreamResponse:
    _, store = _open(request)
    return web.json_response(store.file(request.match_info["file_id"]).public())


async def delete_file(request: web.Request) -> web.StreamResponse:
    _, store = _open(request)
    return web.json_response(store.delete_file(request.match_info["file_id"]))


async def file_content(request: web.Request) -> web.StreamResponse:
    _, store = _open(request)
    return web.Response(body=store.file(request.match_info["file_id"]).data, content_type="application/octet-stream")


async def create_batch(request: web.Request) -> web.StreamResponse:
    state, store = _open(request)
    payload = await read_json(request)
    cfg = state.config
    if cfg.batch_create_429_next:
        state.config = cfg.updated({"batch_create_429_next": cfg.batch_create_429_next - 1})
        state.batch_creates_refused += 1
        raise ApiError(429, "faultserver: injected enqueued token limit", "tokens", TOKEN_LIMIT_EXCEEDED)
    store.enqueued_token_limit = cfg.enqueued_token_limit
    plan = BatchPlan(
        delay=cfg.batch_delay,
        fail_validation=cfg.batch_fail_next > 0,
        expire_fraction=EXPIRE_FRACTION if cfg.batch_expire_next > 0 else None,
    )
    try:
        batch = store.create_batch(payload, plan)
    except ApiError as exc:
        state.batch_creates_refused += exc.status == 429
        raise
    # Used up only by a batch that exists: a refused create must not eat the next batch's fault.
    state.config = cfg.updated(
        {
            "batch_fail_next": max(cfg.batch_fail_next - 1, 0),
            "batch_expire_next": max(cfg.batch_expire_next - 1, 0),
        }
    )
    created = batch.public()
    if cfg.batch_create_502_next:
        state.config = state.config.updated({"batch_create_502_next": cfg.batch_create_502_next - 1})
        raise ApiError(502, "faultserver: bad gateway after the batch was made")
    if cfg.batch_create_response_delay > 0:
        # The batch exists and runs; only the answer is late, as when a client dies before recording it.
        await asyncio.sleep(cfg.batch_create_response_delay)
    return web.json_response(created)


async def get_batch(request: web.Request) -> web.StreamResponse:
    _, store = _open(request)
    return web.json_response(store.batch(request.match_info["batch_id"]).public())


async def list_batches(request: web.Request) -> web.StreamResponse:
    _, store = _open(request)
    return web.json_response(store.list_batches(request.query.get("limit"), request.query.get("after")))


async def cancel_batch(request: web.Request) -> web.StreamResponse:
    _, store = _open(request)
    return web.json_response(store.cancel_batch(request.match_info["batch_id"]).public())
