"""compose.yaml for real: build, start with three workers, submit, read back, auth, metrics, stop.

Run by `make test-compose` (which installs Docker's engine if missing, starts dockerd and builds the
stand-in base images with scripts/standin-images.sh), never by plain `make test`: the module skips
itself unless BULK_SUMMARIZE_COMPOSE_UP=1.

One stack per module, in a throwaway project name with a generated env file (random Redis password
and Flower credentials, free host ports), taken down with `down -v` whatever happens. Only published
ports on 127.0.0.1 are reached from here; everything else is asked of the containers themselves.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose.yaml"
SAMPLES = ROOT / "samples" / "articles.jsonl"
PROJECT_PREFIX = "bulksum-composetest-"
WORKERS = 3
METRICS_PORT = 9808
EXPORTER_PORT = 9809
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "summarize.json"
# What Grafana puts in place of its global variables (compose's Prometheus scrapes every 15 s).
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
# Base images compose.yaml and the Dockerfile need; scripts/standin-images.sh makes them here.
BASE_IMAGES = ("python:3.11-slim", "redis:7", "prom/prometheus:v2.42.0")
IMAGE_LABEL = "org.opencontainers.image.title=bulk-summarize"

if os.environ.get("BULK_SUMMARIZE_COMPOSE_UP") != "1":
    pytest.skip("builds and runs the Docker Compose stack: run by `make test-compose`", allow_module_level=True)

# The whole module shares one stack; its first test also pays for the build and `up`.
pytestmark = pytest.mark.timeout(1200)


def _compose_command() -> list[str]:
    """Docker Compose v2 (`docker compose`) if the CLI has it, else docker-compose 1.29."""
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True, check=False, timeout=30).returncode
        == 0
    ):
        return ["docker", "compose"]
    legacy = shutil.which("docker-compose")
    if legacy is None:
        pytest.fail("neither `docker compose` nor docker-compose is installed (scripts/docker-engine.sh installs it)")
    return [legacy]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Http:
    status: int
    body: bytes


def _http(url: str, auth: str | None = None, timeout: float = 5.0) -> Http:
    request = urllib.request.Request(url)
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Http(response.status, response.read())
    except urllib.error.HTTPError as exc:
        return Http(exc.code, exc.read())


@dataclass
class Stack:
    project: str
    env_file: Path
    compose: list[str]
    env: dict[str, str] = field(repr=False)
    redis_password: str = field(repr=False)
    flower_auth: str = field(repr=False)
    flower_port: int
    prometheus_port: int
    up_output: str = field(default="", repr=False)
    timings: dict[str, float] = field(default_factory=dict)

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [
            *self.compose,
            "-p",
            self.project,
            "-f",
            str(COMPOSE_FILE),
            "--project-directory",
            str(ROOT),
            "--env-file",
            str(self.env_file),
            *args,
        ]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=self.env, timeout=timeout, check=False, stdin=subprocess.DEVNULL
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"`{' '.join(args)}` exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
                f"--- stderr\n{self._masked(proc.stderr[-4000:])}"
            )
        return proc

    def _masked(self, text: str) -> str:
        return text.replace(self.redis_password, "***").replace(self.flower_auth, "***")

    def containers(self, service: str) -> list[dict[str, Any]]:
        """`docker inspect` of the service's running-or-not containers, in replica order."""
        ids = self.run("ps", "-q", service).stdout.split()
        if not ids:
            return []
        out = subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, check=True, timeout=60)
        data: list[dict[str, Any]] = json.loads(out.stdout)
        return data

    def flower(self, path: str, auth: str | None = None) -> Http:
        return _http(f"http://127.0.0.1:{self.flower_port}{path}", auth)

    def prometheus(self, path: str) -> Any:
        response = _http(f"http://127.0.0.1:{self.prometheus_port}{path}")
        assert response.status == 200, (path, response.status, response.body[:300])
        return json.loads(response.body)

    def targets(self) -> list[dict[str, Any]]:
        data = self.prometheus("/api/v1/targets?state=active")
        assert data["status"] == "success", data
        targets: list[dict[str, Any]] = data["data"]["activeTargets"]
        return targets


