"""The Files API (/v1/files) and the Batch API (/v1/batches) over the in-memory ``BatchStore``."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from contract.openai_shapes import message_texts, requested_max_tokens
from localllm.batches import MAX_FILE_BYTES, BatchPlan, BatchStore
from localllm.chat import complete
from localllm.errors import ApiError
from localllm.extractive import count_tokens
from localllm.multipart import parse_form_data
from localllm.web import json_response, read_body, read_json

# Multipart framing around the file: boundaries, part headers, the purpose field.
_FORM_OVERHEAD = 64 * 1024


def make_store(context_tokens: int) -> BatchStore:
    """A store whose batch lines are answered exactly like POST /v1/chat/completions."""

    async def run_line(body: dict[str, Any]) -> tuple[int, Any]:
        return 200, await run_in_threadpool(complete, body, context_tokens)

    def tokens(body: dict[str, Any]) -> int:
        room = requested_max_tokens(body)
        return count_tokens("\n".join(message_texts(body.get("messages")))) + (room if isinstance(room, int) else 0)

    return BatchStore(run_line, tokens)


def _store(request: Request) -> BatchStore:
    store: BatchStore = request.app.state.store
    return store


async def create_file(request: Request) -> Response:
    raw = await read_body(request, MAX_FILE_BYTES + _FORM_OVERHEAD)
    try:
        fields = parse_form_data(request.headers.get("content-type", ""), raw)
    except ValueError as exc:
        raise ApiError(400, f"Upload a file as multipart/form-data: {exc}.") from None
    upload, purpose = fields.get("file"), fields.get("purpose")
    if upload is None or purpose is None:
        raise ApiError(400, "Both 'file' and 'purpose' fields are required.", param="file")
    purpose_text = purpose.data.decode("utf-8", "replace")
    stored = _store(request).add_file(upload.filename or "upload", purpose_text, upload.data)
    return json_response(stored.public())


async def get_file(request: Request) -> Response:
    return json_response(_store(request).file(request.path_params["file_id"]).public())


async def file_content(request: Request) -> Response:
    stored = _store(request).file(request.path_params["file_id"])
    return Response(stored.data, media_type="application/octet-stream")


async def delete_file(request: Request) -> Response:
    return json_response(_store(request).delete_file(request.path_params["file_id"]))


async def create_batch(request: Request) -> Response:
    plan = BatchPlan(delay=request.app.state.batch_delay)
    return json_response(_store(request).create_batch(await read_json(request), plan).public())


async def get_batch(request: Request) -> Response:
    return json_response(_store(request).batch(request.path_params["batch_id"]).public())


async def list_batches(request: Request) -> Response:
    query = request.query_params
    return json_response(_store(request).list_batches(query.get("limit"), query.get("after")))


async def cancel_batch(request: Request) -> Response:
    return json_response(_store(request).cancel_batch(request.path_params["batch_id"]).public())


ROUTES = [
    Route("/v1/files", create_file, methods=["POST"]),
    Route("/v1/files/{file_id}", get_file, methods=["GET"]),
    Route("/v1/files/{file_id}", delete_file, methods=["DELETE"]),
    Route("/v1/files/{file_id}/content", file_content, methods=["GET"]),
    Route("/v1/batches", create_batch, methods=["POST"]),
    Route("/v1/batches", list_batches, methods=["GET"]),
    Route("/v1/batches/{batch_id}", get_batch, methods=["GET"]),
    Route("/v1/batches/{batch_id}/cancel", cancel_batch, methods=["POST"]),
]
