"""Bespoke Curator (PyPI bespokelabs-curator) as a peer: its own venv, and one measured run of its online mode.

Curator is installed into bench/.venvs/curator-<version>, created here on first use with `python -m venv` and
pip (pinned below), reused while its marker matches; the project's venv is never touched. Each run starts
bench/curator_child.py in that venv as a child process (own rusage, from os.wait4), with no internet:

- TIKTOKEN_CACHE_DIR = <venv site-packages>/litellm/litellm_core_utils/tokenizers: litellm ships tiktoken's
  encodings there under tiktoken's cache names (sha1 of the blob URL; cl100k_base is 9b5ad71b...), and
  Curator's openai backend calls tiktoken.get_encoding("cl100k_base") to estimate tokens of every request;
- LITELLM_LOCAL_MODEL_COST_MAP=True: litellm reads its bundled cost map instead of fetching it at import;
- TELEMETRY_ENABLED=false: no PostHog events;
- CURATOR_CACHE_DIR, HOME, HF_HOME: a temporary directory of this run; CURATOR_DISABLE_CACHE=true makes its
  fingerprint random, so a run never reuses an earlier run's responses; HF_*_OFFLINE=1 for datasets.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.stack import ROOT
from tests.faultserver import FaultServer

from .common import Ctx, Rates, cpu_seconds, fault_pid, log, machine_busy, run_child, self_cpu

VERSION = "0.1.31"
#: What pip installs. Besides Curator itself, the versions its online openai path runs through, as resolved
#: when this peer was added (so a later release of litellm or datasets cannot change the measurement).
REQUIREMENTS = (
    f"bespokelabs-curator=={VERSION}",
    "litellm==1.83.7",
    "openai==2.30.0",
    "aiohttp==3.13.5",
    "tiktoken==0.12.0",
    "datasets==3.6.0",
    "pyarrow==26.0.1",
    "pydantic==2.12.5",
    "rich==13.9.4",
    "instructor==1.16.0",
)
VENVS = ROOT / "bench" / ".venvs"
VENV = VENVS / f"curator-{VERSION}"
CHILD = Path(__file__).resolve().parent / "curator_child.py"
RESULT_TAG = "CURATOR_BENCH_RESULT "  # the child's result line starts with this (see curator_child.py)
_MARKER = ".bench-requirements"
_CL100K = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
API_KEY = "sk-curator-bench-not-a-secret"


# ---------------------------------------------------------------------------------------------- the venv


def _python(venv: Path = VENV) -> Path:
    return venv / "bin" / "python"


def tokenizers_dir(venv: Path = VENV) -> Path:
    """litellm's bundled tiktoken cache inside the venv (checked: cl100k_base must be there under its cache name)."""
    found = sorted(venv.glob("lib/python3*/site-packages/litellm/litellm_core_utils/tokenizers"))
    if not found:
        raise RuntimeError(f"no litellm tokenizers directory in {venv}")
    cache_name = hashlib.sha1(_CL100K.encode()).hexdigest()
    if not (found[0] / cache_name).is_file():
        raise RuntimeError(f"{found[0]} lacks tiktoken's cl100k_base file {cache_name}")
    return found[0]