def _wait_for(what: str, check: Any, timeout: float, interval: float = 1.0) -> Any:
    """Calls check() until it returns something truthy; fails with the last value or error."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
            if last:
                return last
        except (OSError, AssertionError, ValueError, KeyError) as exc:
            last = exc
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def _down_leftovers(compose: list[str], env: dict[str, str]) -> None:
    """Projects of an earlier run that was killed before its own `down -v`."""
    out = subprocess.run(
        [
            "docker",
            "ps",
            "-a",
            "--filter",
            "label=com.docker.compose.project",
            "--format",
            '{{.Label "com.docker.compose.project"}}',
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    ).stdout.split()
    for project in sorted(set(out)):
        if project.startswith(PROJECT_PREFIX):
            subprocess.run(
                [
                    *compose,
                    "-p",
                    project,
                    "-f",
                    str(COMPOSE_FILE),
                    "--project-directory",
                    str(ROOT),
                    "down",
                    "-v",
                    "--remove-orphans",
                    "-t",
                    "5",
                ],
                capture_output=True,
                env=env,
                check=False,
                timeout=300,
            )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False, timeout=60)
    if info.returncode != 0:
        pytest.fail(f"no Docker engine answers (scripts/docker-engine.sh starts one): {info.stderr.strip()}")
    for image in BASE_IMAGES:
        present = subprocess.run(["docker", "image", "inspect", image], capture_output=True, check=False, timeout=60)
        assert present.returncode == 0, f"{image} is missing: run scripts/standin-images.sh (make test-compose does)"

    compose = _compose_command()
    tmp = tmp_path_factory.mktemp("compose-up")
    redis_password = secrets.token_hex(24)
    flower_auth = f"ops:{secrets.token_hex(12)}"
    flower_port, prometheus_port = _free_port(), _free_port()
    env_file = tmp / "stack.env"
    env_file.write_text(
        f"REDIS_PASSWORD={redis_password}\nFLOWER_BASIC_AUTH={flower_auth}\n"
        f"FLOWER_PORT={flower_port}\nPROMETHEUS_PORT={prometheus_port}\nGRAFANA_PORT={_free_port()}\n"
    )
    # A developer's own settings must not change the stack (nor leak into a failure message).
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            (
                "REDIS_",
                "FLOWER_",
                "OPENAI_",
                "SUMMARIZE_",
                "COMPOSE_",
                "GRAFANA_",
                "PROMETHEUS_",
                "DOCKER_HOST",
                "PYTHONPATH",
                "PYTHONHOME",
            )
        )
    }
    env["DOCKER_BUILDKIT"] = "0"  # the legacy builder: this machine's CLI may have no buildx plugin
    _down_leftovers(compose, env)
    s = Stack(
        project=f"{PROJECT_PREFIX}{secrets.token_hex(4)}",
        env_file=env_file,
        compose=compose,
        env=env,
        redis_password=redis_password,
        flower_auth=flower_auth,
        flower_port=flower_port,
        prometheus_port=prometheus_port,
    )
    try:
        started = time.monotonic()
        up = s.run("up", "-d", "--build", "--scale", f"worker={WORKERS}", timeout=1500)
        s.up_output = up.stdout + up.stderr
        s.timings["up --build"] = time.monotonic() - started
        _wait_for("redis and llm to be healthy and the rest running", lambda: _healthy(s), timeout=180)
        _wait_for("Flower to answer", lambda: s.flower("/").status == 401, timeout=60)
        _wait_for(
            "Prometheus to be ready",
            lambda: _http(f"http://127.0.0.1:{prometheus_port}/-/ready").status == 200,
            timeout=60,
        )
        s.timings["healthy"] = time.monotonic() - started
        yield s
    except BaseException:
        logs = s.run("logs", "--no-color", "--tail=40", timeout=120, check=False)
        print(s._masked(logs.stdout[-20000:]))
        raise
    finally:
        down = s.run("down", "-v", "--remove-orphans", "-t", "10", timeout=300, check=False)
        if down.returncode != 0:
            print(f"down -v failed: {s._masked(down.stderr)}")
        # images of earlier builds, untagged by this one (the Dockerfile labels every layer)
        subprocess.run(
            ["docker", "image", "prune", "-f", "--filter", f"label={IMAGE_LABEL}"],
            capture_output=True,
            check=False,
            timeout=300,
        )
        print(f"compose stack timings: {', '.join(f'{k} {v:.1f} s' for k, v in s.timings.items())}")


def _healthy(s: Stack) -> bool:
    def states(service: str) -> list[tuple[str, str]]:
        return [
            (c["State"]["Status"], (c["State"].get("Health") or {}).get("Status", "")) for c in s.containers(service)
        ]

    ok = all(state == ("running", "healthy") for state in states("redis") + states("llm"))
    workers = states("worker")
    ok = ok and len(workers) == WORKERS and all(status == "running" for status, _ in workers)
    return ok and all(
        status == "running" for service in ("flower", "exporter", "prometheus") for status, _ in states(service)
    )


def _sample_ids() -> list[str]:
    ids = []
    for line in SAMPLES.read_text(encoding="utf-8").splitlines():
        if line.strip():
            ids.append(str(json.loads(line)["id"]))
    return ids


# (1) the image is built once, nothing is pulled


def test_image_built_once_and_nothing_pulled(stack: Stack) -> None:
    out = stack.up_output
    assert not re.search(r"^\s*Pulling\b", out, re.MULTILINE), out[-3000:]
    built = re.findall(r"^Building (\S+)\s*$", out, re.MULTILINE)  # docker-compose 1.29's wording
    if built or stack.compose[-1].endswith("docker-compose"):
        assert built == ["llm"], f"expected one build, by the llm service: {built}"
    images = {
        c["Config"]["Image"] for service in ("llm", "worker", "flower", "exporter") for c in stack.containers(service)
    }
    assert images == {"bulk-summarize:latest"}, images
    assert len(stack.containers("worker")) == WORKERS


def test_grafana_needs_its_profile(stack: Stack) -> None:
    """`up` without `--profile monitoring-ui` neither starts Grafana nor needs its image (not built here)."""
    grafana = subprocess.run(
        [
            "docker",
            "ps",
            "-aq",
            "--filter",
            f"label=com.docker.compose.project={stack.project}",
            "--filter",
            "label=com.docker.compose.service=grafana",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert grafana == []


def test_python_services_run_under_an_init(stack: Stack) -> None:
    for service in ("llm", "worker", "flower", "exporter"):
        for container in stack.containers(service):
            assert container["HostConfig"].get("Init") is True, (service, container["Name"])


def test_redis_never_evicts(stack: Stack) -> None:
    out = stack.run("exec", "-T", "redis", "redis-cli", "config", "get", "maxmemory-policy").stdout.split()
    assert out == ["maxmemory-policy", "noeviction"], out
    # and it wants the password (REDISCLI_AUTH is set in the container, so ask without it)
    anon = stack.run("exec", "-T", "-e", "REDISCLI_AUTH=", "redis", "redis-cli", "ping", check=False)
    assert "NOAUTH" in anon.stdout + anon.stderr, anon


# (2) submit through the producer profile, read the summaries back


@pytest.fixture(scope="module")
def batch_id(stack: Stack) -> str:
    started = time.monotonic()
    proc = stack.run("--profile", "producer", "run", "--rm", "-T", "producer", timeout=600)
    stack.timings["submit --wait"] = time.monotonic() - started
    lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"the producer printed nothing on stdout; stderr:\n{proc.stderr[-3000:]}"
    # exit 0 (checked by run) means every job ended done; the last status line says so too
    assert f"{len(_sample_ids())} done, 0 failed" in proc.stderr, proc.stderr[-3000:]
    return lines[-1]


def test_producer_prints_the_batch_id(batch_id: str) -> None:
    assert re.fullmatch(r"[A-Za-z0-9._:-]+", batch_id), batch_id


def test_every_sample_is_summarized(stack: Stack, batch_id: str) -> None:
    proc = stack.run("--profile", "producer", "run", "--rm", "-T", "producer", "summarize", "results", batch_id)
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.strip().startswith("{")]
    expected = _sample_ids()
    assert [r["id"] for r in results] == expected
    for r in results:
        assert r["status"] == "done", r
        assert isinstance(r["summary"], str) and r["summary"].strip(), r
    # the same through a worker container, as the README shows
    status = stack.run("exec", "-T", "worker", "summarize", "status", batch_id).stdout
    assert f"{len(expected)} done, 0 failed" in status, status


# (3) Flower: basic auth on the UI and API, /metrics open for Prometheus


def test_flower_requires_basic_auth(stack: Stack) -> None:
    assert stack.flower("/").status == 401
    assert stack.flower("/api/workers").status == 401
    assert stack.flower("/", auth="admin:change-me").status == 401
    assert stack.flower("/", auth=stack.flower_auth).status == 200
    workers = stack.flower("/api/workers?refresh=1", auth=stack.flower_auth)
    assert workers.status == 200
    assert len(json.loads(workers.body)) == WORKERS, workers.body[:500]
    metrics = stack.flower("/metrics")
    assert metrics.status == 200 and b"flower_" in metrics.body


# (4) Prometheus: Flower and every worker replica


def _by_job(targets: list[dict[str, Any]], job: str) -> list[dict[str, Any]]:
    return [t for t in targets if t["labels"].get("job") == job]


def test_prometheus_scrapes_flower(stack: Stack) -> None:
    def flower_up() -> bool:
        flower = _by_job(stack.targets(), "flower")
        assert len(flower) == 1, flower
        return bool(flower[0]["health"] == "up")

    _wait_for("Prometheus' flower target to be up", flower_up, timeout=90, interval=2)


def test_prometheus_discovers_every_worker_replica(stack: Stack) -> None:
    def three_workers() -> list[dict[str, Any]] | None:
        workers = _by_job(stack.targets(), "worker")
        return workers if len(workers) == WORKERS else None

    workers = _wait_for(f"{WORKERS} worker targets (dns_sd_configs on `worker`)", three_workers, timeout=90, interval=2)
    addresses = {
        c["NetworkSettings"]["Networks"][net]["IPAddress"]
        for c in stack.containers("worker")
        for net in c["NetworkSettings"]["Networks"]
    }
    assert {t["labels"]["instance"] for t in workers} == {f"{ip}:{METRICS_PORT}" for ip in addresses}


def test_prometheus_worker_targets_up(stack: Stack) -> None:
    """Every replica serves /metrics on 0.0.0.0:9808 (SUMMARIZE_METRICS_PORT) and Prometheus scrapes it."""

    def all_up() -> bool:
        workers = _by_job(stack.targets(), "worker")
        assert len(workers) == WORKERS, workers
        return all(t["health"] == "up" for t in workers)

    try:
        _wait_for(f"all {WORKERS} worker targets to be up", all_up, timeout=90, interval=2)
    except pytest.fail.Exception:
        errors = {t["labels"]["instance"]: (t["health"], t["lastError"]) for t in _by_job(stack.targets(), "worker")}
        probe = stack.run(
            "exec",
            "-T",
            "worker",
            "python",
            "-c",
            f"import socket; socket.create_connection(('127.0.0.1', {METRICS_PORT}), 2)",
            check=False,
        )
        inside = "listening on 127.0.0.1 only?" if probe.returncode == 0 else "nothing listens inside the container"
        pytest.fail(f"worker targets not all up ({inside}): {errors}")


def test_prometheus_scrapes_the_exporter(stack: Stack) -> None:
    def exporter_up() -> bool:
        exporter = _by_job(stack.targets(), "exporter")
        assert len(exporter) == 1, exporter
        assert exporter[0]["labels"]["instance"] == f"exporter:{EXPORTER_PORT}", exporter
        return bool(exporter[0]["health"] == "up")

    try:
        _wait_for("Prometheus' exporter target to be up", exporter_up, timeout=90, interval=2)
    except pytest.fail.Exception:
        logs = stack.run("logs", "--no-color", "--tail=30", "exporter", check=False)
        pytest.fail(f"exporter target not up: {_by_job(stack.targets(), 'exporter')}\n{stack._masked(logs.stdout)}")
    # it reads Redis with the stack's password, from the compose network
    up = stack.prometheus("/api/v1/query?" + urllib.parse.urlencode({"query": "summarize_redis_up"}))
    assert [r["value"][1] for r in up["data"]["result"]] == ["1"], up


def _query(stack: Stack, expr: str) -> Any:
    return stack.prometheus("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))


def test_prometheus_counts_the_samples_done(stack: Stack, batch_id: str) -> None:
    """The workers' job counters, summed by Prometheus over the replicas, count every sample summarized."""
    expected = len(_sample_ids())

    def done() -> float:
        result = _query(stack, 'sum(summarize_jobs_total{outcome="done"})')["data"]["result"]
        return float(result[0]["value"][1]) if result else 0.0

    def backlog() -> list[str]:
        return [r["value"][1] for r in _query(stack, "summarize_backlog_jobs")["data"]["result"]]

    counted = _wait_for(f"{expected} jobs done in Prometheus", lambda: done() >= expected, timeout=60, interval=3)
    assert counted and done() == expected, done()
    # The exporter is another scrape target: its last scrape may precede the workers' last jobs by an interval.
    _wait_for("the exporter's backlog scraped at 0", lambda: backlog() == ["0"], timeout=30, interval=3)
    assert backlog() == ["0"], backlog()


