"""compose.yaml: valid for docker-compose, the right services and commands, no secrets in the file.

Needs only the `docker-compose` binary (no Docker engine): `docker-compose config` validates and
resolves the file. Each run uses an empty env file and a scrubbed environment, so a developer's own
`.env` or exported settings neither change the outcome nor end up in a failure message. The files
compose.yaml mounts (deploy/: Prometheus, Grafana provisioning) are checked against it here too;
tests/test_compose_up.py (`make test-compose`) runs the stack for real.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose.yaml"
#: where the compose stack is documented, next to the commands it runs by hand
COMPOSE_DOCS = ROOT / "docs" / "compose.md"
DOCKERFILE = ROOT / "Dockerfile"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
STANDIN_SCRIPT = ROOT / "scripts" / "standin-images.sh"
DOCKER_COMPOSE = shutil.which("docker-compose")

pytestmark = pytest.mark.skipif(
    DOCKER_COMPOSE is None,
    reason="the docker-compose binary is not installed (scripts/bootstrap.sh installs it with apt-get)",
)

# What the docs run by hand; each compose service must run the same thing.
CANONICAL = {
    "worker": "celery -A worker worker",
    "flower": "celery -A worker flower",
    "llm": "summarize llm-serve",
    "producer": "summarize submit",
    "exporter": "summarize exporter",
}

# The full command lines, exactly.
EXPECTED_COMMANDS = {
    "redis": [
        "redis-server",
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--maxmemory-policy",
        "noeviction",
        "--requirepass",
        "change-me",
    ],
    "llm": ["summarize", "llm-serve", "--host", "0.0.0.0", "--port", "8765"],
    "worker": ["celery", "-A", "worker", "worker", "--loglevel=INFO"],
    "flower": ["celery", "-A", "worker", "flower", "--port=5555"],
    "producer": ["summarize", "submit", "/app/samples/articles.jsonl", "--wait"],
    "exporter": ["summarize", "exporter", "--host", "0.0.0.0", "--port", "9809"],
}

APP_SERVICES = ("worker", "flower", "exporter", "producer")
PYTHON_SERVICES = ("llm", *APP_SERVICES)
LONG_RUNNING = ("redis", "llm", "worker", "flower", "exporter", "prometheus", "grafana")
PROFILES = ("--profile", "producer", "--profile", "monitoring-ui")
#: the `ha` profile's services: a replica and three sentinels (docs/failover.md)
HA_SERVICES = ("redis-replica", "sentinel-1", "sentinel-2", "sentinel-3")
IMAGE = "bulk-summarize:latest"
METRICS_PORT = 9808
EXPORTER_PORT = 9809

# Variables the file reads, dropped from the environment docker-compose sees.
COMPOSE_VARS = (
    "REDIS_PASSWORD",
    "FLOWER_BASIC_AUTH",
    "OPENAI_BASE_URL",
    "OPENAI_API_KEY",
    "SUMMARIZE_MODEL",
    "SUMMARIZE_RPM",
    "SUMMARIZE_TPM",
    "FLOWER_PORT",
    "PROMETHEUS_PORT",
    "GRAFANA_PORT",
    "GRAFANA_ADMIN_USER",
    "GRAFANA_ADMIN_PASSWORD",
)
# The only secret values the file may spell out: documented placeholders (and "no key").
ALLOWED_SECRET_DEFAULTS = {"", "change-me", "admin:change-me"}
SECRETISH = re.compile(r"PASS|SECRET|TOKEN|KEY|AUTH|CREDENTIAL", re.IGNORECASE)


def _compose(*args: str, env: dict[str, str] | None = None, tmp: Path) -> str:
    """Run docker-compose on compose.yaml with an empty env file; return stdout."""
    assert DOCKER_COMPOSE is not None
    env_file = tmp / "empty.env"
    env_file.write_text("")
    run_env = {
        k: v
        for k, v in os.environ.items()
        if k not in COMPOSE_VARS
        and k not in ("PYTHONPATH", "PYTHONHOME", "COMPOSE_FILE", "COMPOSE_PROFILES", "COMPOSE_PROJECT_NAME")
    }
    run_env.update(env or {})
    cmd = [
        DOCKER_COMPOSE,
        "--env-file",
        str(env_file),
        "-f",
        str(COMPOSE_FILE),
        "--project-directory",
        str(ROOT),
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=run_env, timeout=60, check=False)
    assert proc.returncode == 0, f"{shlex.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
    return proc.stdout


def _load_yaml(text: str) -> Any:
    """PyYAML if this venv has it, else the interpreter docker-compose runs on (which always does)."""
    try:
        import yaml
    except ImportError:
        pass
    else:
        return yaml.safe_load(text)
    assert DOCKER_COMPOSE is not None
    with open(DOCKER_COMPOSE, "rb") as f:
        first = f.readline().decode("utf-8", "replace")
    if not first.startswith("#!") or "python" not in first:
        pytest.skip("cannot parse YAML: PyYAML is not installed and docker-compose is not a Python script")
    interpreter = shlex.split(first[2:])
    out = subprocess.run(
        [*interpreter, "-c", "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"],
        input=text,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")},
    ).stdout
    return json.loads(out)


@pytest.fixture(scope="module")
def tmp_env_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compose")


@pytest.fixture(scope="module")
def config(tmp_env_dir: Path) -> dict[str, Any]:
    """`docker-compose config` with both profiles, every variable at its documented default."""
    data = _load_yaml(_compose(*PROFILES, "config", tmp=tmp_env_dir))
    assert isinstance(data, dict) and "services" in data
    return data


@pytest.fixture(scope="module")
def raw_config() -> dict[str, Any]:
    """compose.yaml itself, anchors merged, before variable interpolation (shows where `${...}` is used).

    Read as YAML rather than with `docker-compose config --no-interpolate`: docker-compose 1.29
    validates the uninterpolated text and refuses a variable published port (`${FLOWER_PORT:-5555}`).
    """
    data = _load_yaml(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def prometheus_config() -> dict[str, Any]:
    data = _load_yaml(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command")
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd or [])


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of a service's volumes, short (`src:dst[:mode]`) or long syntax."""
    mounts = {}
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            mounts[str(v["target"])] = str(v.get("source", ""))
        else:
            source, target = str(v).split(":")[:2]
            mounts[target] = source
    return mounts


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


