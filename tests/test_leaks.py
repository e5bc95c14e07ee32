"""No secret leaks anywhere an operator or attacker can look.

Secrets are distinctive strings; after a real batch through a password + ACL protected Redis (with a 429
retry and a 400 failure) every place that could hold them is scanned: every Redis key and value (kombu
queues, `unacked`, bindings, our job hashes, the AOF files), every pub/sub message (Celery events), the
worker/redis/flower logs, CLI output, and Flower's JSON API and HTML pages. The scanner itself
(tests/leakscan.py) has positive controls here."""

from __future__ import annotations

import ast
import base64
import json
import os
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from contract.keys import PRIORITIES, Keys
from contract.messaging import TASK_NAME
from scripts.stack import Proc, Stack, free_port
from tests.conftest import Group, batch_id, isolated_group
from tests.faultserver import FaultServer, expected_summary
from tests.helpers import Response, http_request, poll, write_jsonl
from tests.leakscan import (
    ACL_PASS,
    ACL_USER,
    API_KEY,
    ARTICLES,
    REQUIREPASS,
    RedisDump,
    RedisRecorder,
    _dump,
    acl_url,
    assert_no_leak,
    dump_redis,
    leaks,
    messages_in,
    secure_redis,
)


@pytest.fixture(scope="module")
def keyed_llm() -> Iterator[FaultServer]:
    """The fault server demanding `Authorization: Bearer <API_KEY>`."""
    with FaultServer(api_key=API_KEY) as srv:
        yield srv


@pytest.fixture(scope="module")
def secure_stack() -> Iterator[tuple[Stack, int]]:
    with secure_redis() as stack_and_port:
        yield stack_and_port


JOB_IDS = [a["id"] for a in ARTICLES]


@dataclass
class BatchRun:
    """The batch submitted and waited for, its worker started in between."""

    batch: str
    queued: RedisDump  # every key as it was before any worker ran: the task messages still in the kombu queue
    users: set[str]  # the Redis users the other clients were logged in as, once the worker ran
    cli: dict[str, str]  # command -> what it printed
    worker: Proc


def run_batch(group: Group, src: Path, admin_url: str) -> BatchRun:
    bid = batch_id()
    sub = group.cli("submit", str(src), "--batch-id", bid, "-q")
    assert sub.returncode == 0, sub.stderr
    queued = dump_redis(group.env["REDIS_URL"])
    worker = group.worker("sec-w1")
    users = redis_users(admin_url, [worker.pid, os.getpid()])
    wait = group.cli("wait", bid, "--timeout", "60", "-q")
    assert wait.returncode == 1, (wait.stdout, wait.stderr, worker.tail())  # 'bad' failed, the rest done
    return BatchRun(bid, queued, users, {"submit": sub.stdout + sub.stderr, "wait": wait.stdout + wait.stderr}, worker)


def redis_users(admin_url: str, pids: list[int]) -> set[str]:
    """The users the clients of these processes (the worker, this test process: producer and recorder) are
    logged in as. Only theirs: a stray process of another test elsewhere in the session, reconnecting to a
    port this Redis happens to reuse, would show as `default` without being ours."""
    mine: set[str] = set()
    procs: list[psutil.Process] = []
    for pid in pids:
        try:
            top = psutil.Process(pid)
            procs += [top, *top.children(recursive=True)]
        except psutil.Error:
            continue
    for proc in procs:
        try:
            conns = proc.net_connections(kind="tcp")
        except psutil.Error:
            continue
        mine |= {f"{c.laddr.ip}:{c.laddr.port}" for c in conns if c.laddr}
    with closing(redis.Redis.from_url(admin_url)) as admin:
        me = str(admin.client_id())
        clients = [c for c in admin.client_list() if c["id"] != me and c["addr"] in mine]
        for c in admin.client_list():
            if c["id"] != me and c["addr"] not in mine:
                print(
                    "a client of another process, left out:",
                    {k: c.get(k) for k in ("addr", "name", "cmd", "age", "user")},
                )
        return {c["user"] for c in clients}


def read_commands(group: Group, bid: str) -> dict[str, str]:
    """What status and results (each output format) print for the batch."""
    out: dict[str, str] = {}
    for command, *options in (["status"], ["status", "--json"], ["results"], ["results", "--format", "csv"]):
        r = group.cli(command, bid, *options)
        out[" ".join([command, *options])] = r.stdout + r.stderr
    return out


@dataclass
class FlowerSeen:
    tasks: dict[str, Any]  # /api/tasks, once it showed every task succeeded (or after 20 s)
    pages: dict[str, str]  # path -> "HTTP <status>\n<body>", for every API answer and page looked at


FLOWER_PATHS = [
    "/api/workers",
    "/api/tasks",
    "/api/task/types",
    "/api/queues/length",
    "/metrics",
    "/",
    "/workers",
    "/tasks",
    "/tasks/datatable?draw=1&start=0&length=100",
    "/broker",
    "/dashboard",
]


def _page(r: Response) -> str:
    return f"HTTP {r.status}\n{r.text}"


