"""Prometheus metrics for real: a worker's /metrics, `summarize exporter`, a real Prometheus, the dashboard.

One run through a dedicated fault server (500s, a 429 with Retry-After, a job deferred once, a 400 that
fails for good): the worker's request counter equals what the server saw and its job counters what the
batch holds; the exporter shows the queue, backlog and unfinished batch before the worker starts and a
deferred job while it runs; then a real Prometheus (Debian's /usr/bin/prometheus) scrapes both and runs
every query of deploy/grafana/dashboards/summarize.json, each of which may only name metrics the worker
or the exporter really export.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from contract.keys import Keys
from producer.api import Client
from scripts.stack import BIN, ROOT, Proc, Stack, free_port, wait_for
from tests.conftest import Group, batch_id, isolated_group
from tests.faultserver import FaultServer
from tests.helpers import http_request, poll

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "summarize.json"
#: what Grafana puts in place of its global variables; Prometheus scrapes every second here
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}
JOBS_PER_MESSAGE = 3
PRICE_IN, PRICE_OUT = 1.5, 6.0  # USD per million tokens, for fake-model: the cost counter moves

pytestmark = pytest.mark.skipif(
    not Path(PROMETHEUS).is_file(),
    reason="prometheus is not installed (scripts/bootstrap.sh installs Debian's package)",
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def articles(tag: str) -> list[dict[str, str]]:
    """Plain articles and one of each fault; every text unique (no cache hits)."""
    faults = {
        "e500": "[[fault:500x1]]",  # retried inside the run
        "e429": "[[fault:429x1:0.2]]",  # retried after Retry-After, every worker pausing for it
        "defer": "[[fault:500x2]]",  # 2 attempts per run here: handed back once, then done
        "bad": "[[fault:400]]",  # fails for good
    }
    plain = {f"p{i}": "" for i in range(8)}
    return [
        {
            "id": f"{tag}-{name}",
            "text": f"{tag} {name}: the harbour board met on day {i} and approved the dredging. {d}",
        }
        for i, (name, d) in enumerate({**plain, **faults}.items())
    ]


def scrape(port: int) -> Samples:
    """Every sample of a /metrics page: (sample name, labels) -> value."""
    r = http_request(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert r.status == 200, r.text[:300]
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "summary": ("_count", "_sum")}


def exported_names(port: int) -> set[str]:
    """Sample names a /metrics page declares (# TYPE), also those of a labelled metric with no child yet."""
    r = http_request(f"http://127.0.0.1:{port}/metrics", timeout=10)
    names = set()
    for family in text_string_to_metric_families(r.text):
        names |= {s.name for s in family.samples}
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
    return names


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def labelled(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(lbls)[label]: v for (n, lbls), v in samples.items() if n == name}


@dataclass
class Prometheus:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        r = http_request(url, timeout=10)
        body = r.json()
        assert isinstance(body, dict), body
        return body

    def query(self, expr: str) -> dict[str, Any]:
        """/api/v1/query: the whole answer (status, data or errorType/error)."""
        answer: dict[str, Any] = self.get("/api/v1/query", query=expr)
        return answer

    def series(self, expr: str) -> list[dict[str, Any]]:
        answer = self.query(expr)
        assert answer["status"] == "success", (expr, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@dataclass
class Run:
    group: Group
    server: FaultServer
    batch: str
    ids: list[str]
    worker_port: int
    exporter_port: int
    prometheus: Prometheus
    before: Samples  # the exporter with the batch queued, before any worker ran
    during: list[Samples] = field(default_factory=list)  # the exporter while the worker ran
    after: Samples = field(default_factory=dict)  # the exporter once the batch finished
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)


def start_prometheus(tmp: Path, targets: dict[str, int]) -> Prometheus:
    port = free_port()
    jobs = "".join(
        f"  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
        for job, target in targets.items()
    )
    config = tmp / "prometheus.yml"
    config.write_text(f"global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{jobs}")
    log = tmp / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Prometheus(port, proc, log)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def run(stack: Stack, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("metrics")
    worker_port, exporter_port = free_port(), free_port()
    # A server of its own: its request count is this run's alone. 0.3 s a request keeps jobs in flight.
    with FaultServer(latency=0.3) as server:
        group = isolated_group(
            stack,
            redis_url,
            server.url,
            SUMMARIZE_METRICS_PORT=str(worker_port),
            SUMMARIZE_MAX_ATTEMPTS_PER_RUN="2",
        )
        exporter = Proc(
            "exporter",
            [str(BIN / "summarize"), "exporter", "--host", "127.0.0.1", "--port", str(exporter_port)],
            group.env,
            stack.workdir / "exporter.log",
        ).start()
        stack.procs.append(exporter)  # stopped with the session's processes if this fixture can't
        started = [exporter]
        prometheus = start_prometheus(tmp, {"worker": worker_port, "exporter": exporter_port})
        try:
            wait_for(lambda: scrape(exporter_port), "summarize exporter", 30, exporter.popen)
            bid = batch_id()
            items = articles(bid)
            client = group.client()
            try:
                # Submitted before any worker runs: the exporter sees it all queued.
                submitter = Client(replace(group.settings, jobs_per_message=JOBS_PER_MESSAGE))
                try:
                    submitter.submit(items, batch_id=bid, price_in=PRICE_IN, price_out=PRICE_OUT)
                finally:
                    submitter.close()
                # A batch listed in Keys.batches whose hash has expired must be skipped, not break a scrape.
                keys = Keys(group.settings.key_prefix, group.settings.queue)
                client.redis.zadd(keys.batches, {f"{bid}-expired": 1})
                r = Run(
                    group,
                    server,
                    bid,
                    [a["id"] for a in items],
                    worker_port,
                    exporter_port,
                    prometheus,
                    scrape(exporter_port),
                )

                worker = group.worker("metrics-w1")
                started.append(worker)
                # `ready.` is logged once the consumer runs; the metrics line comes before it.
                assert f"Prometheus metrics on :{worker_port}/metrics" in worker.log.read_text(), worker.tail()
                deadline = time.monotonic() + 40
                while time.monotonic() < deadline:
                    r.during.append(scrape(exporter_port))
                    status = client.store.status(bid)
                    if status["done"] + status["failed"] >= status["total"]:
                        break
                    time.sleep(0.1)
                r.after = scrape(exporter_port)
                r.rows = group.results_by_id(bid)
            finally:
                client.close()
            yield r
        finally:
            stop(prometheus.proc)
            for proc in started:
                proc.stop()


# --------------------------------------------------------------------------- the worker's /metrics


def test_run_ends_as_the_faults_say(run: Run) -> None:
    assert {i: row["status"] for i, row in run.rows.items()} == {
        i: "failed" if i.endswith("-bad") else "done" for i in run.ids
    }
    assert run.rows[f"{run.batch}-bad"]["error_type"] == "PermanentLLMError"


def test_worker_counts_every_request_the_server_saw(run: Run) -> None:
    worker = scrape(run.worker_port)
    seen = run.server.stats()
    requests = labelled(worker, "summarize_llm_requests_total", "status")
    assert sum(requests.values()) == seen["requests"], (requests, seen["statuses"])
    # by status too: the server's own tally (it has no timeouts or resets to name differently here)
    assert requests == {str(k): float(v) for k, v in seen["statuses"].items()}, (requests, seen["statuses"])
    assert {"200", "400", "429", "500"} <= set(requests)
    # one latency observation a request, each at least the server's 0.3 s
    count = value(worker, "summarize_llm_request_duration_seconds_count")
    assert count == seen["requests"]
    assert (value(worker, "summarize_llm_request_duration_seconds_sum") or 0) >= 0.3 * seen["requests"]
    assert value(worker, "summarize_jobs_in_flight") == 0


def test_worker_counts_every_job_and_what_it_cost(run: Run) -> None:
    worker = scrape(run.worker_port)
    outcomes = labelled(worker, "summarize_jobs_total", "outcome")
    done = [row for row in run.rows.values() if row["status"] == "done"]
    assert outcomes["done"] == len(done) == len(run.ids) - 1
    assert outcomes["failed"] == 1
    assert outcomes["deferred"] >= 1  # the [[fault:500x2]] job, handed back once
    tokens = labelled(worker, "summarize_tokens_total", "kind")
    rows = list(run.rows.values())
    assert tokens["prompt"] == sum((r["usage"] or {}).get("prompt_tokens", 0) for r in rows)
    assert tokens["completion"] == sum((r["usage"] or {}).get("completion_tokens", 0) for r in rows)
    cost = value(worker, "summarize_cost_usd_total") or 0.0
    assert cost > 0
    assert math.isclose(cost, sum(r["cost_usd"] or 0.0 for r in rows), rel_tol=1e-6)


# --------------------------------------------------------------------------- the exporter


def test_exporter_shows_the_queued_batch_before_any_worker(run: Run) -> None:
    before, n = run.before, len(run.ids)
    assert value(before, "summarize_redis_up") == 1
    assert labelled(before, "summarize_queue_messages", "priority") == {
        "high": 0,
        "normal": -(-n // JOBS_PER_MESSAGE),
        "low": 0,
        "9": 0,
    }
    assert value(before, "summarize_backlog_jobs") == n
    # only unfinished batches, and never one whose hash is gone
    assert labelled(before, "summarize_batch_unfinished_jobs", "batch") == {run.batch: n}
    assert labelled(before, "summarize_due_jobs", "status") == {"running": 0, "deferred": 0, "waiting": 0}
    for idle in ("summarize_submits_waiting", "summarize_packs_open", "summarize_packs_enqueued_tokens"):
        assert value(before, idle) == 0, idle


def test_exporter_shows_jobs_running_and_deferred(run: Run) -> None:
    def peak(status: str) -> float:
        return max(value(s, "summarize_due_jobs", status=status) or 0 for s in run.during)

    assert peak("running") >= 1
    assert peak("deferred") >= 1, "the [[fault:500x2]] job was handed back: deferred until its retry"
    assert max(value(s, "summarize_limiter_cooldown_seconds") or 0 for s in run.during) <= 0.2


def test_exporter_after_the_batch_finished(run: Run) -> None:
    after = run.after
    assert value(after, "summarize_backlog_jobs") == 0
    assert set(labelled(after, "summarize_queue_messages", "priority").values()) == {0}
    assert labelled(after, "summarize_batch_unfinished_jobs", "batch") == {}
    assert set(labelled(after, "summarize_due_jobs", "status").values()) == {0}
    assert value(after, "summarize_due_overdue_jobs") == 0


def test_exporter_answers_without_redis(stack: Stack, tmp_path: Path) -> None:
    """Redis unreachable: the scrape still answers, quickly, with summarize_redis_up 0."""
    port = free_port()
    env = {**stack.env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "PYTHONPATH": str(ROOT)}
    proc = Proc(
        "exporter-noredis",
        [str(BIN / "summarize"), "exporter", "--host", "127.0.0.1", "--port", str(port)],
        env,
        tmp_path / "exporter.log",
    ).start()
    try:
        wait_for(lambda: scrape(port), "summarize exporter", 30, proc.popen)
        started = time.monotonic()
        samples = scrape(port)
        assert time.monotonic() - started < 5
        assert value(samples, "summarize_redis_up") == 0
        assert total(samples, "summarize_backlog_jobs") == 0 and not labelled(
            samples, "summarize_queue_messages", "priority"
        )
    finally:
        assert proc.stop(10) == 0, proc.tail()  # SIGTERM: a clean exit


# --------------------------------------------------------------------------- Prometheus and the dashboard


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression) of every target of every panel, rows' nested panels included."""

    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        for panel in panels:
            for t in panel.get("targets", []):
                yield panel["title"], t["expr"]
            yield from walk(panel.get("panels", []))

    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return list(walk(data["panels"]))


def grafana_expand(expr: str) -> str:
    for variable, replacement in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, replacement)
    assert "$" not in expr, f"a variable this test does not know: {expr}"
    return expr


PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions, keywords or labels."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", expr):
        word, call = m.group(1), m.group(2)
        if not call and word.lower() not in PROMQL_WORDS:
            names.add(word)
    return names


