"""4. Rate-limit fidelity: four workers share SUMMARIZE_RPM=600 against a server enforcing 600 rpm (sliding 60 s
window, 429 beyond it). What the server saw: the first minute's use of the limit, the busiest 60 s (never over),
the busiest 5 s against the pacing promise limit/12 + max(1, limit/60) (providers enforce a minute's limit over
such short windows), and the 429s it sent."""

from __future__ import annotations

import bisect

from tests.faultserver import FaultServer
from worker.ratelimit import burst

from .common import Ctx, Figure, log, write_jsonl
from .runs import describe, run_ours

NAME = "ratelimit"
RPM = 600
WORKERS = 4
CONCURRENCY = 50
LATENCY = 0.2
#: the short window providers enforce a minute's limit over (Azure OpenAI: 1-10 s)
SHORT = 5.0


def window_counts(times: list[float], window: float) -> tuple[int, int]:
    """(requests in the window starting at the first one, most requests in any window of that length)."""
    t = sorted(times)
    if not t:
        return 0, 0
    first = bisect.bisect_left(t, t[0] + window)
    best = max(bisect.bisect_left(t, s + window) - i for i, s in enumerate(t))
    return first, best


def run(ctx: Ctx) -> None:
    window = 30.0 if ctx.quick else 60.0
    # Enough to keep every worker waiting on the limiter past the window's end.
    n = int(RPM * (window + 15) / 60)
    path = write_jsonl(ctx.workdir / f"articles-{n}.jsonl", n)
    with FaultServer(latency=LATENCY, rpm=RPM) as server:
        r = run_ours(
            ctx,
            "ratelimit",
            server,
            path,
            n,
            workers=WORKERS,
            concurrency=CONCURRENCY,
            timeout=n * 60 / RPM + 120,
            extra_env={"SUMMARIZE_RPM": str(RPM)},
        )
    log(describe("ours rpm-limited", r))
    times = r.server["ok_times"]
    first, best = window_counts(times, window)
    expected = RPM * window / 60
    _, short = window_counts(times, SHORT)
    promise = RPM / 12 + max(1, RPM / 60)
    _, busiest_1s = window_counts(times, 1.0)
    ctx.note(
        NAME,
        f"{n} jobs, {WORKERS} workers x {CONCURRENCY}, SUMMARIZE_RPM={RPM}, server rpm={RPM} latency "
        f"{LATENCY}s; window of {window:.0f}s from the server's first 200 (ok_times)"
        + ("; --quick: half a minute, not a full one" if ctx.quick else ""),
    )
    ctx.add(
        Figure(
            NAME,
            f"server-seen rate over the first {window:.0f}s / limit",
            first / expected,
            baseline=f"{first} ok in {window:.0f}s vs {expected:.0f} allowed",
            target="0.95 - 1.0",
            ok=0.95 <= first / expected <= 1.0,
        )
    )
    ctx.add(
        Figure(
            NAME,
            f"busiest {window:.0f}s window / limit",
            best / expected,
            baseline=f"{best} ok",
            target="<= 1.0",
            ok=best <= expected,
        )
    )
    ctx.add(
        Figure(
            NAME,
            f"busiest {SHORT:.0f}s window / (limit/12 + max(1, limit/60))",
            short / promise,
            baseline=f"{short} ok in the busiest {SHORT:.0f}s vs {promise:.0f} promised ({RPM / 12:.0f} + "
            f"{max(1, RPM / 60):.0f}; the limiter's own burst is {burst(RPM)}); busiest 1 s {busiest_1s}",
            target="<= 1.0",
            ok=short <= promise,
        )
    )
    ctx.add(
        Figure(
            NAME,
            "429s from the server (overshoot_429)",
            r.server["overshoot_429"],
            target="0",
            ok=r.server["overshoot_429"] == 0,
            baseline=f"statuses {r.server['statuses']}",
        )
    )
    ctx.add(
        Figure(
            NAME,
            "worker CPU while paced, per admitted request",
            1000 * r.worker_cpu / max(len(times), 1),
            "ms",
            baseline=f"{r.worker_cpu / r.wall:.2f} cores over {r.wall:.0f}s for {WORKERS} workers",
        )
    )
