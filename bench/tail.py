"""8. Under a long tail: one default worker of ours vs Bespoke Curator's online mode, 200 in flight, at a fixed
0.5 s latency and at a log-normal one with a 0.5 s median (p99 about 5.7x the median), same fake server and
articles, and every article the same delay on both sides (the server draws it from the article).

A message must not hold capacity for its slowest job: the server's time-weighted mean of requests in flight
over the run (from its first request to its last) is the direct measure of "slots always full"; ideal is
200 / the mean latency. Timing as in bench/curator_compare.py: ours from submit to the end of the wait,
Curator on its LLM(...) call.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

from tests.faultserver import FaultServer

from .common import Ctx, Figure, log, write_jsonl
from .curator import VERSION, CuratorRun, ensure_venv, run_curator
from .runs import OursRun, run_ours

NAME = "tail"
CONCURRENCY = 200
MEDIAN = 0.5
#: p99 = exp(2.326 * sigma) x the median: 5.7x
SIGMA = 0.75
#: (label, sigma): the fixed latency first, as a reference for the same machine's state
LATENCIES = (("fixed 0.5 s", 0.0), (f"log-normal, median 0.5 s, sigma {SIGMA:g}", SIGMA))


def ideal_rate(sigma: float) -> float:
    """Jobs/s with every slot always busy: the concurrency over the mean latency (exp(sigma^2/2) x the median)."""
    return CONCURRENCY / (MEDIAN * math.exp(sigma * sigma / 2))


def run(ctx: Ctx) -> None:
    # ours/Curator alternating; a full run does ABBA so a drift in the machine's load hits both alike
    n, order = (1000, "oc") if ctx.quick else (6000, "occo")
    ensure_venv()
    path = write_jsonl(ctx.workdir / f"articles-{n}.jsonl", n)
    for label, sigma in LATENCIES:
        ours, cur = measure(ctx, path, n, order, sigma)
        report(ctx, label, sigma, n, ours, cur)


def measure(ctx: Ctx, path: Path, n: int, order: str, sigma: float) -> tuple[list[OursRun], list[CuratorRun]]:
    ours: list[OursRun] = []
    cur: list[CuratorRun] = []
    with FaultServer(latency=MEDIAN, latency_sigma=sigma) as server:
        for i, side in enumerate(order):
            if side == "o":
                r = run_ours(ctx, f"tail-ours{i}", server, path, n, workers=1, concurrency=CONCURRENCY, timeout=900)
                if r.status.get("failed"):
                    raise RuntimeError(f"ours: {r.status['failed']} of {n} jobs failed")
                ours.append(r)
                log(
                    f"ours sigma {sigma:g} round {i + 1}: {n / r.wall:.1f} jobs/s submit-to-wait, steady "
                    f"{r.rates.steady:.1f}/s, server in flight max {r.server.get('max_in_flight')} mean "
                    f"{r.server.get('mean_in_flight')}, worker CPU {r.worker_cpu:.1f}s"
                )
            else:
                c = run_curator(ctx, server, path, n, CONCURRENCY, timeout=900)
                if c.failed:
                    raise RuntimeError(f"Curator: {c.failed} of {n} requests failed")
                cur.append(c)
                log(
                    f"Curator sigma {sigma:g} round {i + 1}: {c.jobs_per_s:.1f} jobs/s over LLM(...), steady "
                    f"{c.rates.steady:.1f}/s, server in flight max {c.server.get('max_in_flight')} mean "
                    f"{c.server.get('mean_in_flight')}"
                )
    return ours, cur


def report(ctx: Ctx, label: str, sigma: float, n: int, ours: list[OursRun], cur: list[CuratorRun]) -> None:
    ideal = ideal_rate(sigma)
    ours_rate = n * len(ours) / sum(r.wall for r in ours)
    cur_rate = sum(c.ok for c in cur) / sum(c.call_wall for c in cur)
    ratio = ours_rate / cur_rate
    mean_ours = _mean(float(r.server.get("mean_in_flight", math.nan)) for r in ours)
    mean_cur = _mean(float(c.server.get("mean_in_flight", math.nan)) for c in cur)
    # while work was left to start: the last wave's drain (the slowest requests, every tool's) left out
    busy_ours = _mean(float(r.server.get("mean_in_flight_to_last_start", math.nan)) for r in ours)
    busy_cur = _mean(float(c.server.get("mean_in_flight_to_last_start", math.nan)) for c in cur)
    max_ours = max(int(r.server.get("max_in_flight", 0)) for r in ours)
    max_cur = max(int(c.server.get("max_in_flight", 0)) for c in cur)
    line = (
        f"{label}, {n} articles: ours {ours_rate:.1f} vs Curator {cur_rate:.1f} jobs/s = {ratio:.3f}; of ideal "
        f"{ideal:.0f}/s: ours {ours_rate / ideal:.2f}, Curator {cur_rate / ideal:.2f}; server in flight "
        f"max/mean: ours {max_ours}/{mean_ours:.1f}, Curator {max_cur}/{mean_cur:.1f}; mean to the last request's "
        f"start: ours {busy_ours:.1f}, Curator {busy_cur:.1f}"
    )
    log(line)
    ctx.note(NAME, line)
    heavy = sigma > 0
    target = 1.05 if heavy else 1.1
    ctx.add(
        Figure(
            NAME,
            f"1 worker / Curator {VERSION}, {CONCURRENCY} in flight, {label} (jobs/s)",
            ratio,
            baseline=f"{ours_rate:.1f} vs {cur_rate:.1f} jobs/s; of ideal {ours_rate / ideal:.2f} vs "
            f"{cur_rate / ideal:.2f}",
            target=f">= {target:g}",
            ok=ratio >= target,
        )
    )
    ctx.add(
        Figure(
            NAME,
            f"mean requests in flight at the server to the last request's start, {label}",
            busy_ours,
            baseline=f"Curator {busy_cur:.1f}; over the whole run {mean_ours:.1f} vs {mean_cur:.1f}; max ours "
            f"{max_ours}, Curator {max_cur}; {CONCURRENCY} slots",
        )
    )


def _mean(values: Iterable[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan
