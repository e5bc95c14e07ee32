"""What WAIT costs: jobs/s and CPU per job of one worker behind Redis Sentinel (a primary, one replica, three
sentinels on loopback), with SUMMARIZE_REDIS_WAIT_REPLICAS=1 (each settle of final outcomes and each
submitted chunk waits for the replica) against 0 (acknowledged by the primary alone), at zero LLM latency so
the store's path is all there is to measure."""

from __future__ import annotations

import os
import time

from contract.settings import Settings
from producer.api import Client
from tests.faultserver import FaultServer
from tests.sentinelstack import Sentinels, sentinel_stack

from .common import Ctx, Figure, group_cpu_seconds, log, wait_batch, write_jsonl

NAME = "failover"
CONCURRENCY = 200


def _waits(ha: Sentinels) -> int:
    """WAIT commands the primary has served so far."""
    c = ha.client(ha.primary())
    try:
        return int(c.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))
    finally:
        c.close()


def _one(ha: Sentinels, server: FaultServer, path: str, n: int, wait: int) -> tuple[float, float, float]:
    """(jobs/s end to end, worker CPU ms per job, Redis primary CPU ms per job) of one batch."""
    server.reset()
    prefix = f"fo{wait}x{int(time.time())}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SUMMARIZE_", "OPENAI_", "REDIS_"))},
        **ha.env,
        "OPENAI_BASE_URL": server.url,
        "OPENAI_API_KEY": "sk-bench",
        "SUMMARIZE_MODEL": "fake-model",
        "SUMMARIZE_KEY_PREFIX": prefix,
        "SUMMARIZE_QUEUE": prefix,
        "SUMMARIZE_CONCURRENCY": str(CONCURRENCY),
        "SUMMARIZE_METRICS_PORT": "0",
        "SUMMARIZE_REDIS_WAIT_REPLICAS": str(wait),
    }
    worker = ha.stack.worker(f"failover-w{wait}", env=env)
    client = Client(Settings.from_env(env))
    primary = ha.procs[ha.primary()]
    cpu0, redis0, waits0 = group_cpu_seconds(worker.pid), group_cpu_seconds(primary.pid), _waits(ha)
    started = time.monotonic()
    batch = client.submit_path(path, batch_id=f"{prefix}-b")
    status = wait_batch(batch, n, 300)
    took = time.monotonic() - started
    cpu, redis_cpu = group_cpu_seconds(worker.pid) - cpu0, group_cpu_seconds(primary.pid) - redis0
    assert status["done"] == n, status
    waits = _waits(ha) - waits0
    assert (waits > 0) == bool(wait), waits
    log(f"WAIT {wait}: {waits} WAIT commands for {n} jobs ({n / max(waits, 1):.0f} jobs each)")
    client.close()
    worker.stop()
    return n / took, 1000 * cpu / n, 1000 * redis_cpu / n


def run(ctx: Ctx) -> None:
    n = 1000 if ctx.quick else 4000
    path = str(write_jsonl(ctx.workdir / f"failover-{n}.jsonl", n))
    with sentinel_stack() as ha, FaultServer(latency=0.0) as server:
        off = _one(ha, server, path, n, 0)
        log(f"WAIT off: {off[0]:.0f} jobs/s, worker {off[1]:.2f} ms CPU/job, Redis {off[2]:.2f} ms CPU/job")
        on = _one(ha, server, path, n, 1)
        log(f"WAIT on: {on[0]:.0f} jobs/s, worker {on[1]:.2f} ms CPU/job, Redis {on[2]:.2f} ms CPU/job")
    ctx.note(
        NAME,
        f"{n} jobs at 0 s latency, 1 worker x {CONCURRENCY}, behind Sentinel (1 replica, 3 sentinels, loopback); "
        "WAIT 1 after each settle of final outcomes and each 500-job chunk vs SUMMARIZE_REDIS_WAIT_REPLICAS=0",
    )
    ctx.add(
        Figure(NAME, "jobs/s with WAIT 1 / without", on[0] / off[0], "x", baseline=f"{on[0]:.0f} vs {off[0]:.0f}/s")
    )
    ctx.add(
        Figure(
            NAME,
            "worker CPU per job with WAIT 1 / without",
            on[1] / off[1],
            "x",
            baseline=f"{on[1]:.2f} vs {off[1]:.2f} ms",
        )
    )
    ctx.add(
        Figure(
            NAME,
            "Redis primary CPU per job with WAIT 1 / without",
            on[2] / off[2],
            "x",
            baseline=f"{on[2]:.2f} vs {off[2]:.2f} ms",
        )
    )
