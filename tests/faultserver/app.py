"""The fault server's aiohttp application: chat completions with faults, models, health and /admin.

aiohttp because a dropped connection needs the request's transport, which aiohttp exposes publicly
(``request.transport``) and ASGI servers do not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import struct
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from contract.openai_shapes import JSONObject, error_body, model_list, model_object
from localllm.errors import ApiError
from tests.faultserver import batches
from tests.faultserver.completion import (
    OK,
    ChatRequest,
    Outcome,
    answer,
    check_request,
    choose_fault,
    error,
    parse_chat,
)
from tests.faultserver.directives import MODEL_ID, article_key
from tests.faultserver.gateway import STATE_KEY, check_key, gate, json_error, read_json, state_of
from tests.faultserver.state import FaultState, ServerConfig, completion_latency

DEFAULT_HANG_S = 30.0
#: seconds between the bytes of a trickled answer
DEFAULT_TRICKLE_S = 1.0
# How often a hung request looks whether its client has gone.
_HANG_POLL_S = 0.05

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(config: ServerConfig | None = None) -> web.Application:
    state = FaultState(initial=config or ServerConfig())
    app = web.Application(middlewares=[_errors_as_json], client_max_size=batches.MAX_UPLOAD_BYTES)
    app[STATE_KEY] = state
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/health", health)
    app.router.add_get("/admin/stats", get_stats)
    app.router.add_get("/admin/config", config_endpoint)
    app.router.add_post("/admin/config", config_endpoint)
    app.router.add_post("/admin/outage", outage)
    app.router.add_post("/admin/reset", reset)
    batches.install(app, state)
    return app


@web.middleware
async def _errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every refusal in OpenAI's error shape, including aiohttp's own 404/405/413."""
    try:
        return await handler(request)
    except ApiError as exc:
        return json_error(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response(error_body(f"faultserver: {exc.reason}"), status=exc.status)


# --------------------------------------------------------------------------- chat completions


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    state.requests += 1
    state.flight(+1)
    try:
        response, label = await _complete(state, request)
    finally:
        state.flight(-1)
    if label != "reset" and _client_gone(request):
        # Work the client never saw (it timed out) must not count as a success.
        label = "disconnected"
    elif label == OK:
        label = 200
        state.ok += 1
        state.ok_times.append(time.time())
    state.record(label)
    return response


async def _complete(state: FaultState, request: web.Request) -> tuple[web.StreamResponse, int | str]:
    """The response and the status to record; ``OK`` marks a normal, fault-free answer."""
    try:
        gate(state, request)
        chat = await _admitted_request(state, request)
        fault = choose_fault(state, chat)
    except ApiError as exc:
        return json_error(exc), exc.status
    key = article_key(chat.article)
    latency = completion_latency(state.config, key, state.by_article.get(key, 0))
    if fault is not None and fault.kind == "hang":
        hang = float(fault.param) if fault.param is not None else DEFAULT_HANG_S
        await _sleep_until_disconnect(request, latency + hang)
    elif latency > 0:
        await asyncio.sleep(latency)
    if fault is not None and fault.kind == "reset":
        _drop_connection(request)
        return web.Response(status=599), "reset"  # never sent: the connection is gone
    outcome = answer(state, chat, fault)
    if fault is not None and fault.kind == "trickle":
        return await _trickle(request, outcome, float(fault.param or DEFAULT_TRICKLE_S)), outcome.label
    return _response(outcome), outcome.label


async def _trickle(request: web.Request, outcome: Outcome, every: float) -> web.StreamResponse:
    """The answer, one byte every `every` seconds: a client timing out per read never times out."""
    body = outcome.body if isinstance(outcome.body, bytes) else json.dumps(outcome.body).encode()
    response = web.StreamResponse(status=outcome.status, headers={"Content-Type": "application/json"})
    response.content_length = len(body)
    await response.prepare(request)
    for i in range(len(body)):
        if _client_gone(request):
            break
        await response.write(body[i : i + 1])
        await asyncio.sleep(every)
    return response


async def _admitted_request(state: FaultState, request: web.Request) -> ChatRequest:
    chat = parse_chat(await read_json(request))
    check_request(state, chat)
    refused = state.admit(time.monotonic(), chat.request_tokens)
    if refused is not None:
        limit, wait = refused
        # Whole seconds, rounded up, so any client's Retry-After parser copes and a retry at that moment
        # is guaranteed room.
        retry_after = str(max(1, math.ceil(wait)))
        what = "requests" if limit == "rpm" else "tokens"
        raise error(429, f"Rate limit reached for {what} per min ({limit})", {"Retry-After": retry_after})
    return chat


def _response(outcome: Outcome) -> web.Response:
    if isinstance(outcome.body, bytes):
        return web.Response(body=outcome.body, status=outcome.status, content_type="application/json")
    return web.json_response(outcome.body, status=outcome.status, headers=outcome.headers)


def _drop_connection(request: web.Request) -> None:
    """Close the TCP connection with RST instead of answering: what a crashed upstream looks like."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Linger 0 turns the close into an RST.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _sleep_until_disconnect(request: web.Request, seconds: float) -> None:
    """Sleep, but end early once the client hangs up.

    A hung request whose client already timed out would otherwise stay "in flight" for the whole hang
    and record its outcome long after the test that caused it (into someone else's stats).
    """
    deadline = time.monotonic() + seconds
    while not _client_gone(request):
        left = deadline - time.monotonic()
        if left <= 0:
            return
        await asyncio.sleep(min(_HANG_POLL_S, left))


# --------------------------------------------------------------------------- models, health, admin


async def list_models(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    check_key(state, request)
    cfg = state.config
    model = model_object(MODEL_ID, owned_by="faultserver", context_window=cfg.context_tokens or None)
    return web.json_response(model_list([model]))


async def health(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


async def get_stats(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    return web.json_response({**state.stats(), **batches.stats(request.app)})


async def _json_object(request: web.Request) -> JSONObject:
    body = await read_json(request, b"{}")
    if not isinstance(body, dict):
        raise error(400, "faultserver: admin body must be a JSON object")
    return body


async def config_endpoint(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    if request.method == "POST":
        try:
            state.config = state.config.updated(await _json_object(request))
        except (ValueError, TypeError) as exc:
            raise error(400, str(exc)) from None
    return web.json_response(state.config.public())


async def outage(request: web.Request) -> web.StreamResponse:
    body = await _json_object(request)
    try:
        seconds = float(body.get("seconds", 0))
        status = int(body.get("status", 503))
        if not 400 <= status <= 599 or not math.isfinite(seconds):
            raise ValueError("status must be 400..599 and seconds finite")
    except (ValueError, TypeError) as exc:
        raise error(400, str(exc)) from None
    state = state_of(request)
    state.outage_until = time.monotonic() + seconds if seconds > 0 else 0.0
    state.outage_status = status
    return web.json_response({"seconds": max(seconds, 0.0), "status": status})


async def reset(request: web.Request) -> web.StreamResponse:
    state_of(request).reset()
    await batches.reset(request.app)
    return web.json_response({"reset": True})
