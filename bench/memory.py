"""6. Peak memory of a worker process holding 200 requests in flight (2 s latency), against the same worker idle
and the cookbook-style peer at 200 in flight."""

from __future__ import annotations

from tests.faultserver import FaultServer

from .common import Ctx, Figure, log, write_jsonl
from .runs import describe, run_ours, run_peer

NAME = "memory"
CONCURRENCY = 200
LATENCY = 2.0


def run(ctx: Ctx) -> None:
    n = 3 * CONCURRENCY
    path = write_jsonl(ctx.workdir / f"articles-{n}.jsonl", n)
    with FaultServer(latency=LATENCY) as server:
        ours = run_ours(ctx, "memory", server, path, n, workers=1, concurrency=CONCURRENCY)
        log(describe("ours @ 2s", ours))
        peer = run_peer(ctx, server, path, CONCURRENCY)
        log(describe("peer @ 2s", peer))
    hwm = ours.worker_hwm_kb[0] / 1024
    idle = ours.worker_idle_rss_kb[0] / 1024
    in_flight = ours.server["max_in_flight"]
    ctx.note(
        NAME,
        f"{n} jobs of ~3 KB; VmHWM of the worker process at the end of the run; peer's peak = ru_maxrss from os.wait4",
    )
    ctx.add(
        Figure(
            NAME, "worker peak RSS (VmHWM)", hwm, "MB", baseline=f"idle worker {idle:.0f} MB; max in flight {in_flight}"
        )
    )
    ctx.add(
        Figure(
            NAME,
            "worker peak RSS / peer peak RSS",
            hwm / (peer.maxrss_kb / 1024),
            baseline=f"peer {peer.maxrss_kb / 1024:.0f} MB at {peer.server['max_in_flight']} in flight",
        )
    )
    ctx.add(
        Figure(
            NAME,
            "worker memory per in-flight job (peak - idle)",
            1024 * (hwm - idle) / max(in_flight, 1),
            "KB",
            baseline=f"{in_flight} in flight",
        )
    )
    ctx.add(
        Figure(
            NAME,
            "max requests in flight",
            in_flight,
            baseline=f"{CONCURRENCY} threads",
            target=">= 180",
            ok=in_flight >= 180,
        )
    )
