"""Fixtures that run the real parts: redis-server on a free port, Celery worker processes, HTTP LLM servers.

Two worker groups share one Redis but not a queue or key prefix: 'local' talks to the offline extractive
server (the demo's path), 'fault' to the fault-injecting server. Short leases and budgets keep fault
tests in seconds; they are settings a user could set too.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from contract.keys import PRIORITY_STEPS, Keys
from contract.settings import Settings
from producer.api import Client
from scripts.stack import BIN, Proc, Stack, stop_all
from tests.faultserver import FaultServer

ROOT = Path(__file__).resolve().parent.parent

# Fast-failing, fast-recovering settings for tests (all are ordinary environment settings).
FAST = {
    "SUMMARIZE_LLM_TIMEOUT": "2",
    "SUMMARIZE_ATTEMPT_BUDGET": "6",
    "SUMMARIZE_MAX_ATTEMPTS_PER_RUN": "4",
    "SUMMARIZE_LEASE_SECONDS": "4",
    "SUMMARIZE_REAP_INTERVAL": "0.5",
    "SUMMARIZE_QUEUED_GRACE": "4",
    "SUMMARIZE_DEFER_BASE": "1",
    "SUMMARIZE_CONCURRENCY": "32",
    # The input tests check the limit at a size that is quick to write.
    "SUMMARIZE_MAX_ARTICLE_BYTES": "262144",
    # No /metrics from the many test workers (tests/test_metrics.py gives its worker a port).
    "SUMMARIZE_METRICS_PORT": "0",
}


#: Workers of isolated groups, in start order: stopped when the test (or module fixture) that started them ends,
#: so a suite of a hundred scenarios never has more than a few idle workers polling Redis at once.
_ISOLATED_WORKERS: list[Proc] = []


def _stop_workers_started_meanwhile() -> Iterator[None]:
    mark = len(_ISOLATED_WORKERS)
    yield
    stop_all(_ISOLATED_WORKERS[mark:])
    del _ISOLATED_WORKERS[mark:]


@pytest.fixture(autouse=True, scope="module")
def _stop_module_workers() -> Iterator[None]:
    yield from _stop_workers_started_meanwhile()


@pytest.fixture(autouse=True)
def _stop_test_workers() -> Iterator[None]:
    # Set up after every module and session fixture of the test: the workers those started stay.
    yield from _stop_workers_started_meanwhile()


@dataclass
class Group:
    """One deployment under test: its environment, a producer client, and its worker processes."""

    stack: Stack
    env: dict[str, str]
    #: its workers stop when the test or module fixture that made the group ends (see isolated_group)
    isolated: bool = False

    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.env)

    def client(self) -> Client:
        return Client(self.settings)

    def cli(
        self, *args: str, input: str | None = None, timeout: float = 120, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "summarize"), *args],
            env={**self.env, **(env or {})},
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )

    def worker(self, name: str, **env: str) -> Proc:
        proc = self.stack.worker(name, env={**self.env, **env})
        if self.isolated:
            _ISOLATED_WORKERS.append(proc)
        return proc

    def submit_and_wait(self, src: Path, timeout: float = 60, exit_code: int = 0) -> str:
        """`summarize submit SRC` into a new batch, then `summarize wait` for it, exiting `exit_code`: the batch id."""
        bid = batch_id()
        sub = self.cli("submit", str(src), "--batch-id", bid, "-q")
        assert sub.returncode == 0, sub.stderr
        wait = self.cli("wait", bid, "--timeout", str(timeout), "-q")
        assert wait.returncode == exit_code, (wait.returncode, wait.stderr)
        return bid

    def results(self, bid: str) -> list[dict[str, Any]]:
        """`summarize results BID`, one dict a job, in input order."""
        r = self.cli("results", bid)
        assert r.returncode == 0, r.stderr
        return [json.loads(line) for line in r.stdout.splitlines()]

    def results_by_id(self, bid: str) -> dict[str, dict[str, Any]]:
        return {row["id"]: row for row in self.results(bid)}

    def queued_messages(self) -> list[QueuedMessage]:
        """The task messages waiting on the group's Celery queues, all priorities, decoded from kombu's envelope."""
        keys = Keys(self.settings.key_prefix, self.settings.queue)
        client = self.client()
        try:
            return [
                QueuedMessage.decode(step, raw)
                for step in PRIORITY_STEPS
                for raw in client.redis.lrange(keys.broker_queue(step), 0, -1)
            ]
        finally:
            client.close()


@dataclass(frozen=True)
class QueuedMessage:
    """One message on a broker queue: its priority step, the raw envelope (for LREM) and the task's args."""

    step: int
    raw: str
    args: list[Any]  # [batch_id, [job_id, ...], priority step]

    @classmethod
    def decode(cls, step: int, raw: bytes | str) -> QueuedMessage:
        body = json.loads(base64.b64decode(json.loads(raw)["body"]))  # [args, kwargs, embed]
        return cls(step, raw if isinstance(raw, str) else raw.decode(), body[0])


