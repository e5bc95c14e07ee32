"""OpenAI-compatible HTTP front end for the extractive summarizer (standard library only)."""

from __future__ import annotations

import hmac
import json
import re
import socket
import sys
import time
import uuid
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import urlsplit

from localllm.extractive import MODEL_NAME, count_tokens, summarize_text, truncate_tokens, warm_up

MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_WORDS = 80
IDLE_TIMEOUT_S = 120.0

_WORD_LIMIT_RE = re.compile(r"at most (\d+) words", re.IGNORECASE)

JSONObject = dict[str, Any]


class ApiError(Exception):
    """A request failure reported to the client in OpenAI's error shape."""

    def __init__(
        self,
        status: HTTPStatus,
        message: str,
        err_type: str = "invalid_request_error",
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.err_type = err_type
        self.code = code

    def body(self) -> JSONObject:
        return {"error": {"message": self.message, "type": self.err_type, "param": None, "code": self.code}}


class LocalLLMServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 refuses connections when a worker opens hundreds at once.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], api_key: str | None, quiet: bool) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.api_key = api_key
        self.quiet = quiet
        self.created = int(time.time())


def make_server(host: str, port: int, api_key: str | None = None, *, quiet: bool = False) -> ThreadingHTTPServer:
    """Bind (port 0 picks a free port) without serving yet; ``api_key=None`` disables auth."""
    return LocalLLMServer((host, port), api_key or None, quiet)


def serve(host: str, port: int, api_key: str | None = None) -> None:
    """Serve until interrupted."""
    server = make_server(host, port, api_key)
    try:
        warm_up()  # so the first request is not charged the summarizer's import time
        bound_port = server.server_address[1]
        url_host = f"[{host}]" if ":" in host else host
        print(f"llm-serve: listening on http://{url_host}:{bound_port}/v1 model={MODEL_NAME}", file=sys.stderr)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def chat_completion(payload: Any) -> JSONObject:
    """The OpenAI ``chat.completion`` object answering a decoded request body."""
    if not isinstance(payload, dict):
        raise ApiError(HTTPStatus.BAD_REQUEST, "Request body must be a JSON object.")
    model = payload.get("model", MODEL_NAME)
    if model != MODEL_NAME:
        raise ApiError(
            HTTPStatus.NOT_FOUND,
            f"The model {model!r} does not exist; this server only serves {MODEL_NAME!r}.",
            code="model_not_found",
        )
    if payload.get("stream"):
        raise ApiError(HTTPStatus.BAD_REQUEST, "Streaming is not supported by this server; send stream=false.")
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise ApiError(HTTPStatus.BAD_REQUEST, "'messages' must be a non-empty list of message objects.")
    max_tokens = _max_tokens(payload)

    article = _article(messages)
    try:
        summary = summarize_text(article, _word_limit(messages))
    except ValueError as exc:
        raise ApiError(HTTPStatus.BAD_REQUEST, str(exc)) from exc

    finish_reason = "stop"
    if max_tokens is not None and count_tokens(summary) > max_tokens:
        summary = truncate_tokens(summary, max_tokens)
        finish_reason = "length"
    prompt_tokens = count_tokens("\n".join(_content_text(m.get("content")) for m in messages))
    completion_tokens = count_tokens(summary)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": MODEL_NAME,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": summary},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        # Clients may send the newer list-of-parts form; only text parts carry the article.
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return "\n".join(p for p in parts if isinstance(p, str))
    return ""


def _article(messages: list[JSONObject]) -> str:
    user_messages = [m for m in messages if m.get("role") == "user"]
    if not user_messages:
        raise ApiError(HTTPStatus.BAD_REQUEST, "No user message holds an article to summarize.")
    text = _content_text(user_messages[-1].get("content"))
    start, end = text.find("<article>"), text.rfind("</article>")
    if start != -1 and end > start:
        text = text[start + len("<article>") : end]
    text = text.strip()
    if not text:
        raise ApiError(HTTPStatus.BAD_REQUEST, "The article to summarize is empty.")
    return text


def _word_limit(messages: list[JSONObject]) -> int:
    system = next((m for m in messages if m.get("role") == "system"), None)
    if system is not None:
        match = _WORD_LIMIT_RE.search(_content_text(system.get("content")))
        if match:
            return int(match.group(1))
    return DEFAULT_MAX_WORDS


