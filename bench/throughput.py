"""1. Throughput with one worker (concurrency 200) at 0.5 s and 2 s fake latency, against the ideal 200 / latency."""

from __future__ import annotations

from tests.faultserver import FaultServer

from .common import STEADY_DEF, Ctx, Figure, log, write_jsonl
from .runs import describe, run_ours

NAME = "throughput"
CONCURRENCY = 200


def run(ctx: Ctx) -> None:
    waves = 3 if ctx.quick else 5
    n = waves * CONCURRENCY
    path = write_jsonl(ctx.workdir / f"articles-{n}.jsonl", n)
    ctx.note(NAME, f"{n} jobs ({waves}x the concurrency) per run; {STEADY_DEF}")
    for latency in (0.5, 2.0):
        ideal = CONCURRENCY / latency
        with FaultServer(latency=latency) as server:
            r = run_ours(ctx, f"tp{int(latency * 1000)}", server, path, n, workers=1, concurrency=CONCURRENCY)
        log(describe(f"ours @ {latency}s", r))
        ok_jobs = r.rates.jobs
        # The steady window is held to the target; submit to last completion includes the first wave's ramp-up.
        for window, rate in (("steady window", r.rates.steady), ("submit to last completion", r.rates.end_to_end)):
            held = window == "steady window"
            ctx.add(
                Figure(
                    NAME,
                    f"jobs/s / ideal @ {latency:g}s, {window}",
                    rate / ideal,
                    baseline=f"ideal {ideal:.0f}/s; measured {rate:.1f}/s",
                    target=">= 0.9" if held else "",
                    ok=rate / ideal >= 0.9 if held else None,
                )
            )
        ctx.add(
            Figure(
                NAME,
                f"max requests in flight at the server @ {latency:g}s",
                r.server["max_in_flight"],
                baseline=f"{CONCURRENCY} worker threads",
                target=">= 180",
                ok=r.server["max_in_flight"] >= 180,
            )
        )
        cpu_ms = 1000 * r.worker_cpu / max(ok_jobs, 1)
        ctx.add(
            Figure(
                NAME,
                f"worker CPU ms per job @ {latency:g}s",
                cpu_ms,
                "ms",
                baseline=f"{cpu_ms * ideal / 1000:.2f} cores needed at the ideal rate",
            )
        )
        # One process runs Python on one core at a time (the GIL): this is its ceiling whatever the concurrency.
        ctx.add(
            Figure(
                NAME,
                f"one-core ceiling of a worker process @ {latency:g}s / ideal",
                1000 / cpu_ms / ideal,
                baseline=f"1000 / {cpu_ms:.1f} ms = {1000 / cpu_ms:.0f} jobs/s",
            )
        )