def batch_id() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    s = Stack()
    try:
        yield s
    finally:
        s.stop()


def assert_invariants(url: str, since_ms: int = 0) -> None:
    """Every batch created since `since_ms` (Redis time) under any prefix of the Redis at `url` satisfies
    contract/lua/invariants.lua: counters equal job statuses, no hold without a live run."""
    import redis as redis_lib

    from contract import scripts
    from contract.record import pack

    script = scripts.load("invariants")
    r = redis_lib.Redis.from_url(url)
    try:
        run = r.register_script(script.source)
        problems: list[str] = []
        for key in r.scan_iter(match="*:batches", count=1000):
            prefix = key.decode().rsplit(":", 1)[0].strip("{}")  # store keys carry the prefix as a hash tag
            keys = Keys(prefix)
            for raw in r.zrangebyscore(key, since_ms, "+inf"):
                bid = raw.decode() if isinstance(raw, bytes) else str(raw)
                ids = [i.decode() if isinstance(i, bytes) else str(i) for i in r.lrange(keys.batch_ids(bid), 0, -1)]
                names, args = script.call(keys, batch=bid, ids=pack(ids))
                found = run(keys=names, args=args)
                problems += [f"{prefix}/{bid}: {v.decode() if isinstance(v, bytes) else v}" for v in found]
        assert not problems, "invariants broken:\n" + "\n".join(problems)
    finally:
        r.close()


@pytest.fixture(autouse=True)
def _invariants_after_each_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every scenario: counts by status equal the jobs' statuses, and nothing is held without a live
    run, for every batch the test created on the session's Redis (mark a test `no_invariants` to skip)."""
    url = _SESSION_REDIS.get("url")
    since = 0
    if url:
        import redis as redis_lib

        r = redis_lib.Redis.from_url(url)
        try:
            sec, usec = r.time()
            since = sec * 1000 + usec // 1000
        except redis_lib.RedisError:
            url = None
        finally:
            r.close()
    yield
    url = url or _SESSION_REDIS.get("url")
    if url and not request.node.get_closest_marker("no_invariants"):
        assert_invariants(url, since)


#: the session stack's Redis, once a test started it
_SESSION_REDIS: dict[str, str] = {}


@pytest.fixture(scope="session")
def redis_url(stack: Stack) -> str:
    stack.redis()
    _SESSION_REDIS["url"] = stack.env["REDIS_URL"]
    return stack.env["REDIS_URL"]


@pytest.fixture(scope="session")
def local_llm(stack: Stack, redis_url: str) -> str:
    stack.llm()
    return stack.env["OPENAI_BASE_URL"]


@pytest.fixture(scope="session")
def fault_server() -> Iterator[FaultServer]:
    with FaultServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def slow_server() -> Iterator[FaultServer]:
    """A fault server where every request takes a second, so a fault always finds jobs in flight."""
    with FaultServer(latency=1.0) as srv:
        yield srv