def _installed_version(venv: Path) -> str | None:
    if not _python(venv).exists():
        return None
    probe = subprocess.run(
        [str(_python(venv)), "-I", "-c", "import importlib.metadata as m; print(m.version('bespokelabs-curator'))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def ensure_venv() -> Path:
    """Curator's venv, created (a minute or two, from the package registry) unless a matching one exists."""
    VENVS.mkdir(parents=True, exist_ok=True)
    wanted = "\n".join(REQUIREMENTS) + "\n"
    with open(VENVS / f"curator-{VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two benchmark runs at once: one installs, the other waits
        marker = VENV / _MARKER
        if marker.exists() and marker.read_text() == wanted and _installed_version(VENV) == VERSION:
            tokenizers_dir(VENV)
            return VENV
        log(f"creating Curator's venv {VENV} ({', '.join(REQUIREMENTS)})")
        t0 = time.monotonic()
        shutil.rmtree(VENV, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
        pip_log = VENV / "pip-install.log"
        with open(pip_log, "w") as out:
            pip = subprocess.run(
                [str(_python()), "-m", "pip", "install", "--disable-pip-version-check", *REQUIREMENTS],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=1800,
            )
        if pip.returncode != 0:
            raise RuntimeError(
                f"pip install into {VENV} failed ({pip.returncode}); see {pip_log}:\n" + pip_log.read_text()[-2000:]
            )
        if _installed_version(VENV) != VERSION:
            raise RuntimeError(f"{VENV}: bespokelabs-curator is not {VERSION} after install")
        tokenizers_dir(VENV)
        marker.write_text(wanted)
        log(f"Curator's venv ready in {time.monotonic() - t0:.0f}s")
        return VENV


def child_env(ctx: Ctx, tmp: Path) -> dict[str, str]:
    """The whole environment of Curator's process: nothing of ours or of the caller's shell leaks in."""
    return {
        "PATH": f"{VENV / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp),
        "LANG": "C.UTF-8",
        "BENCH_TMP": str(ctx.workdir),  # where run_child keeps the child's stdout/stderr meanwhile
        "TIKTOKEN_CACHE_DIR": str(tokenizers_dir()),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "TELEMETRY_ENABLED": "false",
        "CURATOR_CACHE_DIR": str(tmp / "curator-cache"),
        "CURATOR_DISABLE_CACHE": "true",
        "HF_HOME": str(tmp / "hf"),
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "OPENAI_API_KEY": API_KEY,
    }


# ---------------------------------------------------------------------------------------------- one run


@dataclass
class CuratorRun:
    rates: Rates  # steady window from the server's completion times; end_to_end over the LLM(...) call
    concurrency: int
    call_wall: float  # seconds of the LLM(...) call alone, measured in the child
    call_cpu: float  # CPU seconds of that call, measured in the child
    wall: float  # the child process, start to exit
    cpu: float  # CPU seconds of the child process (os.wait4)
    net_cpu: float  # cpu less Curator's start-up (imports, LLM construction), like PeerRun.net_cpu
    maxrss_kb: int
    server_cpu: float
    ok: int
    failed: int
    server: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    foreign_cores: float = 0.0

    @property
    def jobs_per_s(self) -> float:
        """Jobs over the whole LLM(...) call: what a user waits for."""
        return self.ok / self.call_wall if self.call_wall > 0 else float("nan")


def _child(ctx: Ctx, path: Path, base_url: str, concurrency: int, timeout: float) -> tuple[Any, dict[str, Any]]:
    tmp = ctx.workdir / f"curator-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        run = run_child(
            [
                str(_python()),
                "-I",
                str(CHILD),
                "--input",
                str(path),
                "--base-url",
                base_url,
                "--workdir",
                str(tmp / "work"),
                "--concurrency",
                str(concurrency),
                "--api-key",
                API_KEY,
            ],
            child_env(ctx, tmp),
            timeout=timeout,
            cwd=tmp,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if run.returncode != 0 or not lines:
        raise RuntimeError(f"Curator's child failed ({run.returncode}):\n{run.stdout[-1500:]}\n{run.stderr[-3000:]}")
    report: dict[str, Any] = json.loads(lines[-1][len(RESULT_TAG) :])
    return run, report


_STARTUP: list[float] = []


def startup_cpu(ctx: Ctx, server: FaultServer) -> float:
    """CPU seconds of Curator's process with no article: imports, LLM construction (median of 3, measured once).

    About 4-5 s of CPU, so its noise matters even against thousands of requests: hence the median. The
    construction sends one rate-limit probe (an empty chat request) to the server, so this needs it running.
    """
    if not _STARTUP:
        empty = ctx.workdir / "curator-empty.jsonl"
        empty.write_text("")
        runs = sorted((_child(ctx, empty, server.url, 200, timeout=300)[0] for _ in range(3)), key=lambda r: r.cpu)
        _STARTUP.append(runs[1].cpu)
        log(
            f"Curator start-up: {', '.join(f'{r.cpu:.2f}' for r in runs)}s CPU (median taken), "
            f"{runs[1].wall:.1f}s wall, peak RSS {runs[1].maxrss_kb // 1024} MB"
        )
    return _STARTUP[0]


def run_curator(
    ctx: Ctx, server: FaultServer, path: Path, n: int, concurrency: int = 200, timeout: float = 600
) -> CuratorRun:
    ensure_venv()
    startup = startup_cpu(ctx, server)
    server.reset()
    server_cpu0 = cpu_seconds(fault_pid(server))
    busy0, self0 = machine_busy(), self_cpu()
    run, report = _child(ctx, path, server.url, concurrency, timeout)
    server_cpu = cpu_seconds(fault_pid(server)) - server_cpu0
    busy, mine = machine_busy() - busy0, self_cpu() - self0
    stats = server.stats()
    if report.get("rows") != n:
        raise RuntimeError(f"Curator read {report.get('rows')} articles, expected {n}")
    # The server's completion times of Curator's requests give the steady window; end-to-end is the call.
    rates = Rates.of(stats.get("ok_times", []), float(report["start"]), concurrency)
    rates.end_to_end = int(report["ok"]) / float(report["call_wall"])
    foreign = max(0.0, busy - run.cpu - server_cpu - mine) / run.wall
    ctx.foreign.append(foreign)
    with contextlib.suppress(KeyError):
        stats.pop("by_article")
    return CuratorRun(
        rates=rates,
        concurrency=concurrency,
        call_wall=float(report["call_wall"]),
        call_cpu=float(report["call_cpu"]),
        wall=run.wall,
        cpu=run.cpu,
        net_cpu=max(0.0, run.cpu - startup),
        maxrss_kb=run.maxrss_kb,
        server_cpu=server_cpu,
        ok=int(report["ok"]),
        failed=int(report["failed"]),
        server=stats,
        report=report,
        foreign_cores=foreign,
    )


def describe(label: str, r: CuratorRun) -> str:
    srv = r.server
    return (
        f"{label}: {r.ok} ok / {r.failed} failed, {r.jobs_per_s:.1f} jobs/s over the LLM(...) call "
        f"({r.call_wall:.1f}s), steady {r.rates.steady:.1f}/s, call CPU {r.call_cpu:.1f}s, process CPU "
        f"{r.cpu:.1f}s (net of start-up {r.net_cpu:.1f}s), peak RSS {r.maxrss_kb // 1024} MB, server max in "
        f"flight {srv.get('max_in_flight')}, statuses {srv.get('statuses')}, other processes on the machine "
        f"used {r.foreign_cores:.2f} cores meanwhile"
    )
