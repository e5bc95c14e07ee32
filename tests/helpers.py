"""Plain helpers the test modules share: input files, synthetic articles, polling, HTTP. Fixtures live in conftest."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# --------------------------------------------------------------------------- input files


def jl(obj: object) -> bytes:
    """One JSONL line as Python's json.dumps writes it (ASCII, non-ASCII escaped)."""
    return json.dumps(obj).encode() + b"\n"


def write_lines(path: Path, *lines: bytes) -> Path:
    """A file of exactly these bytes (lines are written as given: bad UTF-8, NUL bytes and all)."""
    path.write_bytes(b"".join(lines))
    return path


def write_jsonl(path: Path, records: Iterable[object]) -> Path:
    """A JSONL file, one json.dumps line a record."""
    return write_lines(path, *map(jl, records))


def id_text(arts: Mapping[str, str]) -> list[dict[str, str]]:
    """`{id: text}` as input records `{"id", "text"}`, in the mapping's order."""
    return [{"id": k, "text": v} for k, v in arts.items()]


def articles(tag: str, n: int) -> list[dict[str, str]]:
    """`n` short articles with ids `{tag}0...`; the tag makes both ids and texts unique to the caller."""
    return [
        {"id": f"{tag}{i}", "text": f"{tag} article {i}: the county approved the new budget on day {i}."}
        for i in range(n)
    ]


# --------------------------------------------------------------------------- polling


def wait_until(
    pred: Callable[[], object], timeout: float = 60, what: str = "condition", interval: float = 0.05
) -> None:
    """Return as soon as `pred()` is true; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def poll(fetch: Callable[[], T], done: Callable[[T], bool], timeout: float, interval: float = 0.2) -> T:
    """`fetch()` until `done(value)` or `timeout` seconds: the last value either way, for the caller to assert on."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value) or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# --------------------------------------------------------------------------- HTTP

# Only loopback servers here: an HTTP(S)_PROXY in the environment must not intercept the requests.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    url: str,
    method: str = "GET",
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    auth: str | None = None,
    timeout: float = 15,
) -> Response:
    """One request, never through a proxy; any status is returned, not raised. `auth` is 'user:password'."""
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with _OPENER.open(req, timeout=timeout) as r:
            return Response(r.status, r.read())
    except urllib.error.HTTPError as exc:
        return Response(exc.code, exc.read())
