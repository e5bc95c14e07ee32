"""`python -m bench [--quick] [NAME...]`: run the benchmarks, print each one's figures as it goes, then a Markdown
table of all of them, also written to bench/results.md."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from . import (
    curator_compare,
    estimate,
    failover,
    formats,
    memory,
    overhead,
    peer_compare,
    ratelimit,
    redis_memory,
    submit,
    tail,
    throughput,
)
from .common import Ctx, Figure, fmt, log, machine_info

BENCHMARKS: dict[str, tuple[str, Callable[[Ctx], None]]] = {
    "throughput": ("jobs/s of one worker at 0.5 s and 2 s latency vs the ideal 200/latency", throughput.run),
    "peer": ("jobs/s vs a cookbook-style asyncio client, 1 and 2 workers", peer_compare.run),
    "overhead": ("zero-latency jobs/s and CPU per job of every process", overhead.run),
    "ratelimit": ("SUMMARIZE_RPM=600 over four workers vs what the server saw", ratelimit.run),
    "submit": ("100k x 3 KB articles: summarize submit vs SET + send_task per article", submit.run),
    "memory": ("peak RSS of a worker with 200 requests in flight", memory.run),
    "curator": (
        "jobs/s and CPU per job of one worker vs Bespoke Curator's online mode, 200 in flight @ 0.5 s",
        curator_compare.run,
    ),
    "tail": (
        "one worker vs Curator at a fixed and a log-normal 0.5 s latency, 200 in flight: ratio, share of ideal, "
        "mean in flight",
        tail.run,
    ),
    "redis": (
        "Redis bytes per queued and finished job at 100k news articles of ~4 KB; export and purge",
        redis_memory.run,
    ),
    "formats": (
        "Parquet vs JSON lines export and input at 100k rows, peak RSS at 10k vs 100k, `summarize batches` of 1,000",
        formats.run,
    ),
    "estimate": ("`summarize estimate` of 100k x 4 KB articles vs submit's validation pass", estimate.run),
    "failover": (
        "behind Sentinel: jobs/s and CPU per job with WAIT 1 vs SUMMARIZE_REDIS_WAIT_REPLICAS=0",
        failover.run,
    ),
}
RESULTS = Path(__file__).resolve().parent / "results.md"


def table(figures: list[Figure]) -> str:
    rows = [
        "| benchmark | figure | value | compared with | target | result |",
        "| --- | --- | ---: | --- | --- | --- |",
    ]
    for f in figures:
        value = f"{fmt(f.value)} {f.unit}".strip()
        result = {True: "ok", False: "**MISS**", None: ""}[f.ok]
        cells = [f.bench, f.name, value, f.baseline, f.target, result]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


def report(ctx: Ctx, command: str, started: float, failed: list[str], info: dict[str, str]) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Command: `{command}`" + (" (quick sizes)" if ctx.quick else ""),
        "",
        f"Run at {time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(started))}, took {time.time() - started:.0f}s.",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines.append(f"- load (1 min) at end: {os.getloadavg()[0]:.2f}")
    lines += ["", table(ctx.figures), ""]
    if ctx.notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in ctx.notes] + [""]
    if failed:
        lines += ["Benchmarks that raised (see stderr): " + ", ".join(failed), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="benchmarks: " + "; ".join(f"{k}: {v[0]}" for k, v in BENCHMARKS.items()),
    )
    ap.add_argument("names", nargs="*", metavar="NAME", help=f"a subset of: {', '.join(BENCHMARKS)}")
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run, not a measurement)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs of every process)")
    ap.add_argument("--out", default=str(RESULTS), help="where to write the Markdown table")
    args = ap.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)
    command = shlex.join(["python", "-m", "bench", *(argv if argv is not None else sys.argv[1:])])
    started = time.time()
    info = machine_info()
    ctx = Ctx(quick=args.quick, workdir=Path(tempfile.mkdtemp(prefix="bench-")))
    failed: list[str] = []
    try:
        for name in names:
            print(f"\n== {name}: {BENCHMARKS[name][0]}", flush=True)
            t0 = time.monotonic()
            ctx.foreign.clear()
            try:
                BENCHMARKS[name][1](ctx)
            except KeyboardInterrupt:
                raise
            except Exception:
                traceback.print_exc()
                failed.append(name)
            took = time.monotonic() - t0
            log(f"{name} took {took:.0f}s")
            if ctx.foreign:
                ctx.note(
                    name,
                    f"took {took:.0f}s; unrelated processes used {min(ctx.foreign):.2f}-"
                    f"{max(ctx.foreign):.2f} of the {os.cpu_count()} cores during its runs",
                )
    finally:
        text = report(ctx, command, started, failed, info)
        print("\n" + text)
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"written to {args.out}", file=sys.stderr)
        if args.keep:
            print(f"work directory kept: {ctx.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(ctx.workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
