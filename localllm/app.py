"""The offline server's Starlette application: routes, bearer auth, OpenAI-shaped errors, a log line per request."""

from __future__ import annotations

import contextlib
import hmac
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.openai_shapes import error_body, model_list, model_object
from localllm import batch_routes
from localllm.chat import DEFAULT_CONTEXT_TOKENS, chat_completions
from localllm.errors import ApiError
from localllm.extractive import MODEL_NAME
from localllm.web import error_response, json_response

DEFAULT_BATCH_DELAY = 2.0
_UNAUTHENTICATED = frozenset({"/health"})


def create_app(
    api_key: str | None = None,
    *,
    context_tokens: int = DEFAULT_CONTEXT_TOKENS,
    batch_delay: float = DEFAULT_BATCH_DELAY,
    quiet: bool = False,
) -> ASGIApp:
    """The whole server as an ASGI app; ``api_key=None`` disables auth."""
    store = batch_routes.make_store(context_tokens)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await store.close()  # running batches would otherwise be destroyed mid-line with the loop

    routes: list[BaseRoute] = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", get_model, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        *batch_routes.ROUTES,
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _internal_error},
        lifespan=lifespan,
    )
    app.state.context_tokens = context_tokens
    app.state.batch_delay = batch_delay
    app.state.store = store
    app.state.created = int(time.time())
    return _Gate(app, api_key or None, quiet)


async def health(request: Request) -> Response:
    return json_response({"status": "ok"})


def _model(request: Request) -> dict[str, Any]:
    state = request.app.state
    return model_object(MODEL_NAME, owned_by="local", created=state.created, context_window=state.context_tokens)


async def list_models(request: Request) -> Response:
    return json_response(model_list([_model(request)]))


async def get_model(request: Request) -> Response:
    model_id = request.path_params["model_id"]
    if model_id != MODEL_NAME:
        raise ApiError(404, f"The model {model_id!r} does not exist.", code="model_not_found")
    return json_response(_model(request))


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return json_response(error_body(f"Unknown path {request.url.path!r}.", code="unknown_url"), 404)
    return json_response(error_body(f"{exc.detail} ({request.method} {request.url.path})."), exc.status_code)


async def _internal_error(request: Request, exc: Exception) -> Response:
    # The client always gets JSON; the traceback still reaches the server log.
    return json_response(error_body(f"Internal error: {type(exc).__name__}", "server_error"), 500)


class _Gate:
    """Bearer auth for everything but /health, and one log line per request: method, path, status, time.

    Only the path is logged: headers, query strings and bodies may carry keys or article text.
    """

    def __init__(self, app: ASGIApp, api_key: str | None, quiet: bool) -> None:
        self.app = app
        self.api_key = api_key.encode("utf-8") if api_key else None
        self.quiet = quiet

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            if self._authorized(scope):
                await self.app(scope, receive, send_and_note)
            else:
                denied = ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
                await error_response(denied)(scope, receive, send_and_note)
        finally:
            if not self.quiet:
                elapsed_ms = (time.perf_counter() - started) * 1000
                print(f"llm-serve: {scope['method']} {scope['path']} {status} {elapsed_ms:.1f}ms", file=sys.stderr)

    def _authorized(self, scope: Scope) -> bool:
        if self.api_key is None or scope["path"] in _UNAUTHENTICATED:
            return True
        header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        scheme, _, token = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key)