# (1) validity


def test_config_validates_with_and_without_profiles(tmp_env_dir: Path) -> None:
    assert _compose("config", "-q", tmp=tmp_env_dir) == ""
    assert _compose("--profile", "producer", "config", "-q", tmp=tmp_env_dir) == ""
    assert _compose("--profile", "monitoring-ui", "config", "-q", tmp=tmp_env_dir) == ""
    assert _compose(*PROFILES, "config", "-q", tmp=tmp_env_dir) == ""


def test_producer_and_grafana_are_only_in_their_profiles(tmp_env_dir: Path, config: dict[str, Any]) -> None:
    default = _compose("config", "--services", tmp=tmp_env_dir).split()
    with_profile = _compose("--profile", "producer", "config", "--services", tmp=tmp_env_dir).split()
    assert set(default) >= {"redis", "llm", "worker", "flower", "exporter", "prometheus"}
    assert "producer" in with_profile
    assert _compose("config", "--profiles", tmp=tmp_env_dir).split() == ["ha", "monitoring-ui", "producer"]
    # Grafana cannot be built here: `up` without its profile must never need its image.
    services = config["services"]
    assert services["grafana"]["profiles"] == ["monitoring-ui"]
    assert services["producer"]["profiles"] == ["producer"]
    for name, service in services.items():
        if name in HA_SERVICES:
            assert service["profiles"] == ["ha"], name
        elif name not in ("grafana", "producer"):
            assert not service.get("profiles"), name
            assert "grafana" not in (service.get("depends_on") or {}), name


# (2) services


def test_services_exist(config: dict[str, Any]) -> None:
    assert set(config["services"]) == {
        "redis",
        "llm",
        "worker",
        "flower",
        "exporter",
        "prometheus",
        "grafana",
        "producer",
        *HA_SERVICES,
    }


def test_worker_can_scale(config: dict[str, Any]) -> None:
    worker = config["services"]["worker"]
    assert "container_name" not in worker
    assert not worker.get("ports"), "a published port would make `--scale worker=N` collide"


