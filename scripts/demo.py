"""`make demo` and `make up`: the whole system on one machine, with the offline LLM unless a key is set.

demo: start Redis, the local LLM server (no OPENAI_API_KEY / OPENAI_BASE_URL), a worker and Flower;
submit samples/articles.jsonl as one batch with a progress bar; print every summary; then a second batch
with a custom prompt and a JSON Schema (samples/brief.*), priced, and its `status` (tokens, cost); then
the first file again, answered from the result cache with no LLM call; stop everything.
up:   the same stack, left running until Ctrl-C, for your own `summarize submit ...`.

Whatever ends it stops every process it started: Ctrl-C, SIGTERM (a process manager, `kill`), SIGHUP (a
closed terminal) stop them in order; if it is killed outright (SIGKILL), each of them gets SIGTERM from
the kernel (Linux: PR_SET_PDEATHSIG, scripts/stack.py).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.stack import BIN, ROOT, Stack, free_port, port_open


class Stopped(BaseException):
    """A signal asked the demo to end: everything it started is stopped, then it exits 128 + the signal.
    A BaseException, like KeyboardInterrupt: the readiness polls' `except Exception` must not swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop_on(signum: int, frame: FrameType | None) -> None:
    # Once stopping, further signals must not cut the stop short (it ends in SIGKILL after a bound anyway).
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    raise Stopped(signum)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--up", action="store_true", help="leave the stack running until Ctrl-C")
    ap.add_argument("--input", default=str(ROOT / "samples" / "articles.jsonl"))
    ap.add_argument("--flower-port", type=int, default=5555)
    ap.add_argument("--workdir", default=str(ROOT / "run"), help="logs and Redis data (default: run/)")
    args = ap.parse_args()

    started = time.monotonic()
    stack = Stack(workdir=Path(args.workdir), tied=True)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop_on)
    try:
        redis_port = 6379 if not _busy(6379) else free_port()
        stack.redis(redis_port)
        local = not os.environ.get("OPENAI_API_KEY") and not os.environ.get("OPENAI_BASE_URL")
        if local:
            stack.llm(8765 if not _busy(8765) else None)
            print(
                f"demo: no OPENAI_API_KEY set: using the offline extractive server at {stack.env['OPENAI_BASE_URL']}",
                file=sys.stderr,
            )
        stack.worker("worker1")
        flower_port = args.flower_port if not _busy(args.flower_port) else free_port()
        stack.flower(flower_port)
        flower = f"http://localhost:{flower_port}"
        print(
            f"demo: Redis at redis://127.0.0.1:{redis_port}/0, Flower at {flower}, logs in {stack.workdir}",
            file=sys.stderr,
        )
        if args.up:
            print(
                f"up: stack running. In another shell:\n  export REDIS_URL={stack.env['REDIS_URL']}"
                + (f" OPENAI_BASE_URL={stack.env['OPENAI_BASE_URL']}" if local else "")
                + "\n  summarize submit samples/articles.jsonl --wait\nCtrl-C stops everything.",
                file=sys.stderr,
            )
            while all(p.popen is not None and p.popen.poll() is None for p in stack.procs):
                time.sleep(1)
            print("up: a process exited; stopping", file=sys.stderr)
            return 1
        out = stack.workdir / "demo-results.jsonl"
        submit = subprocess.run(
            [str(BIN / "summarize"), "submit", args.input, "--wait", "--timeout", "300", "--out", str(out)],
            env=stack.env,
            stdout=subprocess.PIPE,
            text=True,
        )
        batch_id = submit.stdout.strip().splitlines()[-1] if submit.stdout.strip() else "?"
        for line in out.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            print(f"\n== {r['id']} [{r['status']}] ({r['model']}, {(r['usage'] or {}).get('total_tokens', 0)} tokens)")
            print(r["summary"] or f"ERROR {r['error_type']}: {r['error']}")
        if submit.returncode == 0:
            briefs(stack, args.input)
            cached(stack, args.input)
        print(
            f"\ndemo: batch {batch_id}: results in {out}; Flower was at {flower}; "
            f"wall time {time.monotonic() - started:.1f}s",
            file=sys.stderr,
        )
        return submit.returncode
    except KeyboardInterrupt:
        return 0
    except Stopped as stopped:
        print(f"demo: {stopped}: stopping everything", file=sys.stderr)
        return 128 + stopped.signum
    finally:
        stack.stop()


def briefs(stack: Stack, path: str) -> None:
    """A batch of structured briefs: its own prompt and schema, priced so `status` shows the accounting."""
    out = stack.workdir / "demo-briefs.jsonl"
    samples = ROOT / "samples"
    # The local model costs nothing; the prices are gpt-4o-mini's list prices, to show what the batch would cost.
    batch = _summarize(
        stack,
        "submit",
        path,
        "--batch-id",
        f"briefs-{int(time.time())}",
        "--prompt",
        str(samples / "brief.txt"),
        "--json-schema",
        str(samples / "brief.schema.json"),
        "--max-words",
        "60",
        "--price-in",
        "0.15",
        "--price-out",
        "0.60",
        "--wait",
        "-q",
        "--out",
        str(out),
    )
    print(
        "\n== a second batch: --prompt samples/brief.txt --json-schema samples/brief.schema.json (3 of 12 rows' data)"
    )
    for line in out.read_text(encoding="utf-8").splitlines()[:3]:
        r = json.loads(line)
        print(json.dumps({"id": r["id"], "data": r.get("data"), "cost_usd": r.get("cost_usd")}, ensure_ascii=False))
    print(_summarize(stack, "status", batch))


def cached(stack: Stack, path: str) -> None:
    """The first file again as a new batch: every answer comes from the result cache, no LLM call."""
    batch = _summarize(stack, "submit", path, "--batch-id", f"again-{int(time.time())}", "--wait", "-q")
    print("\n== the first file again, as a new batch: answered from the result cache")
    print(_summarize(stack, "status", batch))


def _summarize(stack: Stack, *argv: str) -> str:
    """Runs the CLI; its last line of output (the batch id, for submit) or the whole output."""
    run = subprocess.run([str(BIN / "summarize"), *argv], env=stack.env, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"demo: summarize {argv[0]} failed ({run.returncode}): {run.stderr.strip()[-2000:]}")
    return run.stdout.strip().splitlines()[-1] if argv[0] == "submit" else run.stdout.rstrip()


def _busy(port: int) -> bool:
    try:
        return port_open(port)
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
