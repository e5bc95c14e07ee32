"""What every benchmark shares: figures, synthetic articles, process accounting, a fresh stack per benchmark."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from contract.record import Final
from contract.settings import Settings
from contract.store import batched
from producer.api import Batch, Client
from scripts.stack import ROOT, Stack
from tests.faultserver import FaultServer

# ---------------------------------------------------------------------------------------------- figures


@dataclass
class Figure:
    """One line of the final table: a measured value, what it is compared with, and the target."""

    bench: str
    name: str
    value: float
    unit: str = ""
    baseline: str = ""
    target: str = ""
    #: True met, False missed, None when the figure has no target
    ok: bool | None = None
    note: str = ""

    def show(self) -> str:
        mark = {True: "ok", False: "MISS", None: ""}[self.ok]
        extra = f" (vs {self.baseline})" if self.baseline else ""
        tgt = f"  target {self.target} {mark}" if self.target else ""
        return f"  {self.name}: {fmt(self.value)} {self.unit}{extra}{tgt}"


def fmt(v: float) -> str:
    if v != v:  # NaN
        return "n/a"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"


@dataclass
class Ctx:
    """Options of this run, and the figures collected so far."""

    quick: bool
    workdir: Path
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: cores used by unrelated processes during each measured run of the current benchmark
    foreign: list[float] = field(default_factory=list)

    def add(self, fig: Figure) -> Figure:
        self.figures.append(fig)
        print(fig.show(), flush=True)
        return fig

    def note(self, bench: str, text: str) -> None:
        self.notes.append(f"{bench}: {text}")
        print(f"  note: {text}", flush=True)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- machine


def machine_info() -> dict[str, str]:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for mod in ("celery", "kombu", "redis", "openai"):
        with contextlib.suppress(Exception):
            versions[mod] = str(__import__(mod).__version__)
    redis_v = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load (1 min) at start": f"{os.getloadavg()[0]:.2f}",
        "redis-server": next((w.split("=", 1)[1] for w in redis_v if w.startswith("v=")), "?"),
        "packages": ", ".join(f"{k} {v}" for k, v in versions.items()),
    }


# ---------------------------------------------------------------------------------------------- articles

_VOCAB = (
    "council harbor bridge vote city plan million budget residents traffic spring mayor river school "
    "teachers district board report state federal grant court ruling judge appeal company workers union "
    "strike contract market prices energy wind solar farm drought rain season hospital patients nurses "
    "clinic health officials police station fire crews road construction museum exhibit library festival "
    "team season coach game league players fans stadium election voters ballot measure tax housing rent "
    "developers neighborhood park trail water supply reservoir engineers study data survey percent year "
    "week monday tuesday friday morning evening said told announced according statement spokesperson"
)
_WORDS = _VOCAB.split()


def _sentence_pool(rng: random.Random, n: int = 1500) -> list[str]:
    pool = []
    for _ in range(n):
        words = rng.choices(_WORDS, k=rng.randint(14, 30))
        pool.append(" ".join(words).capitalize() + ".")
    return pool


def articles(n: int, size: int = 3000, seed: int = 7) -> Iterator[dict[str, str]]:
    """`n` deterministic synthetic news-like articles of about `size` characters, with ids a000000..."""
    rng = random.Random(seed)
    pool = _sentence_pool(rng)
    for i in range(n):
        parts: list[str] = [f"Article {i}."]
        length = len(parts[0])
        while length < size:
            s = pool[rng.randrange(len(pool))]
            parts.append(s)
            length += len(s) + 1
        yield {"id": f"a{i:06d}", "text": " ".join(parts)}


def write_jsonl(path: Path, n: int, size: int = 3000) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for a in articles(n, size):
            f.write(json.dumps(a) + "\n")
    return path


# ---------------------------------------------------------------------------------------------- processes


def group_pids(pgid: int) -> list[int]:
    """Every live process in a process group (a worker and anything it forked)."""
    out = []
    for proc in psutil.process_iter():
        with contextlib.suppress(OSError):  # gone since it was listed
            if os.getpgid(proc.pid) == pgid:
                out.append(proc.pid)
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process (all its threads, not its children), in seconds; 0 if it is gone."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def group_cpu_seconds(pgid: int) -> float:
    return sum(cpu_seconds(p) for p in group_pids(pgid))


def rss_kb(pid: int) -> int:
    """Resident set size of one process now, in KiB (VmRSS); 0 if it is gone."""
    try:
        return int(psutil.Process(pid).memory_info().rss) // 1024
    except psutil.Error:
        return 0


def peak_rss_kb(pid: int) -> int:
    """Peak resident set size of a running process so far, in KiB; 0 if it is gone.

    The kernel's high-water mark (VmHWM in /proc/PID/status): psutil has no peak RSS on Linux, and getrusage
    gives it only for this process and children it has waited for.
    """
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


@dataclass
class ChildRun:
    returncode: int
    wall: float
    cpu: float
    maxrss_kb: int
    stdout: str
    stderr: str


def run_child(
    argv: Sequence[str], env: dict[str, str], stdin: str | None = None, timeout: float = 600, cwd: Path = ROOT
) -> ChildRun:
    """Run a command to completion and account for it alone (os.wait4 gives that child's own rusage)."""
    log_out = Path(env.get("BENCH_TMP", "/tmp")) / f"child-{uuid.uuid4().hex[:8]}"
    with open(f"{log_out}.out", "w+b") as out, open(f"{log_out}.err", "w+b") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(argv),
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
        )
        if stdin is not None and proc.stdin is not None:
            proc.stdin.write(stdin.encode())
            proc.stdin.close()
        try:
            deadline = time.monotonic() + timeout
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    proc.kill()
                    pid, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.01)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        result = ChildRun(
            proc.returncode,
            wall,
            usage.ru_utime + usage.ru_stime,
            usage.ru_maxrss,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )
    for suffix in (".out", ".err"):
        with contextlib.suppress(OSError):
            os.unlink(f"{log_out}{suffix}")
    return result


