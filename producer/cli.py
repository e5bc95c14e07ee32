"""The `summarize` command: submit, status, wait, results, retry, llm-serve.

Exit codes: 0 success; 1 some jobs failed (wait, submit --wait); 2 timeout (wait) or bad usage;
3 an error that stopped the command (bad input, unknown batch, Redis unreachable).
"""

from __future__ import annotations

import argparse
import csv
import json
import signal
import sys
import threading
from collections.abc import Iterable, Sequence
from typing import IO, Any

from contract.errors import SummarizeError
from contract.record import JobResult
from contract.settings import Settings

EXIT_FAILED, EXIT_TIMEOUT, EXIT_ERROR = 1, 2, 3

CSV_FIELDS = ["id", "status", "summary", "error", "error_type", "model", "prompt_tokens", "completion_tokens",
              "total_tokens", "attempts", "metadata"]


def write_results(results: Iterable[JobResult], out: IO[str], fmt: str) -> int:
    n = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in results:
            usage = r.usage or {}
            writer.writerow({
                "id": r.id, "status": r.status, "summary": r.summary or "", "error": r.error or "",
                "error_type": r.error_type or "", "model": r.model or "",
                "prompt_tokens": usage.get("prompt_tokens", ""),
                "completion_tokens": usage.get("completion_tokens", ""),
                "total_tokens": usage.get("total_tokens", ""), "attempts": r.attempts,
                "metadata": json.dumps(r.metadata, ensure_ascii=False),
            })
            n += 1
        return n
    for r in results:
        out.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
        n += 1
    return n


def _client(settings: Settings) -> Any:
    from .api import Client  # deferred so `summarize --help` and llm-serve don't need Redis

    return Client(settings)


def _status_line(s: dict[str, Any]) -> str:
    line = (f"batch {s['batch']}: {s['total']} total, {s['queued']} queued, {s['running']} running, "
            f"{s['done']} done, {s['failed']} failed")
    if s.get("halted"):
        line += f"\n  HALTED: {s['halted']}\n  fix the cause, then: summarize retry {s['batch']}"
    return line


def _stop_on_signals() -> threading.Event:
    """First Ctrl-C (or SIGTERM) ends the submit after the chunk in flight; a second one aborts at once."""
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\nsummarize submit: stopping after the current chunk (again to abort)", file=sys.stderr)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    client = _client(settings)
    stop = _stop_on_signals()
    batch = client.submit_path(args.path, batch_id=args.batch_id, model=args.model, max_words=args.max_words,
                               skip_invalid=args.skip_invalid, progress=not args.quiet, stop=stop)
    rep = batch.report
    assert rep is not None
    if rep.interrupted:
        print(f"summarize submit: interrupted after {rep.records} record(s); resume with:\n"
              f"  summarize submit {args.path} --batch-id {batch.id}", file=sys.stderr)
        print(batch.id)
        return 130
    print(f"submitted {rep.records} record(s) to batch {batch.id}: {rep.enqueued} enqueued, "
          f"{rep.skipped_existing} already there, {rep.invalid} invalid"
          + (" (kept as failed jobs)" if rep.invalid else ""), file=sys.stderr)
    for err in rep.errors:
        print(f"  invalid: {err}", file=sys.stderr)
    code = 0
    if args.wait or args.out:
        code = _wait(batch, args.timeout, not args.quiet)
        if args.out:
            with open(args.out, "w", encoding="utf-8", newline="") as f:
                n = write_results(batch.results(), f, args.format)
            print(f"wrote {n} result(s) to {args.out}", file=sys.stderr)
    print(batch.id)
    return code


def _wait(batch: Any, timeout: float | None, progress: bool) -> int:
    try:
        status = batch.wait(timeout=timeout, progress=progress)
    except TimeoutError as exc:
        print(f"timeout: {exc}", file=sys.stderr)
        return EXIT_TIMEOUT
    print(_status_line(status), file=sys.stderr)
    return EXIT_FAILED if status["failed"] else 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    client = _client(settings)
    status = client.store.status(args.batch)
    if status["failed"]:
        status["failed_jobs"] = client.store.dead_letters(args.batch)
    if args.json:
        print(json.dumps(status, ensure_ascii=False))
        return 0
    print(_status_line(status))
    for f in status.get("failed_jobs", []):
        print(f"  failed {f['id']}: {f['error_type']}: {f['error']}")
    return 0


