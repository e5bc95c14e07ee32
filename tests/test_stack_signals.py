"""`make up` stops everything it started whatever ends it (issue 18, finding 6).

Before, only Ctrl-C did: SIGTERM or SIGHUP to `scripts/demo.py --up` (a process manager, a closed terminal)
left redis-server, llm-serve, the worker and Flower running on their ports. Its Flower shows the task
columns compose's does.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.stack import ROOT, free_port, port_open
from tests.helpers import http_request, wait_until

DEMO_UP = [sys.executable, "scripts/demo.py", "--up"]
#: compose.yaml's FLOWER_TASKS_COLUMNS (and flowerconfig.py's default)
FLOWER_COLUMNS = ["name", "uuid", "state", "args", "result", "exception", "received", "runtime", "worker"]


def children_of(pid: int) -> set[int]:
    """Every process descending from `pid`, read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped runs nothing and holds no port)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def answers(port: int) -> bool:
    try:
        return port_open(port)
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL], ids=lambda s: s.name)
def test_every_signal_that_ends_make_up_ends_its_children(sig: signal.Signals, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SUMMARIZE_", "OPENAI_", "FLOWER_", "REDIS_"))}
    env["SUMMARIZE_METRICS_PORT"] = "0"
    log = tmp_path / "demo.err"
    pids: set[int] = set()
    with open(log, "wb") as err:
        demo = subprocess.Popen(
            [*DEMO_UP, "--workdir", str(tmp_path / "run"), "--flower-port", str(free_port())],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        wait_until(lambda: b"up: stack running" in log.read_bytes() or demo.poll() is not None, 180, "the stack")
        text = log.read_text()
        assert demo.poll() is None, text
        found = re.search(r"Redis at redis://127\.0\.0\.1:(\d+)/0, Flower at http://localhost:(\d+)", text)
        llm = re.search(r"OPENAI_BASE_URL=http://127\.0\.0\.1:(\d+)/v1", text)
        assert found and llm, text
        ports = [int(found.group(1)), int(found.group(2)), int(llm.group(1))]
        assert all(answers(p) for p in ports), ports
        pids = children_of(demo.pid)
        assert len(pids) >= 4, pids  # redis-server, llm-serve, the worker, Flower
        if sig == signal.SIGTERM:
            # The same columns as compose's Flower: args, result and exception among them.
            page = http_request(f"http://127.0.0.1:{ports[1]}/tasks", timeout=10).text
            shown = re.findall(r'<th data-column="([a-z_-]+)"', page)
            assert shown == FLOWER_COLUMNS, shown

        demo.send_signal(sig)
        demo.wait(60)
        if sig != signal.SIGKILL:
            assert demo.returncode == 128 + sig, log.read_text()[-2000:]
        try:
            wait_until(lambda: not any(alive(p) for p in pids), 60, f"every child gone after {sig.name}")
        except AssertionError:
            left = {p: Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")[:200] for p in pids if alive(p)}
            raise AssertionError(f"still running after {sig.name}: {left}") from None
        assert not any(answers(p) for p in ports), ports
    finally:
        # A failed run must not leave its stack behind for the next test (these are this test's processes).
        pids |= children_of(demo.pid) if demo.poll() is None else set()
        if demo.poll() is None:
            demo.kill()
            demo.wait(10)
        for pid in filter(alive, pids):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