def test_metric_names_parser() -> None:
    assert metric_names(
        'histogram_quantile(0.95, sum by (le) (rate(a_bucket{x="b c"}[5m]))) / ignoring(status) group_left sum(b)'
    ) == {"a_bucket", "b"}
    assert metric_names("topk(20, max by (batch) (c)) * 60 > bool 1e3") == {"c"}


def test_prometheus_scrapes_the_worker_and_the_exporter(run: Run) -> None:
    prom = run.prometheus

    def up() -> dict[str, str]:
        targets = prom.get("/api/v1/targets")["data"]["activeTargets"]
        return {t["labels"]["job"]: t["health"] for t in targets}

    health = poll(up, lambda h: h == {"worker": "up", "exporter": "up"}, timeout=20, interval=0.5)
    assert health == {"worker": "up", "exporter": "up"}, prom.tail()
    # at least two scrapes of each target, so every rate() has its points
    two = (
        "min(count_over_time(summarize_jobs_in_flight[1m])) >= 2 and min(count_over_time(summarize_redis_up[1m])) >= 2"
    )
    assert poll(lambda: prom.series(two), bool, timeout=20, interval=0.5), prom.tail()


def test_every_dashboard_query_runs_on_prometheus(run: Run) -> None:
    test_prometheus_scrapes_the_worker_and_the_exporter(run)
    queries = dashboard_queries()
    assert len(queries) >= 15
    results = {}
    for title, expr in queries:
        answer = run.prometheus.query(grafana_expand(expr))
        assert answer["status"] == "success", (title, expr, answer.get("errorType"), answer.get("error"))
        assert not answer.get("warnings"), (title, expr, answer["warnings"])
        results[expr] = answer["data"]["result"]

    # The panels that must draw something after this run:
    def series_of(fragment: str) -> list[list[dict[str, Any]]]:
        found = [result for expr, result in results.items() if fragment in expr]
        assert found, f"no dashboard query has {fragment!r}"
        return found

    for fragment in (
        "summarize_jobs_total[",
        "summarize_llm_request_duration_seconds_bucket",
        "summarize_tokens_total",
        "summarize_cost_usd_total",
        "summarize_backlog_jobs",
        "summarize_queue_messages",
        "summarize_jobs_in_flight",
        "summarize_limiter_wait_seconds_total",
    ):
        assert all(series_of(fragment)), f"a panel on {fragment} has no series"
    by_status = next(
        r for e, r in results.items() if e.startswith("sum by (status) (rate(summarize_llm_requests_total[")
    )
    assert {s["metric"]["status"] for s in by_status} == {"200", "400", "429", "500"}
    outcomes = next(r for e, r in results.items() if e.startswith("sum by (outcome)"))
    assert {"done", "failed", "deferred"} <= {s["metric"]["outcome"] for s in outcomes}


def test_dashboard_names_only_exported_metrics(run: Run) -> None:
    exported = exported_names(run.worker_port) | exported_names(run.exporter_port)
    used = set().union(*(metric_names(expr) for _, expr in dashboard_queries()))
    assert used, "no metric names found in the dashboard"
    assert used <= exported, f"the dashboard reads metrics nobody exports: {sorted(used - exported)}"
    # and it shows what the issue asks for
    assert {
        "summarize_jobs_total",
        "summarize_llm_requests_total",
        "summarize_llm_request_duration_seconds_bucket",
        "summarize_tokens_total",
        "summarize_cost_usd_total",
        "summarize_backlog_jobs",
        "summarize_queue_messages",
        "summarize_batch_unfinished_jobs",
        "summarize_limiter_wait_seconds_total",
        "summarize_jobs_in_flight",
    } <= used
    # Prometheus stored every one of them from the two targets
    stored = set(run.prometheus.get("/api/v1/label/__name__/values")["data"])
    maybe_empty = {"summarize_batch_unfinished_jobs", "summarize_batch_packs_total", "summarize_reaper_requeued_total"}
    assert used - maybe_empty <= stored, sorted(used - stored)