def test_every_dashboard_query_runs_on_the_stack(stack: Stack, batch_id: str) -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert exprs
    for expr in exprs:
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        answer = _query(stack, expr)
        assert answer["status"] == "success", (expr, answer)


# (5) stopping: well inside the grace periods (10 s llm, 60 s worker). Destructive: keep these last.


def test_llm_stops_promptly(stack: Stack) -> None:
    started = time.monotonic()
    stack.run("stop", "llm", timeout=120)
    took = stack.timings["stop llm"] = time.monotonic() - started
    assert took < 5, f"`stop llm` took {took:.1f} s (grace period 10 s): SIGTERM not handled"


def test_fresh_worker_stops_promptly(stack: Stack) -> None:
    """A replica stopped in its first second (before Celery installs its signal handlers) stops at once."""
    stack.run("up", "-d", "--no-deps", "--scale", f"worker={WORKERS + 1}", "worker", timeout=120)
    assert len(stack.containers("worker")) == WORKERS + 1
    started = time.monotonic()
    stack.run("stop", "worker", timeout=180)
    took = stack.timings["stop worker (one fresh)"] = time.monotonic() - started
    assert took < 15, f"`stop worker` took {took:.1f} s (grace period 60 s): SIGTERM ignored"
    for container in stack.containers("worker"):
        assert container["State"]["Status"] == "exited", container["Name"]
