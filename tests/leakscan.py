"""The secret leak scan the security scenarios share: the distinctive secrets, where each is looked for
(also base64-encoded, at any alignment), every Redis key's values with the kombu messages inside them
decoded, a recorder of pub/sub and key snapshots while a batch runs, the articles the scenarios send,
and a timed CLI run (the wrong-credential and TLS refusals must come at once)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis

from scripts.stack import BIN, ROOT, Stack

API_KEY = "sk-live-SECRET-abc123"

ACL_USER = "summarizer"

ACL_PASS = "acl-pass-XYZ"

REQUIREPASS = "rp-SECRET-requirepass-789"

SECRETS = {"OPENAI_API_KEY": API_KEY, "ACL password": ACL_PASS, "requirepass": REQUIREPASS}


def leaks(text: str) -> list[str]:
    """Names of the secrets found in `text` (also in their base64 forms, at any alignment)."""
    found = []
    for name, secret in SECRETS.items():
        forms = {secret}
        for pad in range(3):  # the secret at each alignment in a base64 stream: its whole 3-byte groups
            raw = b"\0" * pad + secret.encode()
            enc = base64.b64encode(raw).decode()
            forms.add(enc[(4 if pad else 0) : len(raw) // 3 * 4])
        if any(f and f in text for f in forms):
            found.append(name)
    return found


def assert_no_leak(sources: dict[str, str]) -> None:
    bad = {where: leaks(text) for where, text in sources.items() if leaks(text)}
    assert not bad, f"secrets found: {bad}"


def _kombu_bodies(obj: Any, out: list[Any]) -> None:
    """Decoded bodies of every kombu message envelope nested anywhere in `obj` (queues, unacked, replies)."""
    if isinstance(obj, dict):
        props = obj.get("properties")
        if isinstance(obj.get("body"), str) and isinstance(props, dict):
            raw = obj["body"]
            if props.get("body_encoding") == "base64":
                raw = base64.b64decode(raw).decode("utf-8", "replace")
            try:
                out.append({"headers": obj.get("headers") or {}, "body": json.loads(raw)})
            except ValueError:
                out.append({"headers": obj.get("headers") or {}, "body": raw})
        for v in obj.values():
            _kombu_bodies(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _kombu_bodies(v, out)


def _as_json(blob: bytes) -> Any:
    try:
        return json.loads(blob)
    except ValueError:
        return None


def messages_in(blobs: Iterable[bytes]) -> list[Any]:
    """The kombu messages inside these values (JSON or not), decoded."""
    found: list[Any] = []
    for blob in blobs:
        parsed = _as_json(blob)
        if parsed is not None:
            _kombu_bodies(parsed, found)
    return found


def _dump(message: Any) -> str:
    return json.dumps(message, ensure_ascii=False, sort_keys=True)


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _member(m: object) -> bytes | str:
    assert isinstance(m, bytes | str), m  # ZRANGE without WITHSCORES: members only (the stubs can't tell)
    return m


def _values(r: redis.Redis, key: bytes, kind: str) -> list[bytes] | None:
    """Everything one key holds (values, fields, members, stream entries) as bytes; None for a key that is gone."""
    raw: list[bytes | str]
    if kind == "string":
        raw = [r.get(key) or b""]
    elif kind == "hash":
        raw = [x for kv in r.hgetall(key).items() for x in kv]
    elif kind == "list":
        raw = list(r.lrange(key, 0, -1))
    elif kind == "set":
        raw = list(r.smembers(key))
    elif kind == "zset":
        raw = [_member(m) for m in r.zrange(key, 0, -1)]
    elif kind == "stream":
        raw = [x for _, fields in r.xrange(key) or [] for kv in (fields or {}).items() for x in kv]
    else:  # "none": gone between SCAN and TYPE
        return None
    return [_bytes(x) for x in raw]


@dataclass
class RedisDump:
    """The keys of one or more scans: each key's type, the distinct texts it held (its name, its values and the
    kombu messages decoded from them) and every distinct kombu message."""

    texts: dict[str, dict[str, None]] = field(default_factory=dict)  # key -> its distinct texts, in the order seen
    types: dict[str, str] = field(default_factory=dict)
    by_dump: dict[str, Any] = field(default_factory=dict)  # message as canonical JSON -> message

    @property
    def messages(self) -> list[Any]:
        return list(self.by_dump.values())

    def add_key(self, name: str, kind: str, blobs: list[bytes]) -> None:
        """One key's values, and the messages decoded from those values alone."""
        found = {_dump(m): m for m in messages_in(blobs)}
        text = "\n".join([name, *(b.decode("utf-8", "replace") for b in blobs), *found])
        self.types[name] = kind
        self.texts.setdefault(name, {})[text] = None
        self.by_dump.update(found)

    def add(self, other: RedisDump) -> None:
        for name, texts in other.texts.items():
            self.texts.setdefault(name, {}).update(texts)
        self.types.update(other.types)
        self.by_dump.update(other.by_dump)

    def sources(self, label: str) -> dict[str, str]:
        return {f"{label}:{name}": "\n".join(texts) for name, texts in self.texts.items()}