def test_flower_published_on_5555_with_basic_auth(config: dict[str, Any]) -> None:
    flower = config["services"]["flower"]
    published = {
        str(p.get("published")) if isinstance(p, dict) else str(p).split(":")[-2] for p in flower.get("ports", [])
    }
    targets = {str(p.get("target")) if isinstance(p, dict) else str(p).split(":")[-1] for p in flower.get("ports", [])}
    assert "5555" in published and "5555" in targets
    assert _environment(flower)["FLOWER_BASIC_AUTH"] == "admin:change-me"


def test_redis_durable_and_password_protected(config: dict[str, Any]) -> None:
    redis = config["services"]["redis"]
    assert redis["image"] == "redis:7"
    cmd = _command(redis)
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--requirepass") + 1] == "change-me"
    mounts = [
        v if isinstance(v, dict) else dict(zip(("source", "target"), str(v).split(":"), strict=False))
        for v in redis.get("volumes", [])
    ]
    assert any(m.get("source") == "redis-data" and m.get("target") == "/data" for m in mounts), mounts
    assert "redis-data" in config.get("volumes", {})
    # The healthcheck authenticates through REDISCLI_AUTH, never `-a <password>` on a command line.
    test = redis["healthcheck"]["test"]
    check = test if isinstance(test, str) else " ".join(test)
    assert "redis-cli" in check and "ping" in check
    assert " -a " not in f" {check} " and "change-me" not in check
    assert _environment(redis)["REDISCLI_AUTH"] == "change-me"


def test_producer_profile_and_dependencies(config: dict[str, Any]) -> None:
    services = config["services"]
    assert services["producer"]["profiles"] == ["producer"]
    for name in APP_SERVICES:
        deps = services[name]["depends_on"]
        assert deps["redis"]["condition"] == "service_healthy", name
    assert "depends_on" not in services["llm"], "the llm server needs no Redis"
    assert "REDIS_URL" not in _environment(services["llm"])
    for name in LONG_RUNNING:
        assert services[name]["restart"] == "unless-stopped", name


def test_app_services_share_image_and_environment(config: dict[str, Any]) -> None:
    services = config["services"]
    images = {services[name]["image"] for name in PYTHON_SERVICES}
    assert images == {IMAGE}, images
    expected = {
        "REDIS_URL": "redis://:change-me@redis:6379/0",
        "OPENAI_BASE_URL": "http://llm:8765/v1",
        "OPENAI_API_KEY": "",
        "SUMMARIZE_MODEL": "sumy-lexrank",
        "SUMMARIZE_RPM": "0",
        "SUMMARIZE_TPM": "0",
    }
    for name in APP_SERVICES:
        env = _environment(services[name])
        assert {k: env.get(k) for k in expected} == expected, name


def test_image_is_built_once_by_llm_and_never_pulled(config: dict[str, Any]) -> None:
    """`up --build --scale worker=3` builds one image, once; nothing tries to pull bulk-summarize."""
    services = config["services"]
    builders = [name for name, service in services.items() if "build" in service]
    assert builders == ["llm"], builders
    build = services["llm"]["build"]
    context = build["context"] if isinstance(build, dict) else build
    assert Path(context).resolve() == ROOT
    assert services["llm"]["image"] == IMAGE
    for name in PYTHON_SERVICES:
        assert services[name].get("pull_policy") == "never", name
    # docker-compose 1.29 makes sure of images in dependency order: every user of the image must
    # come after the service that builds it, or it would try to pull it first.
    for name in APP_SERVICES:
        deps = set(services[name]["depends_on"])
        while "llm" not in deps:
            more = {d for dep in deps for d in (services[dep].get("depends_on") or {})} - deps
            assert more, f"{name} does not start after llm, which builds its image"
            deps |= more


def test_python_services_run_under_an_init(config: dict[str, Any]) -> None:
    """docker-init as PID 1: SIGTERM reaches a process that has no handler yet (a fresh worker)."""
    for name in PYTHON_SERVICES:
        assert config["services"][name].get("init") is True, name


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", str(value))
    assert match and any(match.groups()), value
    return int(match.group(1) or 0) * 60 + float(match.group(2) or 0)


def test_stop_grace_periods(config: dict[str, Any]) -> None:
    services = config["services"]
    assert _seconds(services["llm"]["stop_grace_period"]) == 10
    assert _seconds(services["worker"]["stop_grace_period"]) == 60