def collect_flower(base: str, n: int) -> FlowerSeen:
    """Flower's tasks once all `n` succeeded, then its API answers and pages, those of each worker and task included."""

    def tasks_now() -> dict[str, Any]:
        r = http_request(f"{base}/api/tasks")
        tasks: dict[str, Any] = r.json() if r.status == 200 else {}
        return tasks

    def all_done(tasks: dict[str, Any]) -> bool:
        return len(tasks) >= n and all(t.get("state") == "SUCCESS" and t.get("args") for t in tasks.values())

    tasks = poll(tasks_now, all_done, timeout=20, interval=0.3)
    workers = http_request(f"{base}/api/workers?refresh=1")
    assert workers.status == 200, workers.text
    pages = {"/api/workers?refresh=1": _page(workers)}
    for path in [
        *FLOWER_PATHS,
        *(f"/worker/{urllib.parse.quote(w)}" for w in workers.json()),
        *(f"/api/task/info/{t}" for t in tasks),
        *(f"/task/{t}" for t in tasks),
    ]:
        pages[path] = _page(http_request(base + path))
    return FlowerSeen(tasks, pages)


@dataclass
class RedisSeen:
    """Everything Redis held: before any worker ran, while the batch ran (snapshots and pub/sub), at the end, and
    the files in its data directory (the AOF)."""

    queued: RedisDump
    during: RedisDump
    final: RedisDump
    files: dict[str, str]
    pubsub: list[str]

    @property
    def key_types(self) -> dict[str, str]:
        return {**self.queued.types, **self.during.types, **self.final.types}

    @property
    def messages(self) -> list[Any]:
        return self.queued.messages + self.during.messages + self.final.messages

    def sources(self) -> dict[str, str]:
        return {
            **self.queued.sources("queued"),
            **self.during.sources("during"),
            **self.final.sources("final"),
            **{f"file:{name}": text for name, text in self.files.items()},
            "pubsub": "\n".join(self.pubsub),
        }


def read_files(directory: Path) -> dict[str, str]:
    return {f.name: f.read_bytes().decode("utf-8", "replace") for f in directory.rglob("*") if f.is_file()}


def collect_logs(stack: Stack) -> dict[str, str]:
    return {p.name: p.log.read_text(errors="replace") for p in stack.procs if p.log.exists()}


@dataclass
class LeakRun:
    """One batch through the protected Redis, and every place a secret could have landed."""

    batch: str
    keys: Keys  # the key names of the batch's deployment
    rows: dict[str, dict[str, Any]]  # `summarize results`, by job id
    redis: RedisSeen
    flower: FlowerSeen
    logs: dict[str, str]  # process name -> its log
    cli: dict[str, str]  # command -> what it printed


