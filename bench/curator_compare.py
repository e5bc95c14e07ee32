"""7. Against Bespoke Curator's online mode (bench/curator.py): one default worker of ours vs Curator with 200
requests in flight, @ 0.5 s latency, same fake server and articles, runs interleaved ours/Curator/Curator/ours so
both share the machine's noise.

Ours is timed from submit to the end of the wait (run_ours' wall); Curator on its LLM(...) call alone (its
imports and LLM construction excluded, measured in its process). Figures aggregate the rounds: all jobs over all
time of each side.
"""

from __future__ import annotations

from collections.abc import Iterable

from tests.faultserver import FaultServer

from .common import Ctx, Figure, log, write_jsonl
from .curator import VERSION, CuratorRun, ensure_venv, run_curator
from .curator import describe as describe_curator
from .runs import OursRun, describe, run_ours

NAME = "curator"
CONCURRENCY = 200
LATENCY = 0.5
WORKER_REDIS_TARGET_MS = 3.5


def run(ctx: Ctx) -> None:
    # ABBA order: a drift in the machine's load hits both sides alike; --quick does a single AB round
    n, order = (1000, "oc") if ctx.quick else (6000, "occo")
    ensure_venv()  # first use: a minute or two of pip, before anything is timed
    path = write_jsonl(ctx.workdir / f"articles-{n}.jsonl", n)
    ours: list[OursRun] = []
    cur: list[CuratorRun] = []
    with FaultServer(latency=LATENCY) as server:
        for i, side in enumerate(order):
            if side == "o":
                r = run_ours(ctx, f"curator-ours{i}", server, path, n, workers=1, concurrency=CONCURRENCY)
                if r.status.get("failed"):
                    raise RuntimeError(f"ours: {r.status['failed']} of {n} jobs failed")
                ours.append(r)
                log(
                    describe(f"ours 1x{CONCURRENCY} @ {LATENCY}s (round {i + 1})", r)
                    + f", {n / r.wall:.1f} jobs/s submit-to-wait, worker CPU {r.worker_cpu:.1f}s, "
                    f"redis CPU {r.redis_cpu:.1f}s"
                )
            else:
                c = run_curator(ctx, server, path, n, CONCURRENCY)
                if c.failed:
                    raise RuntimeError(f"Curator: {c.failed} of {n} requests failed")
                cur.append(c)
                log(describe_curator(f"Curator {VERSION} {CONCURRENCY} @ {LATENCY}s (round {i + 1})", c))

    jobs = n * len(ours)
    ours_rate = jobs / sum(r.wall for r in ours)
    cur_rate = sum(c.ok for c in cur) / sum(c.call_wall for c in cur)
    ours_rates = " / ".join(f"{n / r.wall:.1f}" for r in ours)
    cur_rates = " / ".join(f"{c.jobs_per_s:.1f}" for c in cur)
    in_flight = (
        f"server max in flight: ours {'/'.join(str(r.server.get('max_in_flight')) for r in ours)}, "
        f"Curator {'/'.join(str(c.server.get('max_in_flight')) for c in cur)}"
    )
    ctx.note(
        NAME,
        f"{n} articles @ {LATENCY:g}s latency, 200 in flight, {len(ours)} run(s) of each, order "
        f"{'/'.join('ours' if s == 'o' else 'Curator' for s in order)}; ours = one default worker, submit "
        f"to end of wait; Curator {VERSION} online mode (openai backend, aiohttp, max_concurrent_requests"
        f"=200, rpm/tpm limits far above need, no retries, own response cache off), timed on its "
        f"LLM(...) call; {in_flight}",
    )

    ratio = ours_rate / cur_rate
    ctx.add(
        Figure(
            NAME,
            f"1 worker / Curator {CONCURRENCY} in flight @ {LATENCY:g}s (jobs/s)",
            ratio,
            baseline=f"{ours_rate:.1f} vs {cur_rate:.1f} jobs/s (runs: ours {ours_rates}; Curator {cur_rates}); "
            f"steady window {_mean(r.rates.steady for r in ours):.1f} vs "
            f"{_mean(c.rates.steady for c in cur):.1f}; unrelated load "
            f"{_mean(r.foreign_cores for r in ours):.2f} vs {_mean(c.foreign_cores for c in cur):.2f} "
            "cores",
            target=">= 1.0",
            ok=ratio >= 1.0,
        )
    )
    ctx.add(
        Figure(
            NAME,
            f"Curator jobs/s @ {LATENCY:g}s, {CONCURRENCY} in flight",
            cur_rate,
            "jobs/s",
            baseline=f"ideal {CONCURRENCY / LATENCY:.0f}/s; over the LLM(...) call, imports and set-up "
            f"excluded; {in_flight}",
        )
    )
    cur_jobs = sum(c.ok for c in cur)
    cur_net = 1000 * sum(c.net_cpu for c in cur) / cur_jobs
    cur_call = 1000 * sum(c.call_cpu for c in cur) / cur_jobs
    ctx.add(
        Figure(
            NAME,
            "Curator CPU per request",
            cur_net,
            "ms",
            baseline=f"its process net of start-up (imports, LLM construction: measured once with no "
            f"article); the LLM(...) call alone {cur_call:.2f} ms; peak RSS "
            f"{max(c.maxrss_kb for c in cur) // 1024} MB",
        )
    )
    worker_ms = 1000 * sum(r.worker_cpu for r in ours) / jobs
    redis_ms = 1000 * sum(r.redis_cpu for r in ours) / jobs
    ctx.add(
        Figure(
            NAME,
            "our worker CPU per job",
            worker_ms,
            "ms",
            baseline=f"Curator {cur_net:.2f} ms per request, ratio {worker_ms / cur_net:.2f}",
        )
    )
    both = worker_ms + redis_ms
    ctx.add(
        Figure(
            NAME,
            "our worker + Redis CPU per job",
            both,
            "ms",
            baseline=f"worker {worker_ms:.2f} + redis-server {redis_ms:.2f} ms; Curator {cur_net:.2f} ms",
            target=f"<= {WORKER_REDIS_TARGET_MS} ms",
            ok=both <= WORKER_REDIS_TARGET_MS,
        )
    )


def _mean(values: Iterable[float]) -> float:
    vals = list(values)
    return sum(vals) / len(vals) if vals else float("nan")
