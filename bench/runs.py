"""One measured run of our system (fresh Redis, N workers, one batch) and one of the cookbook-style peer."""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from producer.api import Client
from scripts.stack import BIN, Proc
from tests.faultserver import FaultServer

from .common import (
    Ctx,
    Rates,
    bench_stack,
    cpu_seconds,
    ensure_clean_exit,
    fault_pid,
    finish_times,
    group_cpu_seconds,
    log,
    machine_busy,
    peak_rss_kb,
    rss_kb,
    run_child,
    self_cpu,
    settings_of,
    wait_batch,
)


class MemSampler(threading.Thread):
    """Samples VmRSS of some processes every `period` s; VmHWM is read at the end by the caller."""

    def __init__(self, pids: list[int], period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pids, self.period = pids, period
        self.peak_rss: dict[int, int] = dict.fromkeys(pids, 0)
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.period):
            for pid in self.pids:
                self.peak_rss[pid] = max(self.peak_rss[pid], rss_kb(pid))

    def stop(self) -> None:
        self.halt.set()
        self.join(2)


@dataclass
class OursRun:
    rates: Rates
    workers: int
    concurrency: int
    wall: float
    worker_cpu: float = 0.0
    redis_cpu: float = 0.0
    server_cpu: float = 0.0
    producer_cpu: float = 0.0
    producer_maxrss_kb: int = 0
    worker_idle_rss_kb: list[int] = field(default_factory=list)
    worker_hwm_kb: list[int] = field(default_factory=list)
    worker_peak_rss_kb: list[int] = field(default_factory=list)
    server: dict[str, Any] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    #: cores used meanwhile by processes that are not part of this run (other users of the machine)
    foreign_cores: float = 0.0


def run_ours(
    ctx: Ctx,
    name: str,
    server: FaultServer,
    path: Path,
    n: int,
    workers: int = 1,
    concurrency: int = 200,
    cli: bool = False,
    timeout: float = 300,
    extra_env: dict[str, str] | None = None,
    on_running: Any = None,
) -> OursRun:
    """Start `workers` worker processes on a fresh Redis, submit the file as one batch, wait for it.

    With cli=True the producer is `summarize submit FILE` in its own process (so its CPU and memory can be
    told apart); otherwise Client().submit_path in this process.
    """
    server.reset()
    env = {"SUMMARIZE_CONCURRENCY": str(concurrency), **(extra_env or {})}
    with bench_stack(ctx, name, server, **env) as stack:
        redis_proc = stack.procs[0]
        # SUMMARIZE_CONCURRENCY (in env) sizes the LLM pool; -c would size the message threads instead.
        procs: list[Proc] = [stack.worker(f"{name}-w{i + 1}") for i in range(workers)]
        idle = [rss_kb(p.pid) for p in procs]
        sampler = MemSampler([p.pid for p in procs])
        sampler.start()
        client = Client(settings_of(stack))
        batch_id = f"{name}-{int(time.time())}"
        cpu0 = (
            [group_cpu_seconds(p.pid) for p in procs],
            group_cpu_seconds(redis_proc.pid),
            cpu_seconds(fault_pid(server)),
        )
        busy0, self0 = machine_busy(), self_cpu()
        start = time.time()
        producer_cpu, producer_rss = 0.0, 0
        try:
            if cli:
                run = run_child([str(BIN / "summarize"), "submit", str(path), "--batch-id", batch_id, "-q"], stack.env)
                if run.returncode != 0:
                    raise RuntimeError(f"summarize submit failed ({run.returncode}): {run.stderr[-2000:]}")
                producer_cpu, producer_rss = run.cpu, run.maxrss_kb
                batch = client.batch(batch_id)
            else:
                batch = client.submit_path(str(path), batch_id=batch_id)
            if on_running is not None:
                on_running(procs)
            status = wait_batch(batch, n, timeout)
            end = time.time()
            cpu1 = (
                [group_cpu_seconds(p.pid) for p in procs],
                group_cpu_seconds(redis_proc.pid),
                cpu_seconds(fault_pid(server)),
            )
            busy, mine = machine_busy() - busy0, self_cpu() - self0
            ensure_clean_exit(stack)
            hwm = [peak_rss_kb(p.pid) for p in procs]
        finally:
            sampler.stop()
        times = finish_times(client, batch_id)
        client.close()
        result = OursRun(
            rates=Rates.of(times, start, workers * concurrency),
            workers=workers,
            concurrency=concurrency,
            wall=end - start,
            worker_cpu=sum(cpu1[0]) - sum(cpu0[0]),
            redis_cpu=cpu1[1] - cpu0[1],
            server_cpu=cpu1[2] - cpu0[2],
            producer_cpu=producer_cpu,
            producer_maxrss_kb=producer_rss,
            worker_idle_rss_kb=idle,
            worker_hwm_kb=hwm,
            worker_peak_rss_kb=[sampler.peak_rss[p.pid] for p in procs],
            server=server.stats(),
            status=status,
        )
        ours = result.worker_cpu + result.redis_cpu + result.server_cpu + producer_cpu + mine
        result.foreign_cores = max(0.0, busy - ours) / result.wall
        ctx.foreign.append(result.foreign_cores)
    if status["failed"]:
        log(f"{name}: {status['failed']} job(s) failed")
    return result


