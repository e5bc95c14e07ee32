"""Request reading and JSON answers shared by the offline server's routes (Starlette)."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from contract.openai_shapes import JSONObject
from localllm.errors import ApiError

MAX_BODY_BYTES = 8 * 1024 * 1024


def json_response(body: JSONObject, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def error_response(exc: ApiError) -> JSONResponse:
    return json_response(exc.body(), exc.status, exc.headers)


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The whole body, refusing more than ``limit`` bytes before reading them when the length is declared."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise ApiError(400, "Invalid Content-Length header.") from None
        if length > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int = MAX_BODY_BYTES) -> Any:
    raw = await read_body(request, limit)
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ApiError(400, "Request body is not valid JSON.") from None


def _too_large(limit: int) -> ApiError:
    # The unread body would be parsed as the next request on a kept-alive connection: close it.
    return ApiError(413, f"Request body exceeds {limit} bytes.", headers={"Connection": "close"})
