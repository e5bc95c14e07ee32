"""The `summarize` command: submit, estimate, status, wait, results, batches, retry, eval, llm-serve.

Exit codes: 0 success; 1 some jobs failed (wait, submit --wait); 2 timeout (wait) or bad usage;
3 an error that stopped the command (bad input, unknown batch, Redis unreachable); 4 the batch is paused
(wait, submit --wait: by the user or its budget; nothing moves until a resume); 130 interrupted.
A mistyped option is an error, never taken for another one it abbreviates (`--mode` is not `--model`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any

from contract.checks import parse_names
from contract.errors import BatchPaused, ConfigError, SummarizeError
from contract.keys import PRIORITIES
from contract.settings import Settings
from contract.spec import PLACEHOLDERS, unknown_placeholders

from . import output
from .progress import counts_line, print_table, status_notes, status_table

if TYPE_CHECKING:
    from .api import Batch, Client

EXIT_OK, EXIT_FAILED, EXIT_TIMEOUT, EXIT_ERROR, EXIT_PAUSED = 0, 1, 2, 3, 4
#: a usage error shares the timeout's code, as argparse's own errors do
EXIT_USAGE = EXIT_TIMEOUT
#: 128 + SIGINT, as shells report a process stopped by Ctrl-C
EXIT_INTERRUPTED = 128 + signal.SIGINT


class UsageError(SummarizeError):
    """Raised when options are given that mean nothing together (exit 2, naming them)."""


class Cursor:
    """Where `results --follow --out FILE` stopped: FILE.cursor holds the stream position and FILE's size."""

    def __init__(self, path: str) -> None:
        self.path, self.file, self.offset = path, path + ".cursor", 0

    def load(self) -> str:
        try:
            with open(self.file, encoding="utf-8") as f:
                saved = json.load(f)
        except FileNotFoundError:
            return "0-0"
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self.file}: unreadable cursor ({exc}); remove it to start over") from None
        self.offset = int(saved["offset"])
        # Rows written after the last saved position are written again below: cut them off.
        try:
            with open(self.path, "r+b") as out:
                out.truncate(self.offset)
        except OSError as exc:
            raise ConfigError(f"--out {self.path}: {exc.strerror or exc} (its cursor {self.file} is there)") from None
        return str(saved["after"])

    def open(self, fmt: output.Format) -> IO[Any]:
        return output.open_file(self.path, fmt, append=bool(self.offset), label="--out ")

    def save(self, after: str, offset: int) -> None:
        tmp = self.file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"after": after, "offset": offset}, f)
        os.replace(tmp, self.file)


def check_out(path: str | None) -> None:
    """Refuse an --out FILE that can't be written before anything is submitted (not after the wait)."""
    if path is None or path == "-":
        return
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ConfigError(f"--out {path}: is a directory")
    if not os.path.isdir(parent):
        raise ConfigError(f"--out {path}: no such directory {parent}")
    if not os.access(parent, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ConfigError(f"--out {path}: permission denied")


def export(
    batch: Batch, path: str | None, fmt: str, statuses: Sequence[str] | None = None, flagged: bool = False
) -> int:
    done = output.export(batch, path, fmt, label="--out ", statuses=statuses, flagged=flagged)
    if path not in (None, "-"):
        print(f"wrote {done.rows} result(s) to {path}", file=sys.stderr)
    if done.unfinished > 0:
        status = done.status
        state = status["state"] + (f" ({status['reason']})" if status.get("reason") else "")
        print(
            f"batch {batch.id} is not finished ({state}: {counts_line(status)}): the rows of unfinished jobs "
            f"say queued or running; summarize wait {batch.id} first, or results --follow",
            file=sys.stderr,
        )
    return done.rows


def _client(settings: Settings) -> Client:
    from .api import Client  # deferred so `summarize --help` and llm-serve don't need Redis

    return Client(settings)


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


def read_spec_files(args: argparse.Namespace) -> dict[str, Any]:
    """--prompt FILE and --json-schema FILE, read and checked before anything is submitted."""
    options: dict[str, Any] = {}
    if args.prompt:
        options["prompt"] = _read(args.prompt, "--prompt")
        unknown = unknown_placeholders(options["prompt"])
        if unknown:
            raise ConfigError(
                f"--prompt {args.prompt}: unknown placeholder "
                + ", ".join("{" + n + "}" for n in unknown)
                + "; the only one is "
                + ", ".join("{" + n + "}" for n in PLACEHOLDERS)
                + f" (write {{{{{unknown[0]}}}}} for a literal {{{unknown[0]}}})"
            )
    if args.json_schema:
        raw = _read(args.json_schema, "--json-schema")
        try:
            options["json_schema"] = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"--json-schema {args.json_schema}: not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
            ) from None
    return options


