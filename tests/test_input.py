"""Bad input and bad connections through the real `summarize` CLI: real redis-server, real Celery worker.

Default mode must refuse the whole input (exit 3, every bad record listed as file:line, nothing in Redis,
nothing on the queue); --skip-invalid keeps bad records as failed InputError jobs next to the good ones.
Refused submits run against a group with no worker, so an empty queue there really means nothing was published.

The commands that fail on an unreachable Redis or bad credentials spend many seconds in redis-py's reconnect
retries; they are started in the background when this module begins (`slow`) and checked at the end.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from contract.keys import Keys
from producer.api import Client
from scripts.stack import BIN, Stack
from tests.conftest import Group, batch_id, isolated_group
from tests.faultserver import FaultServer, expected_summary
from tests.helpers import jl, write_jsonl, write_lines

Proc = subprocess.CompletedProcess[str]

UNREACHABLE = "redis://127.0.0.1:1/0"
PASSWORD = "s3cret-pw"
WRONG_PASSWORD = "wr0ng-pw-7731"
#: a bound that only stops a hung command: that rejected credentials are not retried (they used to be, for
#: ~16 s with a wrong password and ~4 min with none) is asserted on the attempts the Redis counted
#: (credentials_tried_once), not on the wall clock of a busy machine
CREDENTIALS_DEADLINE = 60.0


def listed(stderr: str) -> list[str]:
    """The bad records a refused submit lists, one per line."""
    return [line.strip() for line in stderr.splitlines() if line.startswith("  ")]


# ---- groups and background commands ------------------------------------------------------------


@pytest.fixture(scope="module")
def quiet(stack: Stack, redis_url: str, fault_server: FaultServer) -> Group:
    """A group with its own queue and prefix and no worker: its queue shows whatever a submit published."""
    return isolated_group(stack, redis_url, fault_server.url)


@pytest.fixture(scope="module")
def quiet_client(quiet: Group) -> Iterator[Client]:
    client = quiet.client()
    yield client
    client.close()


@pytest.fixture(scope="module")
def fault_client(fault: Group) -> Iterator[Client]:
    client = fault.client()
    yield client
    client.close()


class Slow:
    """CLI runs started at once in threads; each test collects its own."""

    def __init__(self, group: Group) -> None:
        self.group = group
        self.pool = ThreadPoolExecutor(max_workers=12)
        self.runs: dict[str, Future[Proc]] = {}
        #: the password-protected Redis the credential runs talk to: (port, its password)
        self.redis: tuple[str, str] | None = None

    def start(self, name: str, *args: str, env: dict[str, str], timeout: float = 120) -> None:
        self.runs[name] = self.pool.submit(self.group.cli, *args, env=env, timeout=timeout)

    def result(self, name: str) -> Proc:
        try:
            return self.runs[name].result()
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"{name}: `summarize {' '.join(map(str, exc.cmd[1:]))}` still running after {exc.timeout}s")


#: the tests that read `slow`; its runs start only when one of them is selected
SLOW_TESTS = (
    "test_unreachable_redis_is_one_line_exit_3",
    "test_wrong_password_is_rejected_without_showing_it",
    "test_missing_password_is_reported_promptly",
)


@pytest.fixture(scope="module", autouse=True)
def slow(request: pytest.FixtureRequest, fault: Group, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slow]:
    """Starts the slow failure cases now, so they run while the other tests do."""
    runs = Slow(fault)
    if not any(item.name in SLOW_TESTS for item in request.session.items):
        yield runs
        return
    src = write_lines(
        tmp_path_factory.mktemp("slow") / "ok.jsonl",
        jl({"id": "s1", "text": "A valid article about the new tram line opening."}),
    )
    own = Stack()  # a Redis of our own that wants a password (Stack.redis sets own.env, not the session's)
    try:
        redis_proc = own.redis(password=PASSWORD)
        port = redis_proc.env["PORT"]
        runs.redis = (port, PASSWORD)
        right = {"REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:{port}/0"}
        wrong = {"REDIS_URL": f"redis://:{WRONG_PASSWORD}@127.0.0.1:{port}/0"}
        missing = {"REDIS_URL": f"redis://127.0.0.1:{port}/0"}
        unreachable = {"REDIS_URL": UNREACHABLE}
        for cmd in (["status", "b1"], ["wait", "b1"], ["submit", str(src), "-q"]):
            runs.start(f"unreachable-{cmd[0]}", *cmd, env=unreachable)
        runs.start("wrong-status", "status", "b1", env=wrong, timeout=CREDENTIALS_DEADLINE)
        runs.start("wrong-submit", "submit", str(src), "-q", env=wrong, timeout=CREDENTIALS_DEADLINE)
        runs.start("right-submit", "submit", str(src), "-q", "--batch-id", "pw-ok", env=right)
        runs.start("missing-status", "status", "b1", env=missing, timeout=CREDENTIALS_DEADLINE)
        yield runs
    finally:
        runs.pool.shutdown(wait=True)  # every run has a timeout; subprocess.run kills its child on expiry
        own.stop()


# ---- default mode: refuse everything, store nothing --------------------------------------------


def refused(group: Group, client: Client, r: Proc, bid: str, bad: dict[str, str]) -> None:
    """Exit 3, exactly the bad records listed (each 'where' with its reason), and nothing in Redis or the queue.

    `bad` maps the start of a listed line ('file:line' or 'file (id ...)') to a fragment of its reason.
    """
    assert r.returncode == 3, f"exit {r.returncode}, stderr:\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    assert f"summarize submit: error: {len(bad)} invalid record(s); nothing was enqueued:" in r.stderr, r.stderr
    rows = listed(r.stderr)
    assert len(rows) == len(bad), f"expected {len(bad)} listed records, got:\n{r.stderr}"
    for where, reason in bad.items():
        assert any(row.startswith(where) and reason in row for row in rows), (
            f"no listed record starts with {where!r} and says {reason!r}:\n{r.stderr}"
        )
    assert r.stdout == "", r.stdout
    nothing_stored(group, client, bid)


def submit_refused(
    group: Group,
    client: Client,
    src: str | Path,
    bad: dict[str, str],
    env: dict[str, str] | None = None,
    input: str | None = None,
) -> Proc:
    """`summarize submit SRC` into a new batch, which must be refused listing exactly `bad` (see `refused`)."""
    bid = batch_id()
    r = group.cli("submit", str(src), "--batch-id", bid, "-q", env=env, input=input)
    refused(group, client, r, bid, bad)
    return r


def nothing_stored(group: Group, client: Client, bid: str) -> None:
    keys = Keys(group.settings.key_prefix)
    assert not client.redis.exists(keys.batch(bid)), "the batch hash was created"
    assert client.store.existing_ids(bid) == 0, "job ids were stored"
    assert client.redis.keys(f"*{bid}*") == [], client.redis.keys(f"*{bid}*")
    due: list[str] = client.redis.zrange(keys.due, 0, -1)  # type: ignore[assignment]
    assert not [m for m in due if m.startswith(f"{bid}:")], due
    assert client.redis.llen(group.settings.queue) == 0, "a message was published"


def test_invalid_json_lines_are_listed_with_line_and_column(quiet: Group, quiet_client: Client, tmp_path: Path) -> None:
    src = write_lines(
        tmp_path / "in.jsonl",
        jl({"id": "g1", "text": "A good article about the harbour."}),
        b'{"id": "j2", "text": "unterminated\n',
        b"not json at all\n",
        jl({"id": "g4", "text": "Another good article about the council."}),
        b'{"id": "j5", "text": "trailing comma",}\n',
        b"[1, 2]\n",
    )
    bad = {
        f"{src}:2: ": "invalid JSON: Invalid control character",  # the string runs into the newline
        f"{src}:3: ": "invalid JSON: Expecting value at column 1",
        f"{src}:5: ": "invalid JSON:",
        f"{src}:6: ": "got list",
    }
    submit_refused(quiet, quiet_client, src, bad)


def test_text_missing_or_not_a_string(quiet: Group, quiet_client: Client, tmp_path: Path) -> None:
    src = write_lines(
        tmp_path / "in.jsonl",
        jl({"id": "m1", "title": "no text here"}),
        jl({"id": "m2", "text": 42}),
        jl({"id": "m3", "text": None}),
        jl({"id": "m4", "text": ["a", "list"]}),
        jl({"id": "g5", "text": "The only good article in this file."}),
        jl({"body": "no id and no text"}),
    )
    bad = {
        f"{src}:1 (id 'm1'): ": "'text' is missing",
        f"{src}:2 (id 'm2'): ": "'text' must be a string, got int",
        f"{src}:3 (id 'm3'): ": "'text' must be a string, got NoneType",
        f"{src}:4 (id 'm4'): ": "'text' must be a string, got list",
        f"{src}:6: ": "'text' is missing",
    }
    submit_refused(quiet, quiet_client, src, bad)


def test_empty_and_whitespace_only_text(quiet: Group, quiet_client: Client, tmp_path: Path) -> None:
    src = write_lines(
        tmp_path / "in.jsonl",
        jl({"id": "e1", "text": ""}),
        jl({"id": "g2", "text": "A good one."}),
        jl({"id": "e3", "text": " \t\n\r  \u00a0 "}),
        b"\n",  # a blank line is skipped, not an error
        jl({"id": "e5", "text": "\n\n"}),
    )
    bad = {
        f"{src}:1 (id 'e1'): ": "'text' is empty or whitespace only",
        f"{src}:3 (id 'e3'): ": "'text' is empty or whitespace only",
        f"{src}:5 (id 'e5'): ": "'text' is empty or whitespace only",
    }
    submit_refused(quiet, quiet_client, src, bad)


def test_nul_bytes_raw_and_escaped(quiet: Group, quiet_client: Client, tmp_path: Path) -> None:
    src = write_lines(
        tmp_path / "in.jsonl",
        jl({"id": "g1", "text": "A good article."}),
        b'{"id": "n2", "text": "before\x00after"}\n',  # a raw NUL byte in the line
        jl({"id": "n3", "text": "before\u0000after"}),
    )  # written as the escape \u0000
    assert b"\\u0000" in src.read_bytes().splitlines()[2]
    bad = {
        f"{src}:2: ": "line contains NUL bytes",
        f"{src}:3 (id 'n3'): ": "'text' contains NUL characters",
    }
    submit_refused(quiet, quiet_client, src, bad)


def test_invalid_utf8_and_unpaired_surrogates(quiet: Group, quiet_client: Client, tmp_path: Path) -> None:
    bad_utf8 = b'{"id": "u1", "text": "caf\xe9 au lait"}\n'
    bad_ff = b'{"id": "u4", "text": "\xff\xfe"}\n'
    src = write_lines(
        tmp_path / "in.jsonl",
        bad_utf8,
        jl({"id": "g2", "text": "Caf\u00e9 written correctly."}),
        b'{"id": "u3", "text": "half a pair \\ud800 here"}\n',
        bad_ff,
    )
    bad = {
        f"{src}:1: ": f"invalid UTF-8 at byte {bad_utf8.index(0xE9)} of the line",
        f"{src}:3 (id 'u3'): ": "unpaired surrogates",
        f"{src}:4: ": f"invalid UTF-8 at byte {bad_ff.index(0xFF)} of the line",
    }
    submit_refused(quiet, quiet_client, src, bad)


_RSS = (
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
)


def submit_measured(group: Group, *args: str) -> tuple[Proc, int]:
    """Run `summarize submit` under a wrapper whose only child it is: (result, peak RSS in KiB)."""
    r = subprocess.run(
        [sys.executable, "-c", _RSS, str(BIN / "summarize"), "submit", *args],
        env=group.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    *out, rss = r.stdout.splitlines()
    r.stdout = "".join(line + "\n" for line in out)  # the CLI's own output, without the wrapper's line
    return r, int(rss)


def test_50mb_line_is_refused_naming_the_limit_without_holding_it(
    quiet: Group, quiet_client: Client, tmp_path: Path
) -> None:
    huge = b'{"id": "huge", "text": "' + b"x" * 50_000_000 + b'"}\n'
    src = write_lines(
        tmp_path / "huge.jsonl",
        jl({"id": "g1", "text": "A good article before the huge one."}),
        huge,
        jl({"id": "g3", "text": "A good article after the huge one."}),
        jl({"id": "m4"}),
    )  # reading goes on after the huge line, with the right line numbers
    small = write_lines(tmp_path / "small.jsonl", jl({"id": "m1"}))

    bid = batch_id()
    r_small, rss_small = submit_measured(quiet, str(small), "--batch-id", bid, "-q")
    assert r_small.returncode == 3, r_small.stderr
    t0 = time.monotonic()
    r, rss = submit_measured(quiet, str(src), "--batch-id", bid, "-q")
    elapsed = time.monotonic() - t0
    refused(
        quiet,
        quiet_client,
        r,
        bid,
        {
            f"{src}:2: ": f"line is {len(huge)} bytes; an article may be at most 262144 bytes "
            "(SUMMARIZE_MAX_ARTICLE_BYTES)",
            f"{src}:4 (id 'm4'): ": "'text' is missing",
        },
    )
    assert elapsed < 30, f"refusing a 50 MB line took {elapsed:.1f}s"
    assert rss < rss_small + 25 * 1024, (
        f"peak RSS {rss} KiB vs {rss_small} KiB for a tiny file: the 50 MB line was held in memory"
    )


def test_duplicate_ids_name_the_first_line(quiet: Group, quiet_client: Client, tmp_path: Path) -> None:
    src = write_lines(
        tmp_path / "in.jsonl",
        jl({"id": "a", "text": "First article with id a."}),
        jl({"id": "b", "text": "Article b."}),
        jl({"id": "a", "text": "A different article reusing id a."}),
        jl({"id": 7, "text": "Integer id seven."}),
        jl({"id": "7", "text": "String id seven: the same id."}),
        jl({"id": "a", "text": "A third use of id a."}),
    )
    bad = {
        f"{src}:3 (id 'a'): ": "duplicate id 'a': first seen at line 1",
        f"{src}:5 (id '7'): ": "duplicate id '7': first seen at line 4",
        f"{src}:6 (id 'a'): ": "duplicate id 'a': first seen at line 1",
    }
    submit_refused(quiet, quiet_client, src, bad)


def test_directory_lists_bad_files_and_ignores_other_extensions(
    quiet: Group, quiet_client: Client, tmp_path: Path
) -> None:
    d = tmp_path / "articles"
    d.mkdir()
    (d / "good.txt").write_text("A good plain-text article about the river.", encoding="utf-8")
    (d / "empty.md").write_bytes(b"")
    (d / "latin1.txt").write_bytes(b"Caf\xe9 society returns to the old town.")
    (d / "data.json").write_bytes(b"\xff not an article, not even UTF-8 \x00")  # ignored: not .txt/.md
    bad = {
        f"{d / 'empty.md'} (id 'empty'): ": "'text' is empty or whitespace only",
        f"{d / 'latin1.txt'} (id 'latin1'): ": "invalid UTF-8 at byte 3",
    }
    r = submit_refused(quiet, quiet_client, d, bad)
    assert "data.json" not in r.stderr and "good.txt" not in r.stderr, r.stderr


def test_stdin_with_one_bad_line(quiet: Group, quiet_client: Client) -> None:
    lines = [
        jl({"id": "s1", "text": "First article read from stdin."}),
        jl({"id": "s2", "text": "   "}),
        jl({"id": "s3", "text": "Third article read from stdin."}),
    ]
    bad = {"<stdin>:2 (id 's2'): ": "'text' is empty or whitespace only"}
    submit_refused(quiet, quiet_client, "-", bad, input=b"".join(lines).decode())


def test_article_size_limit_is_in_bytes_and_named(
    quiet: Group, quiet_client: Client, fault: Group, fault_client: Client, tmp_path: Path
) -> None:
    env = {"SUMMARIZE_MAX_ARTICLE_BYTES": "1000"}
    at_limit = ["\u00e9" * 500, "a" * 1000]  # 1000 bytes each: 500 two-byte characters, 1000 ASCII ones
    src = write_lines(
        tmp_path / "in.jsonl",
        jl({"id": "big-ascii", "text": "a" * 1001}),
        jl({"id": "big-utf8", "text": "\u00e9" * 501}),  # 501 characters, 1002 bytes
        jl({"id": "ok-utf8", "text": at_limit[0]}),
        jl({"id": "ok-ascii", "text": at_limit[1]}),
    )
    bad = {
        f"{src}:1 (id 'big-ascii'): ": "article is 1001 bytes; the limit is 1000 (SUMMARIZE_MAX_ARTICLE_BYTES)",
        f"{src}:2 (id 'big-utf8'): ": "article is 1002 bytes; the limit is 1000 (SUMMARIZE_MAX_ARTICLE_BYTES)",
    }
    submit_refused(quiet, quiet_client, src, bad, env=env)

    d = tmp_path / "dir"
    d.mkdir()
    (d / "big.txt").write_bytes(b"y" * 1001)
    bad = {f"{d / 'big.txt'} (id 'big'): ": "article is 1001 bytes; the limit is 1000 (SUMMARIZE_MAX_ARTICLE_BYTES)"}
    submit_refused(quiet, quiet_client, d, bad, env=env)

    # Articles of exactly the limit go through, all the way to a summary.
    ok = write_lines(
        tmp_path / "ok.jsonl", jl({"id": "ok-utf8", "text": at_limit[0]}), jl({"id": "ok-ascii", "text": at_limit[1]})
    )
    bid = batch_id()
    r = fault.cli("submit", str(ok), "--batch-id", bid, "-q", env=env)
    assert r.returncode == 0, r.stderr
    assert "2 enqueued" in r.stderr, r.stderr
    assert fault_client.batch(bid).wait(timeout=60)["done"] == 2
    rows = {res.id: res for res in fault_client.store.results(bid)}
    assert rows["ok-utf8"].summary == expected_summary(at_limit[0])
    assert rows["ok-ascii"].summary == expected_summary(at_limit[1])


def test_escaped_article_under_the_limit_is_accepted(fault: Group, tmp_path: Path) -> None:
    text = "Привет, мир. " * 800  # 17600 UTF-8 bytes; json.dumps writes each Cyrillic letter as 6 bytes
    assert len(text.encode()) < 20000 < len(jl({"text": text}))
    src = write_lines(tmp_path / "ru.jsonl", jl({"id": "ru", "text": text}))
    r = fault.cli("submit", str(src), "--batch-id", batch_id(), "-q", env={"SUMMARIZE_MAX_ARTICLE_BYTES": "20000"})
    assert r.returncode == 0, f"an article of {len(text.encode())} bytes was refused under a 20000 limit:\n{r.stderr}"


def test_json_string_line_message_does_not_contradict_itself(
    quiet: Group, quiet_client: Client, tmp_path: Path
) -> None:
    src = write_lines(tmp_path / "in.jsonl", b'"a bare JSON string"\n')
    r = submit_refused(quiet, quiet_client, src, {f"{src}:1: ": "expected a JSON object"})
    assert "or a string, got str" not in r.stderr, r.stderr


def test_json_error_message_reads_well(quiet: Group, quiet_client: Client, tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", b'{"id": "j1", "text": "unterminated at the end of the file')
    r = submit_refused(quiet, quiet_client, src, {f"{src}:1: ": "invalid JSON: Unterminated string"})
    assert " at at " not in r.stderr, r.stderr


def test_id_with_unpaired_surrogate_is_an_input_error(quiet: Group, quiet_client: Client, tmp_path: Path) -> None:
    src = write_lines(
        tmp_path / "in.jsonl",
        jl({"id": "g1", "text": "A good article."}),
        b'{"id": "bad\\udc80id", "text": "An article whose id is not valid Unicode."}\n',
    )
    submit_refused(quiet, quiet_client, src, {f"{src}:2: ": "'id'"})


def test_metadata_with_unpaired_surrogate_is_an_input_error(quiet: Group, quiet_client: Client, tmp_path: Path) -> None:
    src = write_lines(
        tmp_path / "in.jsonl",
        jl({"id": "g1", "text": "A good article."}),
        b'{"id": "m2", "text": "A good text.", "author": "bad \\ud800 name"}\n',
    )
    bid = batch_id()
    r = quiet.cli("submit", str(src), "--batch-id", bid, "-q")
    try:
        refused(quiet, quiet_client, r, bid, {f"{src}:2 (id 'm2'): ": "author"})
    finally:
        # Don't leave the stray batch hash behind for the other tests' "nothing stored" checks.
        for key in quiet_client.redis.keys(f"*{bid}*"):
            quiet_client.redis.delete(key)


# ---- --skip-invalid: good records summarized, bad ones kept as failed jobs ---------------------


def test_skip_invalid_keeps_bad_records_as_failed_jobs(fault: Group, fault_client: Client, tmp_path: Path) -> None:
    good = {
        "ok1": "The harbour reopened on Monday after three weeks of repairs to the sea wall.",
        "ok2": "The council approved the budget after a long debate about school funding.",
    }
    no_id_text = "A third valid article, without an id, about the weekend weather."
    src = write_lines(
        tmp_path / "mixed.jsonl",
        jl({"id": "ok1", "text": good["ok1"], "section": "port"}),  # 1
        b'{"id": "j2", "text": "unterminated\n',  # 2
        jl({"id": "m3", "note": "no text"}),  # 3
        jl({"id": "n4", "text": 42}),  # 4
        jl({"id": "e5", "text": ""}),  # 5
        jl({"id": "w6", "text": " \t\n "}),  # 6
        b'{"id": "z7", "text": "a\x00b"}\n',  # 7
        jl({"id": "z8", "text": "a\u0000b"}),  # 8
        b'{"id": "u9", "text": "caf\xe9"}\n',  # 9
        jl({"id": "ok1", "text": "Same id as line 1."}),  # 10
        jl({"id": "ok2", "text": good["ok2"]}),  # 11
        b"\n",  # 12 (blank: skipped)
        jl({"id": "big", "text": "x" * 300_000}),  # 13
        jl({"text": no_id_text}),
    )  # 14
    failed = {  # job id -> (line, reason)
        f"invalid@{src}:2": (2, "invalid JSON"),
        f"invalid@{src}:3": (3, "'text' is missing"),
        f"invalid@{src}:4": (4, "'text' must be a string, got int"),
        f"invalid@{src}:5": (5, "'text' is empty or whitespace only"),
        f"invalid@{src}:6": (6, "'text' is empty or whitespace only"),
        f"invalid@{src}:7": (7, "line contains NUL bytes"),
        f"invalid@{src}:8": (8, "'text' contains NUL characters"),
        f"invalid@{src}:9": (9, "invalid UTF-8"),
        f"invalid@{src}:10": (10, "duplicate id 'ok1': first seen at line 1"),
        f"invalid@{src}:13": (13, "article is 300000 bytes; the limit is 262144 (SUMMARIZE_MAX_ARTICLE_BYTES)"),
    }
    bid = batch_id()
    sub = fault.cli("submit", str(src), "--batch-id", bid, "--skip-invalid", "-q")
    assert sub.returncode == 0, sub.stderr
    assert sub.stdout.strip() == bid
    assert (
        f"submitted 13 record(s) to batch {bid}: 3 enqueued, 0 already there, 10 invalid (kept as failed jobs)"
    ) in sub.stderr, sub.stderr
    invalid_lines = [line for line in sub.stderr.splitlines() if line.startswith("  invalid: ")]
    assert len(invalid_lines) == 10, sub.stderr
    for line_no, reason in failed.values():
        assert any(f"{src}:{line_no}" in line and reason in line for line in invalid_lines), (
            f"line {line_no} ({reason}) not reported:\n{sub.stderr}"
        )

    wait = fault.cli("wait", bid, "--timeout", "60", "-q")
    assert wait.returncode == 1, f"wait exit {wait.returncode}: {wait.stderr}"
    assert "3 done, 10 failed" in wait.stderr, wait.stderr

    rows = {res.id: res.to_dict() for res in fault_client.store.results(bid)}
    no_id = next(k for k in rows if k not in good and k not in failed)
    assert len(rows) == 13 and len(no_id) == 20, sorted(rows)
    for job_id, text in {**good, no_id: no_id_text}.items():
        assert rows[job_id]["status"] == "done", rows[job_id]
        assert rows[job_id]["summary"] == expected_summary(text), rows[job_id]
    assert rows["ok1"]["metadata"] == {"section": "port"}
    for job_id, (line_no, reason) in failed.items():
        row = rows[job_id]
        assert row["status"] == "failed" and row["error_type"] == "InputError", row
        assert reason in row["error"] and row["summary"] is None, row
        given = {2: None, 3: "m3", 4: "n4", 5: "e5", 6: "w6", 7: None, 8: "z8", 9: None, 10: "ok1", 13: "big"}
        assert row["metadata"] == {"source": str(src), "line": line_no, "id": given[line_no]}, row

    status = fault_client.store.status(bid)
    assert {k: status[k] for k in ("total", "queued", "running", "done", "failed")} == {
        "total": 13,
        "queued": 0,
        "running": 0,
        "done": 3,
        "failed": 10,
    }, status
    assert fault_client.store.existing_ids(bid) == 13
    dead: set[str] = fault_client.redis.smembers(Keys(fault.settings.key_prefix).dead(bid))  # type: ignore[assignment]
    assert dead == set(failed)


def test_skip_invalid_ids_cannot_collide_with_valid_ids(fault: Group, fault_client: Client, tmp_path: Path) -> None:
    src = write_lines(
        tmp_path / "in.jsonl",
        jl({"id": "a", "title": "no text"}),
        jl({"id": "a@line1", "text": "A valid article whose id happens to look like that."}),
    )
    bid = batch_id()
    sub = fault.cli("submit", str(src), "--batch-id", bid, "--skip-invalid", "-q")
    assert sub.returncode == 0, sub.stderr
    status = fault_client.store.status(bid)
    assert (status["total"], status["failed"]) == (2, 1), f"{status}\n{sub.stderr}"
    assert "1 enqueued" in sub.stderr, sub.stderr


# ---- resubmitting into the same batch ----------------------------------------------------------


def test_resubmit_same_batch_skips_existing_and_adds_new(fault: Group, fault_client: Client, tmp_path: Path) -> None:
    first = [{"id": f"r{i}", "text": f"Resubmit article {i} about the ferry timetable."} for i in range(3)]
    src = write_jsonl(tmp_path / "in.jsonl", first)
    bid = batch_id()
    r1 = fault.cli("submit", str(src), "--batch-id", bid, "-q")
    assert r1.returncode == 0 and "3 enqueued, 0 already there" in r1.stderr, r1.stderr
    r2 = fault.cli("submit", str(src), "--batch-id", bid, "-q")
    assert r2.returncode == 0, r2.stderr
    assert f"submitted 3 record(s) to batch {bid}: 0 enqueued, 3 already there, 0 invalid" in r2.stderr, r2.stderr
    assert fault_client.store.existing_ids(bid) == 3

    more = [{"id": f"r{i}", "text": f"Resubmit article {i} about the ferry timetable."} for i in range(3, 5)]
    write_jsonl(src, first + more)
    r3 = fault.cli("submit", str(src), "--batch-id", bid, "-q")
    assert r3.returncode == 0 and "2 enqueued, 3 already there" in r3.stderr, r3.stderr
    assert fault_client.store.existing_ids(bid) == 5

    assert fault_client.batch(bid).wait(timeout=60)["done"] == 5
    results = list(fault_client.store.results(bid))
    assert [x.id for x in results] == [f"r{i}" for i in range(5)]
    assert all(x.status == "done" and x.attempts == 1 for x in results), results  # nothing ran twice
    assert fault_client.store.status(bid)["total"] == 5


def test_an_id_reused_for_another_text_in_a_second_file_is_named_not_skipped(
    fault: Group, fault_client: Client, tmp_path: Path
) -> None:
    a = write_lines(
        tmp_path / "a.jsonl",
        jl({"id": "x1", "text": "The dam was inspected on Monday."}),
        jl({"id": "x2", "text": "The ferry resumed its winter timetable."}),
    )
    b = write_lines(
        tmp_path / "b.jsonl",
        jl({"id": "x1", "text": "The dam was inspected on Monday."}),
        jl({"id": "x2", "text": "A different story that reuses the id x2."}),
        jl({"id": "x3", "text": "The library extended its opening hours."}),
    )
    bid = batch_id()
    assert fault.cli("submit", str(a), "--batch-id", bid, "-q").returncode == 0
    strict = fault.cli("submit", str(b), "--batch-id", bid, "-q")
    assert strict.returncode == 3
    (line,) = [x for x in strict.stderr.splitlines() if "'x2'" in x]
    assert f"{b}:2" in line and f"{a}:2" in line and "different text" in line, strict.stderr
    assert fault_client.store.status(bid)["total"] == 2  # strict: nothing of b.jsonl was enqueued

    kept = fault.cli("submit", str(b), "--batch-id", bid, "--skip-invalid", "-q")
    assert kept.returncode == 0, kept.stderr
    assert "1 enqueued, 1 already there, 1 invalid (kept as failed jobs)" in kept.stderr, kept.stderr
    assert fault_client.batch(bid).wait(timeout=60)["done"] == 3
    rows = {r.id: r for r in fault_client.store.results(bid)}
    conflict = rows[f"invalid@{b}:2"]
    assert conflict.status == "failed" and conflict.error_type == "InputError" and "x2" in (conflict.error or "")
    assert rows["x2"].summary == expected_summary("The ferry resumed its winter timetable.")


def test_identical_texts_without_ids_are_rows_of_their_own_and_stable_on_resume(
    fault: Group, fault_client: Client, tmp_path: Path
) -> None:
    same, other = "The wire story syndicated twice.", "Another story."
    src = write_lines(
        tmp_path / "in.jsonl", jl({"text": same, "n": 1}), jl({"text": same, "n": 2}), jl({"text": other})
    )
    bid = batch_id()
    first = fault.cli("submit", str(src), "--batch-id", bid, "-q")
    assert "3 enqueued, 0 already there" in first.stderr, first.stderr
    again = fault.cli("submit", str(src), "--batch-id", bid, "-q")
    assert "0 enqueued, 3 already there" in again.stderr, again.stderr
    assert fault_client.batch(bid).wait(timeout=60)["done"] == 3
    rows = list(fault_client.store.results(bid))
    assert [r.metadata.get("n") for r in rows] == [1, 2, None]
    assert rows[1].id == f"{rows[0].id}-2" and len({r.id for r in rows}) == 3


# ---- unknown batches and broken connections ----------------------------------------------------


def test_unknown_batch_id_is_exit_3_naming_it(fault: Group, fault_client: Client, tmp_path: Path) -> None:
    bid = batch_id()
    out = tmp_path / "results.jsonl"
    cmds = [
        ["status", bid, "--json"],
        ["results", bid, "--out", str(out)],
        ["wait", bid, "--timeout", "5"],
        ["retry", bid],
    ]
    with ThreadPoolExecutor(len(cmds)) as pool:
        runs = list(pool.map(lambda c: fault.cli(*c), cmds))
    for cmd, r in zip(cmds, runs, strict=True):
        assert r.returncode == 3, (cmd, r.returncode, r.stderr)
        assert f"summarize {cmd[0]}: error: unknown batch {bid!r}" in r.stderr, (cmd, r.stderr)
        assert "Traceback" not in r.stderr and r.stdout == "", (cmd, r.stdout, r.stderr)
    assert not out.exists(), "results --out created a file for an unknown batch"
    assert fault_client.redis.keys(f"*{bid}*") == [], "a command created keys for the unknown batch"


def one_line_error(r: Proc, command: str, what: str) -> str:
    assert r.returncode == 3, f"{command}: exit {r.returncode}, stderr:\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stdout == "", r.stdout
    err = r.stderr.strip()
    assert "\n" not in err, f"{command}: error is not one line:\n{err}"
    assert err.startswith(f"summarize {command}: error: Redis at "), err
    assert what in err, err
    return err


def test_unreachable_redis_is_one_line_exit_3(slow: Slow) -> None:
    for command in ("status", "wait", "submit"):
        err = one_line_error(slow.result(f"unreachable-{command}"), command, "is unreachable")
        assert UNREACHABLE in err, err


def test_wrong_password_is_rejected_without_showing_it(slow: Slow) -> None:
    right = slow.result("right-submit")
    assert right.returncode == 0, f"the right password should work:\n{right.stderr}"
    for command in ("status", "submit"):
        r = slow.result(f"wrong-{command}")
        one_line_error(r, command, "rejected the credentials")
        for secret in (WRONG_PASSWORD, PASSWORD):
            assert secret not in r.stdout + r.stderr, f"{command} printed a password:\n{r.stderr}"
    assert PASSWORD not in right.stdout + right.stderr
    credentials_tried_once(slow, "WRONGPASS", 2)


def credentials_tried_once(slow: Slow, error: str, runs: int) -> None:
    """Each of `runs` commands was refused `error` (WRONGPASS, NOAUTH) at most twice by the Redis (a ping
    and the command it checked): rejected credentials are reported, not retried."""
    import redis

    assert slow.redis is not None
    port, password = slow.redis
    stats = redis.Redis(port=int(port), password=password).info("errorstats")
    refused = int(stats.get(f"errorstat_{error}", {}).get("count", 0))
    assert 1 <= refused <= 2 * runs, (error, refused, stats)


def test_missing_password_is_reported_promptly(slow: Slow) -> None:
    r = slow.result("missing-status")
    one_line_error(r, "status", "rejected the credentials")
    credentials_tried_once(slow, "NOAUTH", 1)
