"""Start and stop the real processes of the system: redis-server, the local LLM server, Celery workers, Flower.

Used by `make demo` / `make up`, by the test suite's fixtures and by the benchmarks, so all three run the
same commands the README and compose.yaml show.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
#: Flower's options (the task list's columns), the same for `make up`, the tests and `celery -A worker flower`
FLOWER_CONFIG = ROOT / "flowerconfig.py"
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A preexec_fn making the child get `sig` when the process starting it dies, however it dies
    (SIGKILL and the OOM killer included), so no redis-server or worker outlives `make up`. Linux only
    (None elsewhere). The parent must start its children from the thread that lives as long as it does:
    the signal follows the death of the thread that forked."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork: the child only calls it
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), sig)

    return preexec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(check: object, what: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it was ready")
        try:
            if check():  # type: ignore[operator]
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout}s")


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as r:
        return bool(r.status == 200)


def port_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


@dataclass
class Proc:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    #: ends with the process that started it, even one killed with SIGKILL (see die_with_parent)
    tied: bool = False
    #: the signal it gets then: SIGTERM (a graceful stop) unless it keeps nothing worth one
    death_signal: int = signal.SIGTERM

    def start(self) -> Proc:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        # Its own process group, so a stop reaches the children (prefork, uvicorn) too.
        self.popen = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
            preexec_fn=die_with_parent(self.death_signal) if self.tied else None,  # one prctl call
        )
        out.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def signal(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        self.signal(signal.SIGTERM)
        return self.reap(time.monotonic() + timeout)

    def reap(self, deadline: float) -> int | None:
        """Wait for the process to exit until `deadline` (monotonic), then SIGKILL it; its exit code."""
        if self.popen is None:
            return None
        try:
            self.popen.wait(max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)
        return self.popen.returncode

    def kill9(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@dataclass
class Stack:
    """A set of processes sharing one environment (REDIS_URL, OPENAI_BASE_URL, ...)."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="summarize-")))
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    procs: list[Proc] = field(default_factory=list)
    #: every process ends with the one that started the stack (`make up`: a killed terminal or parent)
    tied: bool = False

    def _proc(
        self, name: str, argv: list[str], env: Mapping[str, str] | None = None, death_signal: int = signal.SIGTERM
    ) -> Proc:
        log = self.workdir / f"{name}.log"
        p = Proc(name, argv, {**self.env, **(env or {})}, log, tied=self.tied, death_signal=death_signal)
        self.procs.append(p)
        return p.start()

    def redis(self, port: int | None = None, password: str | None = None, extra: list[str] | None = None) -> Proc:
        """redis-server with the append-only file on, as a broker wants: no eviction, fsync every second."""
        port = port or free_port()
        data = self.workdir / f"redis-{port}"
        data.mkdir(parents=True, exist_ok=True)
        argv = [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--maxmemory-policy",
            "noeviction",
        ]
        if password:
            argv += ["--requirepass", password]
        proc = self._proc(f"redis-{port}", argv + (extra or []))
        wait_for(lambda: port_open(port), "redis-server", 15, proc.popen)
        auth = f":{password}@" if password else ""
        self.env["REDIS_URL"] = f"redis://{auth}127.0.0.1:{port}/0"
        proc.env["PORT"] = str(port)
        return proc

    def llm(self, port: int | None = None) -> Proc:
        port = port or free_port()
        proc = self._proc("llm", [str(BIN / "summarize"), "llm-serve", "--host", "127.0.0.1", "--port", str(port)])
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/health"), "local LLM server", 60, proc.popen)
        self.env["OPENAI_BASE_URL"] = f"http://127.0.0.1:{port}/v1"
        return proc

    def worker(
        self,
        name: str = "w1",
        concurrency: int | None = None,
        env: Mapping[str, str] | None = None,
        ready_timeout: float = 60,
        wait: bool = True,
    ) -> Proc:
        """A Celery worker process; with wait=False it is returned at once (to see it refuse to start)."""
        argv = [
            str(BIN / "celery"),
            "-A",
            "worker",
            "worker",
            "-n",
            f"{name}@%h",
            "-l",
            "info",
            "--without-mingle",
            "--without-gossip",
        ]
        if concurrency:
            argv += ["-c", str(concurrency)]
        proc = self._proc(name, argv, env)
        if wait:
            wait_for(lambda: b"ready." in proc.log.read_bytes(), f"worker {name}", ready_timeout, proc.popen)
        return proc

    def flower(self, port: int = 5555, env: Mapping[str, str] | None = None) -> Proc:
        argv = [
            str(BIN / "celery"),
            "-A",
            "worker",
            "flower",
            f"--conf={FLOWER_CONFIG}",
            f"--port={port}",
            "--address=127.0.0.1",
        ]
        # Flower keeps nothing (no --persistent): with the parent gone it is killed outright, since its
        # graceful stop can hang reconnecting to a broker that went away at the same moment.
        proc = self._proc("flower", argv, env, death_signal=signal.SIGKILL)
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/healthcheck"), "flower", 60, proc.popen)
        return proc

    def stop(self) -> None:
        # Workers, servers and Flower together, then what they store into (a worker stopping hands its
        # jobs back through Redis).
        stop_all(p for p in self.procs if not p.name.startswith("redis-"))
        stop_all(p for p in self.procs if p.name.startswith("redis-"))
        self.procs.clear()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_all(procs: Iterable[Proc], timeout: float = 20.0) -> None:
    """SIGTERM to every process at once, then wait for them together: a stack of many workers stops in
    about the time of its slowest one, not the sum of them all."""
    procs = list(procs)
    for p in procs:
        p.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        p.reap(deadline)


@contextlib.contextmanager
def running(**kwargs: object) -> Iterator[Stack]:
    stack = Stack(**kwargs)  # type: ignore[arg-type]
    try:
        yield stack
    finally:
        stack.stop()
