"""Fault-injecting OpenAI-compatible chat-completions server for tests and benchmarks.

Faults are requested by markers inside the article text (``[[fault:500x2]]``) rather than by
server-wide switches, so tests running in parallel against one server never see each other's
faults. Per-article request counts decide which requests are faulted: the first N requests for an
article get the fault, later ones succeed. Several directives in one article apply in the order
written, each consuming the next N request slots (``[[fault:429x1]][[fault:500x1]]`` = 429, then
500, then success). A directive without ``xN`` applies to every request. Markers that are not
``fault:`` markers (e.g. ``[[id:42]]``) are ignored, which lets callers make articles unique.

Accounting rules worth knowing when reading ``/admin/stats``: requests rejected at the "gateway"
(wrong API key, outage, rpm overshoot) are answered at once, without ``latency`` (which models
generation time), and do not advance per-article fault counters. ``ok`` counts only normal
answers actually delivered; injected 200s (garbage/empty/blank/length) are only in
``statuses["200"]``, a dropped connection is ``statuses["reset"]``, and an answer whose client
had already gone (e.g. timed out during a hang) is ``statuses["disconnected"]``.

Run standalone with ``python -m tests.faultserver --port 8000``; tests and benchmarks use
:class:`FaultServer`, which starts it in a subprocess.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = [
    "MODEL_ID",
    "FaultServer",
    "FaultState",
    "ServerConfig",
    "article_key",
    "create_app",
    "expected_summary",
    "extract_article",
    "main",
]

MODEL_ID = "fake-model"
SUMMARY_WORDS = 12
LENGTH_FAULT_WORDS = 3
RPM_WINDOW_S = 60.0
DEFAULT_HANG_S = 30.0
DEFAULT_RETRY_AFTER = "1"
API_KEY_ENV = "FAULTSERVER_API_KEY"

_MARKER_RE = re.compile(r"\[\[.*?\]\]", re.DOTALL)
_FAULT_MARKER_RE = re.compile(r"\[\[fault:(.*?)\]\]", re.DOTALL)
_DIRECTIVE_RE = re.compile(
    r"(?P<kind>429|500|502|503|400|401|404|hang|reset|garbage|empty|blank|length)"
    r"(?:x(?P<count>\d+))?(?::(?P<param>[0-9]+(?:\.[0-9]+)?))?"
)
_PARAM_KINDS = frozenset({"429", "hang"})
_OPEN_TAG = "<article>"
_CLOSE_TAG = "</article>"

# Key under which the outer wrapper stashes uvicorn's own `send` in the scope: starlette wraps
# `send` in its middleware, and only the original bound method leads back to the connection.
_RAW_SEND_KEY = "faultserver.raw_send"
# Status label for a normal answer, so injected-but-200 bodies (garbage, empty, ...) are not "ok".
_OK = "ok"


# --------------------------------------------------------------------------- article helpers


def extract_article(content: str) -> str:
    """The article inside ``<article>``…``</article>`` (stripped), else the whole content."""
    start = content.find(_OPEN_TAG)
    end = content.rfind(_CLOSE_TAG)
    if start == -1 or end == -1 or end < start + len(_OPEN_TAG):
        return content
    return content[start + len(_OPEN_TAG) : end].strip()


def article_key(article: str) -> str:
    """Key of the per-article request counter (markers are part of the hashed text)."""
    return hashlib.sha256(article.encode("utf-8")).hexdigest()


def expected_summary(article: str) -> str:
    """The completion the server returns for ``article`` when no fault applies."""
    words = _MARKER_RE.sub(" ", article).split()
    return "Summary: " + " ".join(words[:SUMMARY_WORDS])


@dataclass(frozen=True, slots=True)
class _Directive:
    kind: str
    count: int | None  # None = every request
    param: str | None


class _BadDirective(ValueError):
    pass


def _parse_directives(article: str) -> list[_Directive]:
    directives: list[_Directive] = []
    for body in _FAULT_MARKER_RE.findall(article):
        m = _DIRECTIVE_RE.fullmatch(body)
        # A typo in a directive must not silently turn into a passing "normal" request.
        if m is None:
            raise _BadDirective(f"faultserver: malformed fault directive [[fault:{body}]]")
        kind, param = m["kind"], m["param"]
        if param is not None and kind not in _PARAM_KINDS:
            raise _BadDirective(f"faultserver: [[fault:{body}]] takes no ':' parameter")
        directives.append(_Directive(kind, int(m["count"]) if m["count"] else None, param))
    return directives


def _select_fault(directives: list[_Directive], request_number: int) -> _Directive | None:
    remaining = request_number
    for directive in directives:
        if directive.count is None or remaining <= directive.count:
            return directive
        remaining -= directive.count
    return None


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict) and "text" in part)
    return ""


# --------------------------------------------------------------------------- responses

_ERROR_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("rate_limit_exceeded", "rate_limit_exceeded"),
}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    err_type, code = _ERROR_KINDS.get(status, ("server_error" if status >= 500 else "api_error", None))
    body = {"error": {"message": message, "type": err_type, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


class _DropConnection(Response):
    """Closes the TCP connection with RST instead of sending any HTTP response."""

    def __init__(self) -> None:
        super().__init__(status_code=599)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cycle = getattr(scope.get(_RAW_SEND_KEY), "__self__", None)
        transport = getattr(cycle, "transport", None)
        if transport is None or not hasattr(transport, "abort"):
            # Failing loudly (uvicorn answers 500) beats faking a reset the client never sees.
            raise RuntimeError("faultserver: cannot reach the connection transport to reset it")
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Linger 0 turns the close into an RST, which is what a crashed upstream looks like.
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        # connection_lost arrives via call_soon; until uvicorn sees it, returning without a
        # response would make it log an error and try to send a 500.
        for _ in range(20):
            if getattr(cycle, "disconnected", True):
                break
            await asyncio.sleep(0)


def _client_gone(scope: Scope) -> bool:
    cycle = getattr(scope.get(_RAW_SEND_KEY), "__self__", None)
    return bool(getattr(cycle, "disconnected", False))


async def _sleep_until_disconnect(request: Request, seconds: float) -> None:
    """Sleep, but end early once the client hangs up.

    A hung request whose client already timed out would otherwise stay "in flight" for the whole
    hang and record its outcome long after the test that caused it (into someone else's stats).
    Only hangs pay for the watcher task; plain latency is a bare sleep to keep throughput up.
    """

    async def wait_for_disconnect() -> None:
        # With the body consumed, uvicorn's receive() blocks until the connection is lost.
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(wait_for_disconnect())
    try:
        await asyncio.wait({watcher}, timeout=seconds)
    finally:
        watcher.cancel()


class _ExposeRawSend:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[_RAW_SEND_KEY] = send
        await self.app(scope, receive, send)


# --------------------------------------------------------------------------- state


@dataclass(slots=True)
class ServerConfig:
    latency: float = 0.0
    rpm: int = 0
    api_key: str | None = None

    _FIELDS: ClassVar[frozenset[str]] = frozenset({"latency", "rpm", "api_key"})

    def updated(self, changes: dict[str, Any]) -> ServerConfig:
        unknown = set(changes) - self._FIELDS
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        new = replace(self)
        if "latency" in changes:
            latency = float(changes["latency"])
            if not math.isfinite(latency) or latency < 0:
                raise ValueError("latency must be a finite number >= 0")
            new.latency = latency
        if "rpm" in changes:
            rpm = changes["rpm"]
            if isinstance(rpm, bool) or not isinstance(rpm, int | float) or rpm < 0 or rpm != int(rpm):
                raise ValueError("rpm must be an integer >= 0")
            new.rpm = int(rpm)
        if "api_key" in changes:
            key = changes["api_key"]
            if key is not None and not isinstance(key, str):
                raise ValueError("api_key must be a string or null")
            new.api_key = key or None
        return new

    def public(self) -> dict[str, Any]:
        # The key itself is never echoed back: admin responses end up in test logs.
        return {"latency": self.latency, "rpm": self.rpm, "api_key_set": self.api_key is not None}


@dataclass(slots=True)
class FaultState:
    initial: ServerConfig
    config: ServerConfig = field(init=False)
    requests: int = 0
    ok: int = 0
    by_article: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    overshoot_429: int = 0
    ok_times: list[float] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    outage_until: float = 0.0
    outage_status: int = 503
    rpm_window: deque[float] = field(default_factory=deque)
    completion_seq: int = 0

    def __post_init__(self) -> None:
        self.config = replace(self.initial)

    def reset(self) -> None:
        self.config = replace(self.initial)
        self.requests = self.ok = self.overshoot_429 = 0
        self.by_article.clear()
        self.statuses.clear()
        self.ok_times.clear()
        # Requests still being handled will decrement in_flight, so it must survive a reset.
        self.max_in_flight = self.in_flight
        self.outage_until = 0.0
        self.outage_status = 503
        self.rpm_window.clear()

    def record(self, status: int | str) -> None:
        key = str(status)
        self.statuses[key] = self.statuses.get(key, 0) + 1

    def admit_rpm(self, now: float) -> float | None:
        """None if admitted, else seconds until a slot frees up."""
        rpm = self.config.rpm
        if rpm <= 0:
            return None
        window = self.rpm_window
        while window and window[0] <= now - RPM_WINDOW_S:
            window.popleft()
        if len(window) >= rpm:
            # With a lowered rpm several stamps may need to expire before a slot frees.
            return window[len(window) - rpm] + RPM_WINDOW_S - now
        window.append(now)
        return None

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "ok": self.ok,
            "by_article": dict(self.by_article),
            "statuses": dict(self.statuses),
            "overshoot_429": self.overshoot_429,
            "ok_times": list(self.ok_times),
            "max_in_flight": self.max_in_flight,
            "in_flight": self.in_flight,
            "config": self.config.public(),
        }


# --------------------------------------------------------------------------- app


def create_app(config: ServerConfig | None = None) -> ASGIApp:
    state = FaultState(initial=config or ServerConfig())

    async def chat_completions(request: Request) -> Response:
        state.requests += 1
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            response, status = await _complete(request)
        finally:
            state.in_flight -= 1
        if status != "reset" and _client_gone(request.scope):
            # Work the client never saw (it timed out) must not count as a success.
            status = "disconnected"
        elif status == _OK:
            status = 200
            state.ok += 1
            state.ok_times.append(time.time())
        state.record(status)
        return response

    async def _complete(request: Request) -> tuple[Response, int | str]:
        """The response and the status to record; ``_OK`` marks a normal, fault-free answer."""
        cfg = state.config
        if cfg.api_key is not None and request.headers.get("authorization") != f"Bearer {cfg.api_key}":
            return _error(401, "Incorrect API key provided."), 401
        now = time.monotonic()
        if now < state.outage_until:
            return _error(state.outage_status, "faultserver: simulated outage"), state.outage_status
        wait = state.admit_rpm(now)
        if wait is not None:
            state.overshoot_429 += 1
            # Whole seconds, rounded up, so any client's Retry-After parser copes and a retry
            # at that moment is guaranteed a slot.
            retry_after = str(max(1, math.ceil(wait)))
            return _error(429, "Rate limit reached for requests", {"Retry-After": retry_after}), 429

        try:
            payload = json.loads(await request.body())
        except ValueError:
            return _error(400, "faultserver: request body is not valid JSON"), 400
        messages = payload.get("messages") if isinstance(payload, dict) else None
        if not isinstance(messages, list) or not messages:
            return _error(400, "faultserver: 'messages' must be a non-empty list"), 400
        if payload.get("stream"):
            return _error(400, "faultserver: streaming is not supported"), 400
        model = str(payload.get("model", MODEL_ID))
        texts = [_message_text(m.get("content")) if isinstance(m, dict) else "" for m in messages]
        user_texts = [
            t for m, t in zip(messages, texts, strict=True) if isinstance(m, dict) and m.get("role") == "user"
        ]
        article = extract_article(user_texts[-1]) if user_texts else ""

        key = article_key(article)
        number = state.by_article.get(key, 0) + 1
        state.by_article[key] = number
        try:
            fault = _select_fault(_parse_directives(article), number)
        except _BadDirective as exc:
            return _error(400, str(exc)), 400

        if fault is not None and fault.kind == "hang":
            hang = float(fault.param) if fault.param is not None else DEFAULT_HANG_S
            await _sleep_until_disconnect(request, cfg.latency + hang)
        elif cfg.latency > 0:
            await asyncio.sleep(cfg.latency)

        content = expected_summary(article)
        if fault is None or fault.kind == "hang":
            return _completion(model, texts, content, "stop"), _OK
        kind = fault.kind
        if kind == "429":
            retry_after = fault.param or DEFAULT_RETRY_AFTER
            return _error(429, "faultserver: injected 429", {"Retry-After": retry_after}), 429
        if kind in {"400", "401", "404", "500", "502", "503"}:
            return _error(int(kind), f"faultserver: injected {kind}"), int(kind)
        if kind == "reset":
            return _DropConnection(), "reset"
        if kind == "garbage":
            return Response(b"<html>not json", media_type="application/json"), 200
        if kind == "empty":
            return _completion(model, texts, content, "stop", choices=False), 200
        if kind == "blank":
            return _completion(model, texts, "", "stop"), 200
        if kind == "length":
            cut = " ".join(content.split()[:LENGTH_FAULT_WORDS])
            return _completion(model, texts, cut, "length"), 200
        raise AssertionError(f"unhandled fault kind {kind}")  # the directive regex lists every kind

    def _completion(
        model: str, texts: list[str], content: str, finish_reason: str, *, choices: bool = True
    ) -> JSONResponse:
        state.completion_seq += 1
        prompt_tokens = sum(len(t) for t in texts) // 4
        completion_tokens = len(content.split())
        body = {
            "id": f"chatcmpl-fault{state.completion_seq:08x}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ]
            if choices
            else [],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "system_fingerprint": "faultserver",
        }
        return JSONResponse(body)

    async def list_models(request: Request) -> Response:
        cfg = state.config
        if cfg.api_key is not None and request.headers.get("authorization") != f"Bearer {cfg.api_key}":
            return _error(401, "Incorrect API key provided.")
        model = {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "faultserver"}
        return JSONResponse({"object": "list", "data": [model]})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def get_stats(request: Request) -> Response:
        return JSONResponse(state.stats())

    async def config_endpoint(request: Request) -> Response:
        if request.method == "POST":
            try:
                changes = json.loads(await request.body() or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("config must be a JSON object")
                state.config = state.config.updated(changes)
            except (ValueError, TypeError) as exc:
                return _error(400, str(exc))
        return JSONResponse(state.config.public())

    async def outage(request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
            seconds = float(body.get("seconds", 0))
            status = int(body.get("status", 503))
            if not 400 <= status <= 599 or not math.isfinite(seconds):
                raise ValueError("status must be 400..599 and seconds finite")
        except (ValueError, TypeError, AttributeError) as exc:
            return _error(400, str(exc))
        state.outage_until = time.monotonic() + seconds if seconds > 0 else 0.0
        state.outage_status = status
        return JSONResponse({"seconds": max(seconds, 0.0), "status": status})

    async def reset(request: Request) -> Response:
        state.reset()
        return JSONResponse({"reset": True})

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/admin/stats", get_stats, methods=["GET"]),
            Route("/admin/config", config_endpoint, methods=["GET", "POST"]),
            Route("/admin/outage", outage, methods=["POST"]),
            Route("/admin/reset", reset, methods=["POST"]),
        ]
    )
    return _ExposeRawSend(app)


# --------------------------------------------------------------------------- subprocess helper


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# The admin calls go to localhost; an HTTP(S)_PROXY in the environment must not intercept them.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class FaultServer:
    """Runs the fault server in a subprocess for the duration of a ``with`` block."""

    def __init__(
        self,
        *,
        latency: float = 0.0,
        rpm: int = 0,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout: float = 15.0,
    ) -> None:
        self.host = host
        self.port = port or 0
        self._requested_port = port
        self._latency = latency
        self._rpm = rpm
        self._api_key = api_key
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/v1"

    def __enter__(self) -> FaultServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self._proc is not None:
            return
        # Another process can grab the probed port before uvicorn binds it; retry on a new one.
        attempts = 1 if self._requested_port else 3
        for attempt in range(attempts):
            self.port = self._requested_port or _free_port(self.host)
            try:
                self._spawn()
                return
            except RuntimeError:
                self.stop()
                if attempt == attempts - 1:
                    raise

    def _spawn(self) -> None:
        cmd = [sys.executable, "-m", "tests.faultserver", "--host", self.host, "--port", str(self.port)]
        cmd += ["--latency", str(self._latency), "--rpm", str(self._rpm)]
        env = dict(os.environ)
        env.pop(API_KEY_ENV, None)
        if self._api_key is not None:
            env[API_KEY_ENV] = self._api_key
            cmd += ["--api-key-env", API_KEY_ENV]
        # Lives until stop(): the log must outlast this call so failures can quote it.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115
        self._proc = subprocess.Popen(
            cmd,
            cwd=Path(__file__).resolve().parent.parent,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"faultserver exited with {self._proc.returncode}:\n{self.server_log()}")
            try:
                with _OPENER.open(f"{self.base}/health", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"faultserver did not answer /health within {self._startup_timeout}s")

    def server_log(self) -> str:
        """The subprocess's combined stdout/stderr so far (uvicorn warnings and tracebacks)."""
        if self._log is None:
            return ""
        self._log.seek(0)
        text: str = self._log.read().decode("utf-8", "replace")
        return text

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.base}{path}", data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with _OPENER.open(req, timeout=10) as resp:
                result: dict[str, Any] = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"faultserver {method} {path} -> {exc.code}: {exc.read()!r}") from None
        return result

    def stats(self) -> dict[str, Any]:
        return self._admin("GET", "/admin/stats")

    def configure(self, **cfg: Any) -> dict[str, Any]:
        """Change ``latency``, ``rpm`` and/or ``api_key`` on the running server."""
        return self._admin("POST", "/admin/config", cfg)

    def outage(self, seconds: float, status: int = 503) -> dict[str, Any]:
        return self._admin("POST", "/admin/outage", {"seconds": seconds, "status": status})

    def reset(self) -> dict[str, Any]:
        """Clear counters, per-article fault progress, outage and config back to start values."""
        return self._admin("POST", "/admin/reset", {})


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each completion")
    parser.add_argument("--rpm", type=int, default=0, help="requests per minute enforced (0 = unlimited)")
    parser.add_argument("--api-key-env", metavar="NAME", help="environment variable holding the required API key")
    args = parser.parse_args(argv)

    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            parser.error(f"environment variable {args.api_key_env} is not set")
    try:
        config = ServerConfig().updated({"latency": args.latency, "rpm": args.rpm, "api_key": api_key})
    except ValueError as exc:
        parser.error(str(exc))

    uvicorn.run(
        create_app(config),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=30,
        backlog=2048,
        limit_concurrency=None,
        lifespan="off",
        # Hung requests would otherwise hold shutdown for their whole sleep.
        timeout_graceful_shutdown=1,
    )


if __name__ == "__main__":
    main()