def cmd_wait(args: argparse.Namespace, settings: Settings) -> int:
    return _wait(_client(settings).batch(args.batch), args.timeout, not args.quiet)


def cmd_results(args: argparse.Namespace, settings: Settings) -> int:
    client = _client(settings)
    batch = client.batch(args.batch)
    if args.out:
        with open(args.out, "w", encoding="utf-8", newline="") as f:
            n = write_results(batch.results(), f, args.format)
        print(f"wrote {n} result(s) to {args.out}", file=sys.stderr)
    else:
        write_results(batch.results(), sys.stdout, args.format)
    return 0


def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    n = _client(settings).batch(args.batch).retry()
    print(f"requeued {n} failed job(s) of batch {args.batch}", file=sys.stderr)
    return 0


def cmd_llm_serve(args: argparse.Namespace, settings: Settings) -> int:
    from localllm.server import serve

    if args.context_tokens < 1 or args.batch_delay < 0:
        print("summarize llm-serve: --context-tokens must be >= 1 and --batch-delay >= 0", file=sys.stderr)
        return EXIT_TIMEOUT  # the usage-error code
    serve(args.host, args.port, api_key=settings.llm_serve_api_key or None,
          context_tokens=args.context_tokens, batch_delay=args.batch_delay)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="summarize", description="Bulk article summarization through any "
                                "OpenAI-compatible LLM, on Celery + Redis.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("submit", help="submit a JSONL file, a directory of .txt/.md, or - for stdin")
    s.add_argument("path")
    s.add_argument("--batch-id", help="resume or extend this batch (default: a new id)")
    s.add_argument("--model", help="model name (default SUMMARIZE_MODEL)")
    s.add_argument("--max-words", type=int, help="summary length limit (default SUMMARIZE_MAX_WORDS)")
    s.add_argument("--skip-invalid", action="store_true",
                   help="enqueue valid records and keep invalid ones as failed jobs (default: enqueue nothing)")
    s.add_argument("--wait", action="store_true", help="wait until every job is done or failed")
    s.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds (exit 2)")
    s.add_argument("--out", help="write results here when finished (implies --wait)")
    s.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_submit)

    st = sub.add_parser("status", help="counts of a batch's jobs")
    st.add_argument("batch")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    w = sub.add_parser("wait", help="progress bar until the batch finishes: exit 0 all done, 1 some failed, 2 timeout")
    w.add_argument("batch")
    w.add_argument("--timeout", type=float)
    w.add_argument("-q", "--quiet", action="store_true")
    w.set_defaults(func=cmd_wait)

    r = sub.add_parser("results", help="one line per job: id, status, summary, error, model, usage, attempts, metadata")
    r.add_argument("batch")
    r.add_argument("--out")
    r.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    r.set_defaults(func=cmd_results)

    rt = sub.add_parser("retry", help="requeue the failed jobs of a batch")
    rt.add_argument("batch")
    rt.set_defaults(func=cmd_retry)

    ls = sub.add_parser("llm-serve", help="the offline OpenAI-compatible extractive summarizer")
    ls.add_argument("--host", default="127.0.0.1")
    ls.add_argument("--port", type=int, default=8765)
    ls.add_argument("--context-tokens", type=int, default=16384, metavar="N",
                    help="context window: prompt plus max_tokens above it is refused (default 16384)")
    ls.add_argument("--batch-delay", type=float, default=2.0, metavar="SECONDS",
                    help="Batch API: seconds a batch waits in_progress before its lines run (default 2)")
    ls.set_defaults(func=cmd_llm_serve)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        code: int = args.func(args, settings)
        return code
    except SummarizeError as exc:
        print(f"summarize {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"summarize {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
