"""2. Against the peer (bench/peer.py, cookbook-style asyncio): one worker vs the peer at 200, two workers vs the
peer at 200 and at 400, on the same fake server and latency, same articles."""

from __future__ import annotations

from tests.faultserver import FaultServer

from .common import Ctx, Figure, log, write_jsonl
from .runs import describe, run_ours, run_peer

NAME = "peer"
CONCURRENCY = 200


def run(ctx: Ctx) -> None:
    # (latency, waves): 2 s runs are 4x longer per wave, so fewer waves keep the whole suite in minutes
    plan = ((0.5, 3),) if ctx.quick else ((0.5, 5), (2.0, 3))
    for latency, waves in plan:
        n1, n2 = waves * CONCURRENCY, waves * 2 * CONCURRENCY
        p1 = write_jsonl(ctx.workdir / f"articles-{n1}.jsonl", n1)
        p2 = write_jsonl(ctx.workdir / f"articles-{n2}.jsonl", n2)
        ctx.note(
            NAME,
            f"@ {latency:g}s: {n1} jobs for 200 in flight, {n2} for 400; ratios of steady-window jobs/s; "
            "runs interleaved ours/peer so both share the machine's noise",
        )
        with FaultServer(latency=latency) as server:
            ours1 = run_ours(ctx, f"peer-ours1-{int(latency * 1000)}", server, p1, n1, workers=1)
            log(describe(f"ours 1x200 @ {latency}s", ours1))
            peer200 = run_peer(ctx, server, p1, 200)
            log(describe(f"peer 200 @ {latency}s", peer200) + f", peer cpu {peer200.cpu:.1f}s")
            ours2 = run_ours(ctx, f"peer-ours2-{int(latency * 1000)}", server, p2, n2, workers=2)
            log(describe(f"ours 2x200 @ {latency}s", ours2))
            peer400 = run_peer(ctx, server, p2, 400)
            log(describe(f"peer 400 @ {latency}s", peer400) + f", peer cpu {peer400.cpu:.1f}s")
        for label, ours, peer, target in (
            ("1 worker / peer 200", ours1, peer200, 0.9),
            ("2 workers / peer 200", ours2, peer200, 1.5),
            ("2 workers / peer 400", ours2, peer400, None),
        ):
            ratio = ours.rates.steady / peer.rates.steady
            ctx.add(
                Figure(
                    NAME,
                    f"{label} @ {latency:g}s (jobs/s)",
                    ratio,
                    baseline=f"{ours.rates.steady:.1f} vs {peer.rates.steady:.1f} jobs/s; end-to-end "
                    f"{ours.rates.end_to_end:.1f} vs {peer.rates.end_to_end:.1f}; unrelated load "
                    f"{ours.foreign_cores:.2f} vs {peer.foreign_cores:.2f} cores",
                    target=f">= {target}" if target else "",
                    ok=ratio >= target if target else None,
                )
            )
        ctx.add(
            Figure(
                NAME,
                f"client CPU per job, 1 worker / peer 200 @ {latency:g}s",
                ours1.worker_cpu / peer200.net_cpu,
                baseline=f"{1000 * ours1.worker_cpu / n1:.1f} vs {1000 * peer200.net_cpu / n1:.1f} ms "
                "(both net of start-up)",
            )
        )