def self_maxrss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def self_cpu() -> float:
    """CPU seconds of this process (the benchmark driver, in-process producer and pollers included)."""
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores), to tell noise apart."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + t.irq + t.softirq + t.steal)


# ---------------------------------------------------------------------------------------------- the stack


def fault_pid(server: FaultServer) -> int:
    proc = getattr(server, "_proc", None)
    return int(proc.pid) if proc is not None else 0


@contextlib.contextmanager
def bench_stack(ctx: Ctx, name: str, server: FaultServer | None = None, **env: str) -> Iterator[Stack]:
    """A fresh redis-server and the environment every benchmark process shares; everything stops on exit."""
    workdir = ctx.workdir / f"{name}-{uuid.uuid4().hex[:6]}"
    stack = Stack(workdir=workdir)
    try:
        stack.env = {k: v for k, v in os.environ.items() if not k.startswith(("SUMMARIZE_", "OPENAI_"))}
        stack.env.update(
            {
                "PYTHONPATH": str(ROOT),
                "BENCH_TMP": str(ctx.workdir),
                "SUMMARIZE_MODEL": "fake-model",
                "OPENAI_API_KEY": "sk-bench-not-a-secret",
                "OPENAI_BASE_URL": server.url if server else "http://127.0.0.1:9/v1",
                "SUMMARIZE_QUEUE": f"bench-{name}",
                "SUMMARIZE_KEY_PREFIX": f"bench-{name}",
                # No retries nor lease trouble at these sizes: the defaults are already what a user runs.
            }
        )
        stack.env.update(env)
        stack.redis()
        yield stack
    finally:
        stack.stop()


def settings_of(stack: Stack) -> Settings:
    return Settings.from_env(stack.env)


def finish_times(client: Client, batch_id: str) -> list[float]:
    """When each job of the batch was stored as done (its final record's time), sorted."""
    store = client.store
    out: list[float] = []
    for chunk in batched(store.r.hscan_iter(store.keys.batch_out(batch_id), count=1000), 1000):
        for _, blob in chunk:
            final = Final.unpack(blob)
            if final.status == "done" and final.finished_ms:
                out.append(final.finished_ms / 1000)
    out.sort()
    return out


def wait_batch(batch: Batch, total: int, timeout: float, poll: float = 0.2) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = batch.status()
        if status["done"] + status["failed"] >= total:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch {batch.id} not finished after {timeout:.0f}s: {status}")
        time.sleep(poll)


@dataclass
class Rates:
    """Jobs/s of one run, two ways."""

    steady: float  # (N - C) completions / time from the C-th completion to the last
    end_to_end: float  # N / time from submit (or process start) to the last completion
    jobs: int

    @classmethod
    def of(cls, times: Sequence[float], start: float, concurrency: int) -> Rates:
        n = len(times)
        if n == 0:
            return cls(float("nan"), float("nan"), 0)
        t = sorted(times)
        c = min(concurrency, n - 1)
        span = t[-1] - t[c - 1] if c >= 1 else 0.0
        steady = (n - c) / span if span > 0 else float("nan")
        total = t[-1] - start
        return cls(steady, n / total if total > 0 else float("nan"), n)


STEADY_DEF = (
    "steady window = from the C-th completion (end of the first wave, C = total in-flight slots) "
    "to the last one: (N - C) jobs over that span; end-to-end = N jobs from submit to last completion"
)


def ensure_clean_exit(stack: Stack) -> None:
    """Fail loudly if a process of the stack died under the benchmark."""
    for p in stack.procs:
        if p.popen is not None and p.popen.poll() is not None:
            raise RuntimeError(f"{p.name} exited with {p.popen.returncode}:\n{p.tail()}")
