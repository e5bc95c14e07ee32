"""What every fault-server route shares: the state's app key, the provider's front door, JSON in and out."""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from localllm.errors import ApiError
from tests.faultserver.completion import error
from tests.faultserver.state import FaultState

STATE_KEY = web.AppKey("state", FaultState)


def state_of(request: web.Request) -> FaultState:
    return request.app[STATE_KEY]


def check_key(state: FaultState, request: web.Request) -> None:
    expected = state.config.api_key
    if expected is not None and request.headers.get("authorization") != f"Bearer {expected}":
        raise error(401, "Incorrect API key provided.")


def gate(state: FaultState, request: web.Request) -> None:
    """The provider's front door: API key, then outage. Answered at once, with no latency."""
    check_key(state, request)
    if time.monotonic() < state.outage_until:
        raise error(state.outage_status, "faultserver: simulated outage")


def json_error(exc: ApiError) -> web.Response:
    return web.json_response(exc.body(), status=exc.status, headers=exc.headers)


async def read_json(request: web.Request, default: bytes = b"") -> Any:
    try:
        return json.loads(await request.read() or default)
    except ValueError:
        raise error(400, "faultserver: request body is not valid JSON") from None