def test_redis_never_evicts(config: dict[str, Any]) -> None:
    cmd = _command(config["services"]["redis"])
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"


def test_base_images_have_stand_ins(config: dict[str, Any]) -> None:
    """Every image `make test-compose` needs is made by scripts/standin-images.sh (no Docker Hub here)."""
    script = STANDIN_SCRIPT.read_text(encoding="utf-8")
    made = set(re.findall(r"^(?:PYTHON|REDIS|PROMETHEUS)_TAG=(\S+)$", script, re.MULTILINE))
    base = re.search(r"^FROM\s+(\S+)", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    assert base is not None
    needed = {base.group(1)} | {
        service["image"]
        for name, service in config["services"].items()
        if name not in PYTHON_SERVICES and not service.get("profiles")
    }
    assert needed == made, f"compose/Dockerfile need {sorted(needed)}, the stand-in script makes {sorted(made)}"


def test_prometheus_service(config: dict[str, Any]) -> None:
    prometheus = config["services"]["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus:")
    mounts = _mounts(prometheus)
    assert Path(mounts["/etc/prometheus/prometheus.yml"]).resolve() == PROMETHEUS_CONFIG, mounts
    assert mounts["/prometheus"] == "prometheus-data", mounts
    assert "prometheus-data" in config.get("volumes", {})
    published = {
        str(p.get("published")) if isinstance(p, dict) else str(p).split(":")[-2] for p in prometheus.get("ports", [])
    }
    assert "9090" in published


def test_prometheus_scrapes_every_worker_replica_the_exporter_and_flower(
    config: dict[str, Any], prometheus_config: dict[str, Any]
) -> None:
    jobs = {job["job_name"]: job for job in prometheus_config["scrape_configs"]}
    worker = jobs["worker"]
    # Docker's embedded DNS: one A record per replica of the `worker` service
    assert worker["dns_sd_configs"] == [
        {"names": ["worker"], "type": "A", "port": METRICS_PORT, "refresh_interval": "15s"}
    ]
    assert worker.get("metrics_path", "/metrics") == "/metrics"
    env = _environment(config["services"]["worker"])
    assert env["SUMMARIZE_METRICS_PORT"] == str(METRICS_PORT)
    flower = jobs["flower"]
    assert flower.get("metrics_path", "/metrics") == "/metrics"
    assert flower["static_configs"] == [{"targets": ["flower:5555"]}]
    assert "basic_auth" not in flower, "Flower serves /metrics without auth; no password in this file"
    # one exporter (what Redis holds), scraped by its service name; nothing published on the host
    exporter = config["services"]["exporter"]
    assert jobs["exporter"]["static_configs"] == [{"targets": [f"exporter:{EXPORTER_PORT}"]}]
    assert jobs["exporter"].get("metrics_path", "/metrics") == "/metrics"
    assert str(EXPORTER_PORT) in [str(p) for p in exporter.get("expose", [])]
    assert not exporter.get("ports"), "the exporter is for Prometheus on the compose network only"
    assert "deploy" not in exporter or exporter["deploy"].get("replicas", 1) == 1


def test_grafana_provisioning(config: dict[str, Any]) -> None:
    grafana = config["services"]["grafana"]
    assert grafana["image"].startswith("grafana/grafana")
    mounts = _mounts(grafana)
    assert Path(mounts["/etc/grafana/provisioning"]).resolve() == GRAFANA / "provisioning", mounts
    dashboards_target = next(t for t, src in mounts.items() if Path(src).resolve() == GRAFANA / "dashboards")
    assert _environment(grafana)["GF_SECURITY_ADMIN_PASSWORD"] == "change-me"

    datasources = _load_yaml((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert source["isDefault"] is True

    providers = _load_yaml((GRAFANA / "provisioning" / "dashboards" / "bulk-summarize.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == dashboards_target
    assert (GRAFANA / "dashboards" / "README.md").is_file()
    for dashboard in (GRAFANA / "dashboards").glob("*.json"):
        assert isinstance(json.loads(dashboard.read_text(encoding="utf-8")), dict), dashboard


def test_dashboard_kept_in_the_repo() -> None:
    """deploy/grafana/dashboards/summarize.json: every query on the provisioned datasource (its queries are
    run against a real Prometheus by tests/test_metrics.py)."""
    datasources = _load_yaml((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasources["datasources"][0]["uid"]
    dashboard = json.loads((GRAFANA / "dashboards" / "summarize.json").read_text(encoding="utf-8"))
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    targets = [t for p in panels for t in p.get("targets", [])]
    assert len(targets) >= 10
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
    for t in targets:
        assert t["datasource"]["uid"] == uid and t["expr"].strip(), t


# (3) commands: the same as the docs run by hand


@pytest.mark.parametrize("service", sorted(EXPECTED_COMMANDS))
def test_command_exact(config: dict[str, Any], service: str) -> None:
    assert _command(config["services"][service]) == EXPECTED_COMMANDS[service]


@pytest.mark.parametrize(("service", "canonical"), sorted(CANONICAL.items()))
def test_compose_runs_canonical_command(config: dict[str, Any], service: str, canonical: str) -> None:
    assert shlex.join(_command(config["services"][service])).startswith(canonical)


@pytest.mark.parametrize(("service", "canonical"), sorted(CANONICAL.items()))
def test_compose_docs_show_canonical_command(service: str, canonical: str) -> None:
    text = COMPOSE_DOCS.read_text(encoding="utf-8")
    assert canonical in text, f"docs/compose.md never shows `{canonical}` ({service})"


# (4) no secrets in the file


def test_secret_defaults_are_documented_placeholders() -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    for var, default in re.findall(r"\$\{(\w+):?-([^}]*)\}", text):
        if SECRETISH.search(var):
            assert default in ALLOWED_SECRET_DEFAULTS, f"${{{var}}} defaults to a literal secret"
    assert not re.search(r"\bsk-[A-Za-z0-9_-]{12,}", text), "something like an API key is in compose.yaml"
    assert "-----BEGIN" not in text
    for password in re.findall(r"rediss?://[^:/@\s]*:([^@\s]+)@", text):
        assert re.fullmatch(r"\$\{REDIS_PASSWORD:-change-me\}", password), "a literal password in a redis URL"


def test_secret_settings_come_from_variables(raw_config: dict[str, Any]) -> None:
    services = raw_config["services"]
    for name, service in services.items():
        for key, value in _environment(service).items():
            if SECRETISH.search(key) or key == "REDIS_URL":
                assert value == "" or "${" in value, f"{name}: {key} is a literal, not a variable"
    cmd = _command(services["redis"])
    assert cmd[cmd.index("--requirepass") + 1] == "${REDIS_PASSWORD:-change-me}"
    url = _environment(services["worker"])["REDIS_URL"]
    assert url == "redis://:${REDIS_PASSWORD:-change-me}@redis:6379/0"


def test_every_placeholder_is_replaced_by_the_environment(tmp_env_dir: Path) -> None:
    """With the variables set, no `change-me` is left: every secret site reads its variable."""
    env = {
        "REDIS_PASSWORD": "pw-from-env-0123",
        "FLOWER_BASIC_AUTH": "ops:flower-from-env",
        "OPENAI_API_KEY": "key-from-env",
        "GRAFANA_ADMIN_PASSWORD": "grafana-from-env",
        "FLOWER_PORT": "15555",
        "PROMETHEUS_PORT": "19090",
    }
    out = _compose(*PROFILES, "config", env=env, tmp=tmp_env_dir)
    assert "change-me" not in out
    services = _load_yaml(out)["services"]
    assert _environment(services["grafana"])["GF_SECURITY_ADMIN_PASSWORD"] == "grafana-from-env"
    assert [str(p["published"]) for p in services["flower"]["ports"]] == ["15555"]
    assert [str(p["published"]) for p in services["prometheus"]["ports"]] == ["19090"]
    assert _command(services["redis"])[-1] == "pw-from-env-0123"
    assert _environment(services["redis"])["REDISCLI_AUTH"] == "pw-from-env-0123"
    assert _environment(services["flower"])["FLOWER_BASIC_AUTH"] == "ops:flower-from-env"
    for name in APP_SERVICES:
        env_vars = _environment(services[name])
        assert env_vars["REDIS_URL"] == "redis://:pw-from-env-0123@redis:6379/0", name
        assert env_vars["OPENAI_API_KEY"] == "key-from-env", name
