"""3. Pipeline overhead at zero latency: end-to-end jobs/s and CPU per job of each process, against the peer
(which has no Redis, no broker and no producer: its CPU per request is the floor of any Python client)."""

from __future__ import annotations

from tests.faultserver import FaultServer

from .common import Ctx, Figure, log, write_jsonl
from .runs import describe, run_ours, run_peer

NAME = "overhead"
CONCURRENCY = 200


def run(ctx: Ctx) -> None:
    n = 600 if ctx.quick else 2000
    path = write_jsonl(ctx.workdir / f"articles-{n}.jsonl", n)
    with FaultServer(latency=0.0) as server:
        ours = run_ours(ctx, "overhead", server, path, n, workers=1, concurrency=CONCURRENCY, cli=True)
        log(describe("ours @ 0s", ours))
        peer = run_peer(ctx, server, path, CONCURRENCY)
        log(describe("peer @ 0s", peer))
    ctx.note(
        NAME,
        f"{n} jobs, 1 worker x {CONCURRENCY}, producer = `summarize submit FILE` in its own process "
        "(CPU from os.wait4); worker/redis/server CPU = user+system time deltas over the run (psutil)",
    )
    e2e, peer_e2e = ours.rates.end_to_end, peer.rates.end_to_end
    ctx.add(
        Figure(
            NAME,
            "jobs/s end-to-end (submit to last completion)",
            e2e,
            "jobs/s",
            baseline=f"peer {peer_e2e:.1f}/s, ratio {e2e / peer_e2e:.2f}",
        )
    )
    ctx.add(
        Figure(
            NAME,
            "jobs/s steady window",
            ours.rates.steady,
            "jobs/s",
            baseline=f"peer {peer.rates.steady:.1f}/s, ratio {ours.rates.steady / peer.rates.steady:.2f}",
        )
    )
    per = 1000 / n
    ctx.add(
        Figure(
            NAME,
            "worker CPU per job",
            ours.worker_cpu * per,
            "ms",
            baseline=f"peer process {peer.net_cpu * per:.2f} ms (net of its start-up), "
            f"ratio {ours.worker_cpu / peer.net_cpu:.2f}",
        )
    )
    ctx.add(
        Figure(
            NAME,
            "fake server CPU per job",
            ours.server_cpu * per,
            "ms",
            baseline=f"{peer.server_cpu * per:.2f} ms serving the peer",
        )
    )
    ctx.add(Figure(NAME, "redis-server CPU per job", ours.redis_cpu * per, "ms", baseline="peer: none"))
    ctx.add(
        Figure(
            NAME,
            "producer CPU per job",
            ours.producer_cpu * per,
            "ms",
            baseline=f"whole `summarize submit` process; the peer reads its file inside its "
            f"{peer.net_cpu * per:.2f} ms",
        )
    )
    checks_ms = checks_cpu_per_answer() * 1000
    job_ms = (ours.worker_cpu + ours.redis_cpu) * per
    ctx.add(
        Figure(
            NAME,
            "summary checks CPU per answer / worker + Redis CPU per job",
            checks_ms / job_ms,
            baseline=f"{checks_ms:.3f} ms (offline server's 80-word summaries of the sample articles, best of 7) "
            f"vs {job_ms:.2f} ms a job here",
            target="<= 0.1",
            ok=checks_ms / job_ms <= 0.1,
        )
    )
    total = (ours.worker_cpu + ours.server_cpu + ours.redis_cpu + ours.producer_cpu) * per
    peer_total = (peer.net_cpu + peer.server_cpu) * per
    ctx.add(
        Figure(
            NAME,
            "all processes CPU per job",
            total,
            "ms",
            baseline=f"peer + server {peer_total:.2f} ms, ratio {total / peer_total:.2f}",
        )
    )


def checks_cpu_per_answer(rounds: int = 7) -> float:
    """Seconds of CPU contract/checks.py spends on one answer: the offline server's 80-word summaries of the
    sample articles (what docs/quality.md quotes), the best of `rounds` (the worker runs them on every answer,
    so they are inside the worker CPU per job above as well)."""
    import json
    import time

    from contract import checks
    from localllm.extractive import summarize_text
    from scripts.stack import ROOT

    lines = (ROOT / "samples" / "articles.jsonl").read_text(encoding="utf-8").splitlines()
    pairs = [(a["text"], summarize_text(a["text"], 80)) for a in map(json.loads, lines)]
    checks.warm()
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(10):
            for text, summary in pairs:
                checks.check(text, summary, 80)
        best = min(best, (time.process_time() - start) / (10 * len(pairs)))
    return best