def _read(path: str, option: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{option} {path}: {exc}") from None


def check_submit_usage(args: argparse.Namespace) -> None:
    """Options that would be silently ignored are errors naming them."""
    waits = args.wait or args.out is not None
    if args.timeout is not None and not waits:
        raise UsageError("--timeout needs --wait or --out (it bounds the wait)")
    if args.keep_waiting and not waits:
        raise UsageError("--keep-waiting needs --wait or --out")
    if args.format is not None and args.out is None:
        raise UsageError("--format needs --out (it is the format of that file)")


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    check_submit_usage(args)
    check_out(args.out)
    options = read_spec_files(args)
    if args.mode == "batch" and args.fallback_mode is None:
        from .api import batch_api_missing

        missing = batch_api_missing(settings)
        if missing:
            print(f"summarize submit: warning: {missing}", file=sys.stderr)
    client = _client(settings)
    batch = client.submit_path(
        args.path,
        batch_id=args.batch_id,
        model=args.model,
        max_words=args.max_words,
        skip_invalid=args.skip_invalid,
        progress=not args.quiet,
        stop=_stop_on_signals(),
        priority=args.priority,
        temperature=args.temperature,
        fallback_model=args.fallback_model,
        # left out (None), a resume takes the batch's stored spec
        no_cache=args.no_cache or None,
        mode=args.mode,
        fallback_mode=args.fallback_mode,
        model_family=args.model_family,
        reasoning_effort=args.reasoning_effort,
        reasoning_tokens=args.reasoning_tokens,
        price_in=args.price_in,
        price_out=args.price_out,
        budget_usd=args.budget_usd,
        budget_tokens=args.budget_tokens,
        input_format=args.input_format,
        text_field=args.text_field,
        id_field=args.id_field,
        require_checks=list(parse_names(args.require_checks)) if args.require_checks is not None else None,
        language=checked_language(args.language),
        sample=args.sample,
        seed=args.seed,
        **options,
    )
    for note in batch.notes:
        print(f"summarize submit: note: {note}", file=sys.stderr)
    rep = batch.report
    assert rep is not None
    if rep.interrupted:
        print(
            f"summarize submit: interrupted after {rep.records} record(s); resume with:\n"
            f"  {resume_command(args, batch.id)}",
            file=sys.stderr,
        )
        print(batch.id)
        return EXIT_INTERRUPTED
    print(
        f"submitted {rep.records} record(s) to batch {batch.id}: {rep.enqueued} enqueued, "
        f"{rep.skipped_existing} already there, {rep.invalid} invalid"
        + (" (kept as failed jobs)" if rep.invalid else ""),
        file=sys.stderr,
    )
    for err in rep.errors:
        print(f"  invalid: {err}", file=sys.stderr)
    if args.sample is not None and batch.report is not None:
        print(
            f"summarize submit: a trial of {batch.report.records} (--sample {args.sample}, --seed {args.seed}) in "
            f"batch {batch.id}; submit again without --sample for the whole file (its answers come from the "
            "result cache then)",
            file=sys.stderr,
        )
    code = EXIT_OK
    if args.wait or args.out:
        code = _wait(batch, args.timeout, not args.quiet, args.keep_waiting, "submit")
        if args.out:  # also after a timeout or a pause: what is there, and stderr says it is not finished
            export(batch, args.out, _format(args))
    print(batch.id)
    return code


def checked_language(code: str | None) -> str | None:
    """--language: a code the language check knows (py3langid's), or a ConfigError naming it."""
    if code is None:
        return None
    from contract.checks import languages

    known = languages()
    if code not in known:
        raise ConfigError(f"--language {code!r}: not a language the check knows; one of {', '.join(sorted(known))}")
    return code


def resume_command(args: argparse.Namespace, batch_id: str) -> str:
    """The command that goes on with an interrupted submit: the batch's spec is stored with it, so only
    what is not spec is repeated (a resume that gives spec options must give the same ones)."""
    words = ["summarize", "submit", args.path, "--batch-id", batch_id]
    for option, value in (
        ("--input-format", args.input_format),
        ("--text-field", args.text_field),
        ("--id-field", args.id_field),
    ):
        words += [option, value] if value is not None else []
    if args.skip_invalid:
        words.append("--skip-invalid")
    if args.out is not None:
        words += ["--out", args.out] + (["--format", args.format] if args.format else [])
    elif args.wait:
        words.append("--wait")
    if args.timeout is not None:
        words += ["--timeout", f"{args.timeout:g}"]
    if args.keep_waiting:
        words.append("--keep-waiting")
    if args.quiet:
        words.append("-q")
    line = shlex.join(words)
    return line + "   # with the same input on stdin" if args.path == "-" else line


def _wait(batch: Batch, timeout: float | None, progress: bool, keep_waiting: bool, command: str) -> int:
    try:
        status = batch.wait(timeout=timeout, progress=progress, keep_waiting=keep_waiting)
    except TimeoutError as exc:
        print(f"summarize {command}: timeout: {exc}", file=sys.stderr)
        return EXIT_TIMEOUT
    except BatchPaused as exc:
        print(f"summarize {command}: {exc} (or wait with --keep-waiting)", file=sys.stderr)
        return EXIT_PAUSED
    print(_status_line(status), file=sys.stderr)
    return EXIT_FAILED if status["failed"] or status["cancelled"] else EXIT_OK


def _status_line(s: dict[str, Any]) -> str:
    return f"batch {s['batch']}: {counts_line(s)}"


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    client = _client(settings)
    status = client.store.status(args.batch)
    from .api import Batch

    status["progress"] = Batch(client, args.batch).progress(status)
    if status["failed"]:
        status["failed_jobs"] = client.store.dead_letters(args.batch)
        # Every failure counted by its error_type (the first error text of each): the listed ten are a sample.
        status["failures"] = client.store.failures(args.batch)
        status["failed_jobs_not_listed"] = max(0, status["failed"] - len(status["failed_jobs"]))
    if args.json:
        print(json.dumps(status, ensure_ascii=False))
        return EXIT_OK
    print_table(status_table(status))
    for line in status_notes(status) + failure_lines(status) + flag_lines(status):
        print(line)
    return EXIT_OK


def flag_lines(status: dict[str, Any]) -> list[str]:
    """The count of done answers each check flagged (contract/checks.py), and how to list or re-ask them."""
    if not status.get("flagged"):
        return []
    counts = ", ".join(f"{name} {n}" for name, n in status["flags"].items() if n)
    b = status["batch"]
    return [
        f"  flagged by the checks: {status['flagged']} answer(s): {counts}",
        f"    list them: summarize results {b} --flagged; ask again: summarize retry {b} --flagged [--model M]",
    ]


def failure_lines(status: dict[str, Any]) -> list[str]:
    """The count of each error_type with its first error, and how to get every failed row."""
    if not status.get("failures"):
        return []
    lines = []
    if status["failed_jobs_not_listed"]:
        lines.append(
            f"  ... and {status['failed_jobs_not_listed']} more failed job(s): "
            f"summarize results {status['batch']} --status failed"
        )
    lines.append("  failed jobs by error type:")
    for error_type, seen in status["failures"].items():
        first = (seen["error"] or "").replace("\n", " ")
        lines.append(f"    {seen['count']:>8}  {error_type}: {first[:200]}")
    return lines


def cmd_batches(args: argparse.Namespace, settings: Settings) -> int:
    total, page = _client(settings).store.batches(args.limit, args.offset)
    after = args.offset + args.limit
    next_offset = after if after < total else None
    if args.json:
        print(json.dumps({"total": total, "offset": args.offset, "next_offset": next_offset, "batches": page}))
        return EXIT_OK
    if not page:
        print(f"no batches{' from offset ' + str(args.offset) if args.offset else ''} ({total} in Redis)")
        return EXIT_OK
    head = ("BATCH", "STATE", "TOTAL", "DONE", "FAILED", "LEFT", "CREATED", "FINISHED", "COST_USD", "MODE", "PRIORITY")
    rows = [head]
    for b in page:
        state = b["state"] + (f" ({b['reason']})" if b.get("reason") else "")
        rows.append(
            (
                b["batch"],
                state,
                str(b["total"]),
                str(b["done"]),
                str(b["failed"]),
                str(b["total"] - b["done"] - b["failed"] - b["cancelled"]),
                _when(b["created_ms"]),
                _when(b["finished_ms"]),
                "-" if b["cost_usd"] is None else f"{b['cost_usd']:.4f}",
                b["mode"],
                b["priority"],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    print("\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows))
    shown = f"{args.offset + 1}-{args.offset + len(page)} of {total}"
    more = f"; next page: summarize batches --offset {next_offset} --limit {args.limit}" if next_offset else ""
    print(f"batches {shown}, newest first{more}", file=sys.stderr)
    return EXIT_OK


def _when(ms: int | None) -> str:
    """A Redis time in ms as local time to the second ('-' when not yet)."""
    if ms is None:
        return "-"
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def _format(args: argparse.Namespace) -> str:
    """--format, else the one the --out file's suffix names (results.csv is CSV), else JSON lines."""
    if args.format:
        return str(args.format)
    named = output.infer(args.out) if args.out and args.out != "-" else None
    return named.name if named else "jsonl"


def cmd_wait(args: argparse.Namespace, settings: Settings) -> int:
    return _wait(_client(settings).batch(args.batch), args.timeout, not args.quiet, args.keep_waiting, "wait")


def cmd_results(args: argparse.Namespace, settings: Settings) -> int:
    batch = _client(settings).batch(args.batch)
    if args.follow:
        if args.status:
            raise UsageError("--status and --follow don't go together (--follow writes every row as it finishes)")
        return follow(batch, args.out, _format(args))
    if args.flagged and args.follow:
        raise UsageError("--flagged and --follow don't go together")
    check_out(args.out)
    export(batch, args.out, _format(args), args.status, flagged=args.flagged)
    return EXIT_OK


def follow(batch: Batch, path: str | None, fmt: str) -> int:
    """Rows as they finish until the batch is over. With --out the file is appended to, and a cursor
    beside it (FILE.cursor: stream position and file size after the last whole page) makes a second run
    go on where the first stopped: the file is cut back to that size, so no row is written twice."""
    store = batch.client.store
    form = output.get(fmt)
    check_out(path)
    cursor = Cursor(path) if path not in (None, "-") else None
    if cursor and not form.appendable:
        can = ", ".join(f.name for f in output.FORMATS.values() if f.appendable)
        raise UsageError(f"--follow --out: a {form.name} file can't be appended to (one of {can} can)")
    after = cursor.load() if cursor else "0-0"
    with cursor.open(form) if cursor else contextlib.nullcontext(output.stdout(form)) as out:
        writer = output.RowWriter(
            out, form, header=cursor is None or cursor.offset == 0, data_fields=output.data_fields(batch)
        )
        for page in store.follow_pages(batch.id, after):
            for _, row in page:
                writer.write(row)
            size = writer.flush()
            if cursor:
                cursor.save(page[-1][0], size)
        writer.close()
    status = store.status(batch.id)
    print(_status_line(status), file=sys.stderr)
    return EXIT_FAILED if status["failed"] or status["cancelled"] else EXIT_OK


def cmd_pause(args: argparse.Namespace, settings: Settings) -> int:
    state = _client(settings).batch(args.batch).pause()
    print(f"batch {args.batch}: {state}", file=sys.stderr)
    return EXIT_OK


def cmd_resume(args: argparse.Namespace, settings: Settings) -> int:
    state = _client(settings).batch(args.batch).resume(args.budget_usd, args.budget_tokens)
    print(f"batch {args.batch}: {state}", file=sys.stderr)
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    n = _client(settings).batch(args.batch).cancel()
    print(f"batch {args.batch}: cancelled ({n} job(s) that had not started ended now)", file=sys.stderr)
    return EXIT_OK


def cmd_purge(args: argparse.Namespace, settings: Settings) -> int:
    n = _client(settings).batch(args.batch).purge(force=args.force)
    print(f"batch {args.batch}: removed from Redis ({n} job(s))", file=sys.stderr)
    return EXIT_OK


def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    if (args.price_in is None) != (args.price_out is None):
        raise ConfigError("--price-in and --price-out go together")
    n = (
        _client(settings)
        .batch(args.batch)
        .retry(
            flagged=args.flagged,
            model=args.model,
            fallback_model=args.fallback_model,
            price_in=args.price_in,
            price_out=args.price_out,
            budget_usd=args.budget_usd,
            budget_tokens=args.budget_tokens,
        )
    )
    print(f"requeued {n} {'flagged' if args.flagged else 'failed'} job(s) of batch {args.batch}", file=sys.stderr)
    return EXIT_OK


def cmd_llm_serve(args: argparse.Namespace, settings: Settings) -> int:
    from localllm.server import serve

    if args.context_tokens < 1 or args.batch_delay < 0:
        print("summarize llm-serve: --context-tokens must be >= 1 and --batch-delay >= 0", file=sys.stderr)
        return EXIT_TIMEOUT  # the usage-error code
    serve(
        args.host,
        args.port,
        api_key=settings.llm_serve_api_key or None,
        context_tokens=args.context_tokens,
        batch_delay=args.batch_delay,
    )
    return EXIT_OK


def _number(kind: type, low: float, above: bool = False, high: float | None = None) -> Any:
    """An argparse type: a number at least `low` (more than it with `above`), at most `high`."""

    def parse(raw: str) -> Any:
        try:
            value = kind(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {'whole ' if kind is int else ''}number: {raw!r}") from None
        if value != value or (value <= low if above else value < low) or (high is not None and value > high):
            bound = f"more than {low:g}" if above else f"at least {low:g}"
            raise argparse.ArgumentTypeError(
                f"must be {bound}" + (f" and at most {high:g}" if high is not None else "") + f", got {raw}"
            )
        return value

    return parse


class _Parser(argparse.ArgumentParser):
    """argparse without prefix matching: `--mode` must never quietly become `--model`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)


def _add_submit(sub: Any) -> None:
    s = sub.add_parser(
        "submit",
        help="submit a file (JSONL, .jsonl.gz/.zst, CSV, TSV, Parquet, one .txt/.md), a directory of .txt/.md, "
        "or - for stdin",
    )
    s.add_argument("path")
    s.add_argument(
        "--input-format",
        choices=["jsonl", "csv", "tsv", "parquet", "text"],
        default=None,
        help="the input's format (default: by its suffix, else JSON lines; gzip/zstd are told by the bytes)",
    )
    s.add_argument("--text-field", metavar="NAME", help="the field (column) holding the article's text (default text)")
    s.add_argument("--id-field", metavar="NAME", help="the field (column) holding its id (default id)")
    s.add_argument("--batch-id", help="resume or extend this batch (default: a new id)")
    s.add_argument("--model", help="model name (default SUMMARIZE_MODEL)")
    s.add_argument(
        "--max-words", type=_number(int, 1), help="summary length limit, at least 1 (default SUMMARIZE_MAX_WORDS)"
    )
    s.add_argument(
        "--priority", choices=list(PRIORITIES), default=None, help="served before lower priorities (default normal)"
    )
    s.add_argument(
        "--prompt",
        metavar="FILE",
        help="task instructions replacing the built-in ones ({max_words} "
        "may appear, {{x}} is a literal {x}); the article's delimiting and its guard stay",
    )
    s.add_argument(
        "--json-schema",
        metavar="FILE",
        help="answers are JSON objects following this JSON Schema; each result row gains `data`",
    )
    s.add_argument("--temperature", type=_number(float, 0, high=2), help="sampling temperature, 0 to 2 (default 0)")
    s.add_argument(
        "--fallback-model",
        metavar="MODEL",
        help="model used when the primary answers 404 or fails an article for good (default SUMMARIZE_FALLBACK_MODEL)",
    )
    s.add_argument(
        "--no-cache", action="store_true", help="fresh calls: no answer from the result cache, none stored in it"
    )
    s.add_argument(
        "--mode",
        choices=["online", "batch"],
        default=None,
        help="batch: through the provider's Batch API (half the price, results within 24 h); default online",
    )
    s.add_argument(
        "--fallback-mode",
        choices=["online"],
        default=None,
        help="batch mode: when the endpoint refuses the Batch API for good (no Batch API, a gateway without its "
        "credentials), run the pack's jobs online instead of halting the batch",
    )
    s.add_argument(
        "--model-family",
        choices=["chat", "reasoning"],
        default=None,
        help="how the model is called: chat (max_tokens, temperature) or reasoning (max_completion_tokens, "
        "reasoning_effort, no temperature); default by the model table, else SUMMARIZE_MODEL_FAMILY",
    )
    s.add_argument(
        "--reasoning-effort",
        choices=["minimal", "low", "medium", "high"],
        default=None,
        help="a reasoning model's reasoning_effort (default SUMMARIZE_REASONING_EFFORT, low)",
    )
    s.add_argument(
        "--reasoning-tokens",
        type=_number(int, 0),
        metavar="N",
        default=None,
        help="completion tokens a reasoning model gets for reasoning on top of the summary's room "
        "(default SUMMARIZE_REASONING_TOKENS)",
    )
    s.add_argument(
        "--price-in",
        type=_number(float, 0),
        metavar="USD",
        help="price of the model's input, USD per million "
        "tokens (with --price-out; default SUMMARIZE_PRICES or the built-in table)",
    )
    s.add_argument(
        "--price-out", type=_number(float, 0), metavar="USD", help="price of its output, USD per million tokens"
    )
    _add_budget(s)
    s.add_argument(
        "--skip-invalid",
        action="store_true",
        help="enqueue valid records and keep invalid ones as failed jobs (default: enqueue nothing)",
    )
    s.add_argument("--wait", action="store_true", help="wait until every job is done or failed")
    s.add_argument(
        "--timeout", type=_number(float, 0, above=True), help="with --wait: give up after this many seconds (exit 2)"
    )
    _add_keep_waiting(s)
    s.add_argument("--out", help="write results here when finished (implies --wait)")
    s.add_argument(
        "--format", choices=output.names(), default=None, help="of the --out file (default: by its suffix, else jsonl)"
    )
    s.add_argument(
        "--sample",
        type=_number(int, 1),
        metavar="N",
        help="a trial: the whole file is validated, then only a random N of its articles are submitted, as a "
        "batch of their own (the rest is not)",
    )
    s.add_argument(
        "--seed", type=int, default=0, metavar="S", help="with --sample: which random N (default 0: the same each run)"
    )
    s.add_argument(
        "--require-checks",
        metavar="CHECKS",
        help="comma-separated checks (length, numbers, names, refusal, language) whose flag makes an answer "
        "unusable: asked again, then the fallback model, then failed naming the flag (docs/quality.md)",
    )
    s.add_argument(
        "--language",
        metavar="CODE",
        help="the language (ISO 639-1: en, fr, ...) the summaries must be in, when your --prompt asks for "
        "another than the article's; read by the language check only",
    )
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_submit)


def _add_reading(sub: Any) -> None:
    st = sub.add_parser("status", help="state, counts, tokens of a batch (and its failed jobs)")
    st.add_argument("batch")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    w = sub.add_parser(
        "wait",
        help="progress bar until the batch finishes: exit 0 all done, 1 some failed, 2 timeout, 4 paused",
    )
    w.add_argument("batch")
    w.add_argument("--timeout", type=_number(float, 0, above=True), help="give up after this many seconds (exit 2)")
    _add_keep_waiting(w)
    w.add_argument("-q", "--quiet", action="store_true")
    w.set_defaults(func=cmd_wait)

    r = sub.add_parser("results", help="one line per job: id, status, summary, error, model, usage, attempts, metadata")
    r.add_argument("batch")
    r.add_argument("--out", help="write to this file (default stdout)")
    r.add_argument(
        "--format", choices=output.names(), default=None, help="default: by the --out file's suffix, else jsonl"
    )
    r.add_argument(
        "--follow",
        action="store_true",
        help="rows in finishing order as they are stored, until the batch is over (exit 1 if some "
        "failed); with --out, appends and resumes where an earlier run stopped",
    )
    r.add_argument(
        "--status",
        action="append",
        choices=list(output.ROW_STATUSES),
        help="only the rows of jobs in this status (again for several): --status failed lists every failure",
    )
    r.add_argument("--flagged", action="store_true", help="only the done rows some check flagged (docs/quality.md)")
    r.set_defaults(func=cmd_results)

    bs = sub.add_parser("batches", help="the batches Redis holds, newest first: state, counts, times, cost, mode")
    bs.add_argument("--limit", type=_number(int, 1), default=50, help="how many to list (default 50)")
    bs.add_argument("--offset", type=_number(int, 0), default=0, help="skip this many of the newest first")
    bs.add_argument("--json", action="store_true", help="one JSON object: the page, the total and the next offset")
    bs.set_defaults(func=cmd_batches)

    rt = sub.add_parser(
        "retry", help="requeue the failed jobs of a batch (after the fix: another model, fallback, prices, budget)"
    )
    rt.add_argument("batch")
    rt.add_argument(
        "--flagged",
        action="store_true",
        help="ask again for the done answers some check flagged (their rows), instead of the failed jobs",
    )
    rt.add_argument("--model", help="call this model from now on (recorded in the batch's spec)")
    rt.add_argument("--fallback-model", metavar="MODEL", help="the model to fall back to from now on ('' for none)")
    rt.add_argument("--price-in", type=_number(float, 0), metavar="USD", help="input price, USD per million tokens")
    rt.add_argument("--price-out", type=_number(float, 0), metavar="USD", help="output price, USD per million tokens")
    _add_budget(rt)
    rt.set_defaults(func=cmd_retry)


def _add_keep_waiting(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--keep-waiting",
        action="store_true",
        help="go on waiting while the batch is paused (default: say why and exit 4 at once)",
    )


def _add_budget(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--budget-usd",
        type=_number(float, 0, above=True),
        metavar="USD",
        help="pause the batch before a call would take its cost over this",
    )
    p.add_argument(
        "--budget-tokens",
        type=_number(int, 1),
        metavar="N",
        help="pause the batch before a call would take its tokens (prompt + completion) over this",
    )


def _add_control(sub: Any) -> None:
    pa = sub.add_parser("pause", help="no new calls for the batch; calls in flight finish and are stored")
    pa.add_argument("batch")
    pa.set_defaults(func=cmd_pause)
    re = sub.add_parser("resume", help="go on after pause, or after the budget stopped it (give a larger one)")
    re.add_argument("batch")
    _add_budget(re)
    re.set_defaults(func=cmd_resume)
    ca = sub.add_parser("cancel", help="no further calls; jobs that have not started end 'cancelled'")
    ca.add_argument("batch")
    ca.set_defaults(func=cmd_cancel)
    pu = sub.add_parser("purge", help="remove a batch and its jobs from Redis, once its results are exported")
    pu.add_argument("batch")
    pu.add_argument("--force", action="store_true", help="also when jobs are unfinished (they are dropped)")
    pu.set_defaults(func=cmd_purge)


def _add_llm_serve(sub: Any) -> None:
    ls = sub.add_parser("llm-serve", help="the offline OpenAI-compatible extractive summarizer")
    ls.add_argument("--host", default="127.0.0.1")
    ls.add_argument("--port", type=int, default=8765)
    ls.add_argument(
        "--context-tokens",
        type=int,
        default=16384,
        metavar="N",
        help="context window: prompt plus max_tokens above it is refused (default 16384)",
    )
    ls.add_argument(
        "--batch-delay",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="Batch API: seconds a batch waits in_progress before its lines run (default 2)",
    )
    ls.set_defaults(func=cmd_llm_serve)


def _add_exporter(sub: Any) -> None:
    ex = sub.add_parser(
        "exporter",
        help="Prometheus metrics of what Redis holds (queue, backlog, unfinished batches), read on each scrape",
    )
    ex.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    ex.add_argument("--port", type=int, default=9809, help="port of /metrics (default 9809)")

    def run(args: argparse.Namespace, settings: Settings) -> int:
        from .prometheus import serve

        return serve(settings, args.host, args.port)

    ex.set_defaults(func=run)


def cmd_estimate(args: argparse.Namespace, settings: Settings) -> int:
    from .api import estimate

    options = read_spec_files(args)
    est = estimate(
        args.path,
        settings,
        model=args.model,
        max_words=args.max_words,
        skip_invalid=args.skip_invalid,
        input_format=args.input_format,
        text_field=args.text_field,
        id_field=args.id_field,
        latency=args.latency,
        temperature=args.temperature,
        fallback_model=args.fallback_model,
        no_cache=args.no_cache or None,
        mode=args.mode,
        model_family=args.model_family,
        reasoning_effort=args.reasoning_effort,
        reasoning_tokens=args.reasoning_tokens,
        price_in=args.price_in,
        price_out=args.price_out,
        require_checks=list(parse_names(args.require_checks)) if args.require_checks is not None else None,
        language=checked_language(args.language),
        **options,
    )
    if args.json:
        print(json.dumps(est.to_dict(), ensure_ascii=False))
    else:
        print("\n".join(est.lines()))
    return EXIT_OK


def _add_estimate(sub: Any) -> None:
    e = sub.add_parser(
        "estimate",
        help="what submitting a file would send, cost and take (validated as submit does; nothing stored)",
    )
    e.add_argument("path")
    e.add_argument("--input-format", choices=["jsonl", "csv", "tsv", "parquet", "text"], default=None)
    e.add_argument("--text-field", metavar="NAME", help="the field (column) holding the article's text")
    e.add_argument("--id-field", metavar="NAME", help="the field (column) holding its id")
    e.add_argument("--model", help="model name (default SUMMARIZE_MODEL)")
    e.add_argument("--max-words", type=_number(int, 1), help="summary length limit (default SUMMARIZE_MAX_WORDS)")
    e.add_argument("--prompt", metavar="FILE", help="task instructions, as for submit")
    e.add_argument("--json-schema", metavar="FILE", help="a JSON Schema for the answers, as for submit")
    e.add_argument("--temperature", type=_number(float, 0, high=2))
    e.add_argument("--fallback-model", metavar="MODEL")
    e.add_argument("--no-cache", action="store_true", help="count every article as a call (no cache look-up)")
    e.add_argument("--mode", choices=["online", "batch"], default=None)
    e.add_argument("--model-family", choices=["chat", "reasoning"], default=None)
    e.add_argument("--reasoning-effort", choices=["minimal", "low", "medium", "high"], default=None)
    e.add_argument("--reasoning-tokens", type=_number(int, 0), metavar="N", default=None)
    e.add_argument("--price-in", type=_number(float, 0), metavar="USD", help="input price, USD per million tokens")
    e.add_argument("--price-out", type=_number(float, 0), metavar="USD", help="output price, USD per million tokens")
    e.add_argument("--skip-invalid", action="store_true", help="count the valid records (as submit --skip-invalid)")
    # They shape the cache key (contract/prompt.py fingerprint): the cached count is the gated batch's own.
    e.add_argument("--require-checks", metavar="CHECKS", help="as for submit (a gated batch has a cache of its own)")
    e.add_argument("--language", metavar="CODE", help="as for submit")
    e.add_argument(
        "--latency",
        type=_number(float, 0, above=True),
        default=2.0,
        metavar="SECONDS",
        help="seconds a request takes, for the time figures (default 2)",
    )
    e.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    e.set_defaults(func=cmd_estimate)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="summarize", description="Bulk article summarization through any OpenAI-compatible LLM, on Celery + Redis."
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_submit(sub)
    _add_estimate(sub)
    _add_reading(sub)
    _add_control(sub)
    _add_llm_serve(sub)
    _add_exporter(sub)
    _add_eval(sub)
    return p


def cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    from . import evaluate

    references = evaluate.read_references(args.references)
    batch = _client(settings).batch(args.batch)
    report = evaluate.evaluate(batch.id, batch.client.store.rows(batch.id), references)
    if args.html:
        evaluate.write_html(report, args.html)
        print(f"wrote the report to {args.html}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        for line in evaluate.text_lines(report):
            print(line)
    return EXIT_OK


def _add_eval(sub: Any) -> None:
    ev = sub.add_parser(
        "eval", help="ROUGE-1/2/L of a batch's summaries against reference summaries, beside the checks' rates"
    )
    ev.add_argument("batch")
    ev.add_argument("--references", required=True, metavar="FILE", help='JSON lines of "id" and "reference"')
    ev.add_argument("--json", action="store_true", help="one JSON object: the means, the rates, every row's scores")
    ev.add_argument("--html", metavar="FILE", help="also write a small self-contained HTML report there")
    ev.set_defaults(func=cmd_eval)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        code: int = args.func(args, settings)
        return code
    except UsageError as exc:
        print(f"summarize {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SummarizeError as exc:
        print(f"summarize {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"summarize {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `summarize results B | head`: the reader left; not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