def _env(redis_url: str, prefix: str, base_url: str, model: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SUMMARIZE_", "OPENAI_"))}
    env.update(FAST)
    env.update(
        {
            "REDIS_URL": redis_url,
            "SUMMARIZE_KEY_PREFIX": prefix,
            "SUMMARIZE_QUEUE": prefix,
            "OPENAI_BASE_URL": base_url,
            "OPENAI_API_KEY": "sk-test-key-not-a-secret-0000",
            "SUMMARIZE_MODEL": model,
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def local(stack: Stack, redis_url: str, local_llm: str) -> Group:
    """A worker on the offline extractive server: the path `make demo` takes."""
    # The offline server spends real CPU per article: 32 requests at once can queue past the fast 2 s timeout.
    group = Group(stack, _env(redis_url, "loc", local_llm, "sumy-lexrank", SUMMARIZE_LLM_TIMEOUT="30"))
    group.worker("local-w1")
    return group


@pytest.fixture(scope="session")
def fault(stack: Stack, redis_url: str, fault_server: FaultServer) -> Group:
    """A worker on the fault-injecting server; faults are chosen per article by markers in its text."""
    group = Group(stack, _env(redis_url, "flt", fault_server.url, "fake-model"))
    group.worker("fault-w1")
    return group


def isolated_group(stack: Stack, redis_url: str, base_url: str, model: str = "fake-model", **extra: str) -> Group:
    """A group with its own queue and prefix, for tests that kill or stop its workers."""
    name = f"iso{uuid.uuid4().hex[:6]}"
    return Group(stack, _env(redis_url, name, base_url, model, **extra), isolated=True)


def pytest_configure(config: pytest.Config) -> None:
    sys.path.insert(0, str(ROOT))
    config.addinivalue_line("markers", "no_invariants: the test breaks the store on purpose (no invariant check)")


# ---- CPU per module (SUMMARIZE_TEST_CPU_LOG=FILE): what `make test`'s two cores are spent on -----------------
# The suite is bound by CPU on two cores, not by waiting: this says which modules spend it (this process and
# every child it reaped: workers, servers, CLIs), a line of JSON per module, for planning the budget.
_CPU_LOG = os.environ.get("SUMMARIZE_TEST_CPU_LOG", "")
_cpu_at: dict[str, float] = {}


def _cpu_now() -> float:
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def pytest_runtest_logfinish(nodeid: str, location: tuple[str, int | None, str]) -> None:
    if not _CPU_LOG:
        return
    module = nodeid.split("::", 1)[0]
    now = _cpu_now()
    last = _cpu_at.get("", now)
    _cpu_at[module] = _cpu_at.get(module, 0.0) + now - last
    _cpu_at[""] = now


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _CPU_LOG and _cpu_at:
        with open(_CPU_LOG, "a", encoding="utf-8") as f:
            for module, cpu in _cpu_at.items():
                if module:
                    f.write(json.dumps({"module": module, "cpu_s": round(cpu, 1)}) + "\n")


# ---- the longest modules first ----------------------------------------------------------------------------------
# `--dist loadfile` hands out modules in collection order, so a long one collected last runs alone at the end
# while the other test processes are idle. Longest first (seconds of wall time on two cores, measured with
# --junitxml; a module not listed is short and keeps its place after these) keeps them busy to the end.
LONGEST = {
    "test_money.py": 194,
    "test_reliability.py": 156,
    "test_crash.py": 127,
    "test_sentinel.py": 120,
    "test_batchmode_limits.py": 101,
    "test_cli_errors.py": 86,
    "test_ratelimit.py": 78,
    "test_input.py": 73,
    "test_cost.py": 71,
    "test_batchmode.py": 68,
    "test_cancel.py": 55,
    "test_batchmode_faults.py": 52,
    "test_faults.py": 51,
    "test_scale.py": 50,
    "test_spec.py": 49,
    "test_breaker_money.py": 48,
    "test_breaker_batch.py": 42,
    "test_leaks.py": 41,
    "test_stack_signals.py": 37,
    "test_breaker_formats.py": 55,
    "test_formats.py": 34,
    "test_estimate.py": 34,
}


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    order = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (-LONGEST.get(item.path.name, 0), order[id(item)]))