def _max_tokens(payload: JSONObject) -> int | None:
    value = payload.get("max_completion_tokens")
    if value is None:
        value = payload.get("max_tokens")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ApiError(HTTPStatus.BAD_REQUEST, "'max_tokens' must be a positive integer.")
    return value


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every reply carries Content-Length
    server_version = "localllm"
    # Without it an idle keep-alive client would pin a thread forever.
    timeout = IDLE_TIMEOUT_S

    def do_GET(self) -> None:
        self._dispatch(self.command)

    # Every method goes through _dispatch so clients always get JSON (405) rather than the
    # base class's HTML 501 page.
    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    @property
    def _server(self) -> LocalLLMServer:
        return cast(LocalLLMServer, self.server)

    def _routes(self) -> dict[str, tuple[str, bool, Callable[[], JSONObject]]]:
        """path -> (method, needs auth, handler)."""
        return {
            "/health": ("GET", False, lambda: {"status": "ok"}),
            "/v1/models": ("GET", True, self._models),
            "/v1/chat/completions": ("POST", True, lambda: chat_completion(self._read_json())),
        }

    def _dispatch(self, method: str) -> None:
        started = time.perf_counter()
        # Until the body is read the connection cannot be reused: its bytes would be parsed
        # as the next request.
        self._body_pending = (
            self.headers.get("Content-Length", "0").strip() != "0" or "Transfer-Encoding" in self.headers
        )
        path = urlsplit(self.path).path.rstrip("/") or "/"
        status = HTTPStatus.OK
        try:
            route = self._routes().get(path)
            if route is None:
                raise ApiError(HTTPStatus.NOT_FOUND, f"Unknown path {path!r}.", code="unknown_url")
            route_method, needs_auth, handler = route
            if method != route_method:
                raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, f"Use {route_method} for {path}.")
            if needs_auth:
                self._check_auth()
            body = handler()
        except ApiError as exc:
            status, body = exc.status, exc.body()
        except Exception as exc:  # the client must always get a JSON reply
            status = HTTPStatus.INTERNAL_SERVER_ERROR
            body = ApiError(status, f"Internal error: {type(exc).__name__}", "server_error").body()
        self._send_json(status, body)
        self._log_line(method, path, status, started)

    def _check_auth(self) -> None:
        expected = self._server.api_key
        if expected is None:
            return
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode("utf-8"), expected.encode("utf-8")
        ):
            raise ApiError(
                HTTPStatus.UNAUTHORIZED,
                "Incorrect API key provided.",
                "invalid_request_error",
                "invalid_api_key",
            )

    def _read_json(self) -> Any:
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            raise ApiError(HTTPStatus.LENGTH_REQUIRED, "A Content-Length header is required.")
        try:
            length = int(length_header)
        except ValueError:
            raise ApiError(HTTPStatus.BAD_REQUEST, "Invalid Content-Length header.") from None
        if length < 0:
            raise ApiError(HTTPStatus.BAD_REQUEST, "Invalid Content-Length header.")
        if length > MAX_BODY_BYTES:
            raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"Request body exceeds {MAX_BODY_BYTES} bytes.")
        raw = self.rfile.read(length)
        self._body_pending = False
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ApiError(HTTPStatus.BAD_REQUEST, "Request body is not valid JSON.") from None

    def _models(self) -> JSONObject:
        model = {"id": MODEL_NAME, "object": "model", "created": self._server.created, "owned_by": "local"}
        return {"object": "list", "data": [model]}

    def _send_json(self, status: HTTPStatus, body: JSONObject) -> None:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self._body_pending:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _log_line(self, method: str, path: str, status: HTTPStatus, started: float) -> None:
        elapsed_ms = (time.perf_counter() - started) * 1000
        # Path only: headers, query strings and bodies may carry keys or article text.
        self.log_message("%s %s %d %.1fms", method, path, status, elapsed_ms)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Silenced: the default line includes the raw request line; _log_line replaces it."""

    def log_message(self, format: str, *args: Any) -> None:
        if not self._server.quiet:
            sys.stderr.write(f"llm-serve: {format % args}\n")