def dump_redis(url: str) -> RedisDump:
    """One scan of every key: each key's values read once and its messages decoded once."""
    out = RedisDump()
    with closing(redis.Redis.from_url(url)) as r:
        for key in r.scan_iter(count=1000):
            kind = _bytes(r.type(key)).decode()
            blobs = _values(r, _bytes(key), kind)
            if blobs is not None:
                out.add_key(_bytes(key).decode("utf-8", "replace"), kind, blobs)
    return out


class RedisRecorder:
    """While running: every pub/sub message (Celery events, pidbox) and a snapshot of all keys every 0.2 s."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.dump = RedisDump()
        self.pubsub_text: list[str] = []
        self.snapshots = 0
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._listen, daemon=True),
            threading.Thread(target=self._snap, daemon=True),
        ]

    def __enter__(self) -> RedisRecorder:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _listen(self) -> None:
        with closing(redis.Redis.from_url(self.url)) as r:
            # redis-py leaves pubsub() unannotated: the one untyped call here.
            ps = r.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            ps.psubscribe("*")
            while not self._stop.is_set():
                msg = ps.get_message(timeout=0.2)
                if msg and msg["type"] == "pmessage":
                    data = msg["data"]
                    decoded = "\n".join(_dump(m) for m in messages_in([data]))
                    self.pubsub_text.append(data.decode("utf-8", "replace") + "\n" + decoded)
            ps.close()

    def _snap(self) -> None:
        while not self._stop.wait(0.2):
            self.dump.add(dump_redis(self.url))
            self.snapshots += 1


def acl_url(port: int, user: str = ACL_USER, password: str = ACL_PASS) -> str:
    return f"redis://{user}:{password}@127.0.0.1:{port}/0"


ARTICLES = [
    {"id": "plain1", "text": "The harbour reopened on Monday after nine days of repairs to the sea wall."},
    {"id": "plain2", "text": "The city council approved a new budget for public libraries and parks."},
    {"id": "r429", "text": "The provider is busy once. [[fault:429x1:0.2]] Trains ran late on the northern line."},
    {"id": "bad", "text": "The provider rejects this article for good. [[fault:400]] Nothing else happened."},
]


@dataclass
class CLIRun:
    code: int | None  # None: still running at the deadline, killed
    out: str
    err: str
    seconds: float


def run_cli(env: dict[str, str], *args: str, deadline: float) -> CLIRun:
    """`summarize ARGS` to its end or `deadline` seconds, with its own duration."""
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            [str(BIN / "summarize"), *args], env=env, capture_output=True, text=True, cwd=ROOT, timeout=deadline
        )
        return CLIRun(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return CLIRun(None, out, err, time.monotonic() - t0)


@contextmanager
def secure_redis() -> Iterator[tuple[Stack, int]]:
    """A redis-server with `requirepass` and an ACL user `summarizer` (Redis 7 `--user` syntax: one arg per rule)."""
    stack = Stack()
    try:
        acl = ["--user", ACL_USER, "on", f">{ACL_PASS}", "~*", "&*", "+@all"]
        proc = stack.redis(password=REQUIREPASS, extra=acl)
        yield stack, int(proc.env["PORT"])
    finally:
        stack.stop()
        shutil.rmtree(stack.workdir, ignore_errors=True)