@dataclass
class PeerRun:
    rates: Rates
    concurrency: int
    wall: float
    cpu: float
    maxrss_kb: int
    server_cpu: float
    failed: int
    server: dict[str, Any]
    foreign_cores: float = 0.0
    #: CPU seconds of the run less the peer's own start-up (imports), comparable with the worker's delta
    net_cpu: float = 0.0


_PEER_STARTUP: list[float] = []


def peer_startup_cpu(ctx: Ctx) -> float:
    """CPU seconds the peer spends importing and starting with no article to send (measured once)."""
    if not _PEER_STARTUP:
        empty = ctx.workdir / "empty.jsonl"
        empty.write_text("")
        run = run_child(
            [
                sys.executable,
                "-m",
                "bench.peer",
                "--input",
                str(empty),
                "--output",
                str(empty) + ".out",
                "--base-url",
                "http://127.0.0.1:9/v1",
            ],
            {"PATH": "/usr/bin:/bin"},
        )
        _PEER_STARTUP.append(run.cpu if run.returncode == 0 else 0.0)
    return _PEER_STARTUP[0]


def run_peer(ctx: Ctx, server: FaultServer, path: Path, concurrency: int) -> PeerRun:
    server.reset()
    out = ctx.workdir / f"peer-{concurrency}-{int(time.time() * 1000)}.jsonl"
    server_cpu0 = cpu_seconds(fault_pid(server))
    busy0, self0 = machine_busy(), self_cpu()
    run = run_child(
        [
            sys.executable,
            "-m",
            "bench.peer",
            "--input",
            str(path),
            "--output",
            str(out),
            "--concurrency",
            str(concurrency),
            "--base-url",
            server.url,
        ],
        {"PATH": "/usr/bin:/bin"},
    )
    server_cpu = cpu_seconds(fault_pid(server)) - server_cpu0
    busy, mine = machine_busy() - busy0, self_cpu() - self0
    if run.returncode != 0:
        raise RuntimeError(f"peer failed ({run.returncode}): {run.stderr[-2000:]}")
    report = json.loads(run.stdout.strip().splitlines()[-1])
    out.unlink(missing_ok=True)
    foreign = max(0.0, busy - run.cpu - server_cpu - mine) / run.wall
    ctx.foreign.append(foreign)
    return PeerRun(
        Rates.of(report["done"], report["start"], concurrency),
        concurrency,
        run.wall,
        run.cpu,
        run.maxrss_kb,
        server_cpu,
        int(report["failed"]),
        server.stats(),
        foreign,
        max(0.0, run.cpu - peer_startup_cpu(ctx)),
    )


def describe(label: str, r: OursRun | PeerRun) -> str:
    rates = r.rates
    srv = r.server
    return (
        f"{label}: {rates.jobs} jobs, steady {rates.steady:.1f}/s, end-to-end {rates.end_to_end:.1f}/s, "
        f"server max in flight {srv.get('max_in_flight')}, statuses {srv.get('statuses')}, "
        f"other processes on the machine used {r.foreign_cores:.2f} cores meanwhile"
    )