@pytest.fixture(scope="module")
def leak_run(
    secure_stack: tuple[Stack, int],
    keyed_llm: FaultServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> LeakRun:
    """One batch through the password + ACL protected Redis, watched from Redis, Flower, the logs and the CLI."""
    stack, port = secure_stack
    group = isolated_group(stack, acl_url(port), keyed_llm.url, OPENAI_API_KEY=API_KEY)
    src = write_jsonl(tmp_path_factory.mktemp("leak") / "in.jsonl", ARTICLES)
    flower_port = free_port()
    with RedisRecorder(acl_url(port)) as rec:
        flower = stack.flower(flower_port, env={**group.env, "FLOWER_UNAUTHENTICATED_API": "true"})
        run = run_batch(group, src, f"redis://:{REQUIREPASS}@127.0.0.1:{port}/0")
        seen_flower = collect_flower(f"http://127.0.0.1:{flower_port}", len(ARTICLES))
        time.sleep(0.5)  # one more snapshot after the last inspect replies
    final = dump_redis(acl_url(port))
    cli = {**run.cli, **read_commands(group, run.batch)}
    rows = group.results_by_id(run.batch)
    run.worker.stop()
    flower.stop()
    assert rec.snapshots > 3 and rec.pubsub_text, "the recorder saw nothing: the scan would prove nothing"
    assert run.users == {ACL_USER}, run.users  # producer, worker, flower and recorder all log in as the ACL user
    seen_redis = RedisSeen(run.queued, rec.dump, final, read_files(stack.workdir / f"redis-{port}"), rec.pubsub_text)
    keys = Keys(group.env["SUMMARIZE_KEY_PREFIX"], group.env["SUMMARIZE_QUEUE"])
    return LeakRun(run.batch, keys, rows, seen_redis, seen_flower, collect_logs(stack), cli)


def test_batch_completes_through_acl_user_with_retry_and_error_paths(leak_run: LeakRun) -> None:
    rows = leak_run.rows
    assert set(rows) == set(JOB_IDS)
    for a in ARTICLES:
        if a["id"] == "bad":
            continue
        assert rows[a["id"]]["status"] == "done", rows[a["id"]]
        assert rows[a["id"]]["summary"] == expected_summary(a["text"])
    assert rows["r429"]["attempts"] == 2  # the 429 was retried
    assert rows["bad"]["status"] == "failed" and "400" in rows["bad"]["error"]


def test_scan_covered_kombu_and_celery_keys(leak_run: LeakRun) -> None:
    """The scan must have seen the broker's own structures, or a clean result would mean nothing."""
    types = leak_run.redis.key_types
    keys = set(types)
    names = leak_run.keys
    q = names.broker_queue(PRIORITIES["normal"])
    assert q in keys and types[q] == "list"  # the queue, while the messages waited
    kombu = names.kombu_prefix
    assert f"{kombu}unacked" in keys or f"{kombu}unacked_index" in keys, sorted(keys)
    assert any(k.startswith(f"{kombu}_kombu.binding.") for k in keys), sorted(keys)
    assert any(k.startswith(names.text(leak_run.batch, "")) for k in keys)
    assert leak_run.redis.queued.messages, "no task message found in the queue"


def test_no_secret_in_redis_keys_values_aof_or_pubsub(leak_run: LeakRun) -> None:
    assert_no_leak(leak_run.redis.sources())


def test_no_secret_in_worker_redis_flower_logs(leak_run: LeakRun, secure_stack: tuple[Stack, int]) -> None:
    logs = leak_run.logs
    assert {"sec-w1", "flower", f"redis-{secure_stack[1]}"} <= set(logs)
    assert "ready." in logs["sec-w1"]
    assert_no_leak(logs)


def test_no_secret_in_cli_output(leak_run: LeakRun) -> None:
    assert_no_leak(leak_run.cli)


def test_no_secret_in_flower_api_and_pages(leak_run: LeakRun) -> None:
    pages = leak_run.flower.pages
    assert pages["/broker"].startswith("HTTP 200") and any(p.startswith("/worker/") for p in pages)
    not_ok = {
        p: pages[p][:200]
        for p in pages
        if p.startswith(("/worker/", "/task/", "/api/")) and not pages[p].startswith("HTTP 200")
    }
    assert not not_ok
    assert_no_leak(pages)


def _as_list(value: Any) -> Any:
    if isinstance(value, str):
        value = ast.literal_eval(value)
    return list(value) if isinstance(value, tuple | list) else value


def test_task_args_are_only_batch_and_job_ids(leak_run: LeakRun) -> None:
    # In Flower (from task events): each task is [batch_id, [job_id, ...], priority step] and together
    # they cover the batch.
    tasks = leak_run.flower.tasks
    assert tasks
    seen: list[str] = []
    for t in tasks.values():
        batch, ids, step = _as_list(t["args"])
        assert batch == leak_run.batch and set(ids) <= set(JOB_IDS) and step in PRIORITIES.values()
        seen.extend(ids)
    assert sorted(seen) == sorted(JOB_IDS)
    assert all(_as_list(t["kwargs"]) in ({}, None) for t in tasks.values())
    assert {t["name"] for t in tasks.values()} == {TASK_NAME}
    # ... and in the raw kombu messages found in Redis (queue, unacked): body is [args, kwargs, embed].
    task_msgs = [m for m in leak_run.redis.messages if m["headers"].get("task") == TASK_NAME]
    assert task_msgs
    for m in task_msgs:
        args, kwargs, _embed = m["body"]
        assert args[0] == leak_run.batch and set(args[1]) <= set(JOB_IDS) and kwargs == {}
        assert len(args) == 3 and args[2] in PRIORITIES.values()
        assert _as_list(m["headers"]["argsrepr"]) == args


def test_leak_scanner_sees_through_kombu_base64_bodies() -> None:
    """Positive control: a secret inside a base64 message body in an unacked entry is found."""
    body = base64.b64encode(json.dumps([["b", API_KEY], {}, {}]).encode()).decode()
    entry = json.dumps([{"body": body, "headers": {}, "properties": {"body_encoding": "base64"}}, "", "q"])
    found = messages_in([entry.encode()])
    assert found[0]["body"][0] == ["b", API_KEY]
    assert leaks(entry) == ["OPENAI_API_KEY"]  # even without decoding, via its base64 form
    assert leaks(f"redis://{ACL_USER}:{ACL_PASS}@h") == ["ACL password"] and leaks("nothing") == []


def test_dump_attributes_each_message_to_its_own_key(secure_stack: tuple[Stack, int]) -> None:
    """A message is decoded once, into the text of the key that holds it and no other."""
    body = base64.b64encode(b'[["b1"], {}, {}]').decode()
    envelope = {"body": body, "headers": {"task": "t"}, "properties": {"body_encoding": "base64"}}
    prefix = f"dumptest-{batch_id()}"
    url = acl_url(secure_stack[1])
    with closing(redis.Redis.from_url(url)) as r:
        r.rpush(f"{prefix}:a", json.dumps(envelope))
        r.set(f"{prefix}:b", "plain value")
        try:
            dump = dump_redis(url)
        finally:
            r.delete(f"{prefix}:a", f"{prefix}:b")
    decoded = _dump({"headers": {"task": "t"}, "body": [["b1"], {}, {}]})
    assert decoded in dump.sources("x")[f"x:{prefix}:a"]
    assert decoded not in dump.sources("x")[f"x:{prefix}:b"]
    assert dump.types[f"{prefix}:a"] == "list" and dump.types[f"{prefix}:b"] == "string"
    assert decoded in {_dump(m) for m in dump.messages}
