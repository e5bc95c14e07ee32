"""Errors and waits a user can read, through the real `summarize` command: a paused batch's `wait`, one-line
timeouts and errors (never a traceback), options that would mean nothing, the statuses rows carry, a resume
command that works, a worker started before Redis, and URLs printed without their credentials."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from contract.settings import Settings, redact_url
from scripts.stack import BIN, ROOT, Stack, free_port
from tests.conftest import Group, batch_id, isolated_group
from tests.helpers import articles, wait_until, write_jsonl


def one_line(r: subprocess.CompletedProcess[str], code: int, *parts: str) -> str:
    """The command's stderr is one line (no traceback) holding every part; it exited `code`."""
    line = r.stderr.strip()
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "\n" not in line, r.stderr
    for part in parts:
        assert part in line, (part, line)
    return line


@pytest.fixture
def idle(stack: Stack, redis_url: str, local_llm: str) -> Group:
    """A deployment with no worker: what is submitted stays queued."""
    return isolated_group(stack, redis_url, local_llm, "sumy-lexrank")


# --------------------------------------------------------------------------- wait, results on an unfinished batch


def test_wait_on_a_batch_paused_by_the_user_says_so_and_exits_4(idle: Group, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", articles("pz", 3))
    bid = batch_id()
    assert idle.cli("submit", str(src), "--batch-id", bid, "-q").returncode == 0
    assert idle.cli("pause", bid).returncode == 0
    line = one_line(idle.cli("wait", bid, "-q"), 4, f"batch {bid} is paused", f"summarize resume {bid}")
    assert "--keep-waiting" in line
    # Asked to keep waiting it does, until its timeout: one line, no Python dict.
    line = one_line(idle.cli("wait", bid, "--keep-waiting", "--timeout", "1", "-q"), 2, "timeout", "3 queued")
    assert "{" not in line and "'" not in line
    # The rows of an unfinished batch carry the names `status` counts, and stderr says it is not finished.
    r = idle.cli("results", bid)
    assert r.returncode == 0 and [json.loads(x)["status"] for x in r.stdout.splitlines()] == ["queued"] * 3
    assert f"batch {bid} is not finished (paused (user)" in r.stderr and "3 queued" in r.stderr


def test_wait_timeout_is_one_line(idle: Group, tmp_path: Path) -> None:
    bid = batch_id()
    src = write_jsonl(tmp_path / "in.jsonl", articles("to", 2))
    assert idle.cli("submit", str(src), "--batch-id", bid, "-q").returncode == 0
    line = one_line(idle.cli("wait", bid, "--timeout", "0.5", "-q"), 2, f"summarize wait: timeout: batch {bid}")
    assert "not finished after 0.5 s: 2 total, 2 queued, 0 running, 0 done" in line and "{" not in line


def test_a_batch_paused_by_its_budget_says_how_to_go_on(local: Group, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", articles("bud", 4))
    bid = batch_id()
    # One token can't pay for any call: the batch pauses before its first one.
    r = local.cli("submit", str(src), "--batch-id", bid, "--budget-tokens", "1", "--wait", "--timeout", "60", "-q")
    assert r.returncode == 4 and "Traceback" not in r.stderr, r.stderr
    line = r.stderr.strip().splitlines()[-1]  # after the line the submit itself prints
    for part in ("paused by its budget", "0 of 1 tokens", f"summarize resume {bid} --budget-tokens N"):
        assert part in line, (part, line)
    assert r.stdout.strip() == bid, line
    rows = local.results(bid)  # parked jobs are queued, as `status` counts them
    assert {row["status"] for row in rows} == {"queued"} and len(rows) == 4
    status = json.loads(local.cli("status", bid, "--json").stdout)
    assert status["state"] == "paused" and status["reason"] == "budget" and status["queued"] == 4
    assert local.cli("resume", bid, "--budget-tokens", "10000000").returncode == 0
    done = local.cli("wait", bid, "--timeout", "60", "-q")
    assert done.returncode == 0, done.stderr
    assert {row["status"] for row in local.results(bid)} == {"done"}


def test_resume_of_a_cancelled_batch_is_an_error(idle: Group, tmp_path: Path) -> None:
    bid = batch_id()
    assert (
        idle.cli("submit", str(write_jsonl(tmp_path / "in.jsonl", articles("cx", 2))), "--batch-id", bid).returncode
        == 0
    )
    assert idle.cli("cancel", bid).returncode == 0
    one_line(idle.cli("resume", bid), 3, f"batch {bid} was cancelled", "can't be resumed")


# --------------------------------------------------------------------------- options that would mean nothing


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--max-words", "0"], "--max-words"),
        (["--max-words", "-5"], "--max-words"),
        (["--budget-usd", "-1"], "--budget-usd"),
        (["--budget-usd", "0"], "--budget-usd"),
        (["--budget-tokens", "0"], "--budget-tokens"),
        (["--budget-tokens", "-1"], "--budget-tokens"),
        (["--temperature", "3"], "--temperature"),
        (["--timeout", "5"], "--timeout"),
        (["--format", "csv"], "--format"),
        (["--keep-waiting"], "--keep-waiting"),
        (["--wait", "--timeout", "0"], "--timeout"),
    ],
)
def test_meaningless_submit_options_are_refused_naming_them(
    idle: Group, tmp_path: Path, args: list[str], named: str
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", articles("opt", 1))
    r = idle.cli("submit", str(src), *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr and named in r.stderr.splitlines()[-1], r.stderr
    assert idle.client().store.r.keys(f"{{{idle.settings.key_prefix}}}:*") == []  # nothing was submitted


@pytest.mark.parametrize("args", [["--budget-usd", "-1"], ["--budget-tokens", "0"]])
def test_meaningless_resume_budgets_are_refused(idle: Group, args: list[str]) -> None:
    r = idle.cli("resume", "any-batch", *args)
    assert r.returncode == 2 and args[0] in r.stderr.splitlines()[-1], r.stderr


# --------------------------------------------------------------------------- no tracebacks


def test_unreadable_input_is_one_line(idle: Group, tmp_path: Path) -> None:
    # Root reads any file whatever its mode: /proc/self/mem is a regular file whose read fails (EIO).
    one_line(idle.cli("submit", "/proc/self/mem"), 3, "summarize submit: error: /proc/self/mem: can't read")
    afile = write_jsonl(tmp_path / "in.jsonl", articles("un", 1))
    one_line(idle.cli("submit", f"{afile}/x.jsonl"), 3, f"{afile}/x.jsonl: not a directory")
    one_line(idle.cli("submit", str(tmp_path / "missing.jsonl")), 3, "missing.jsonl: no such file or directory")


def test_a_pipe_is_read_once_like_stdin(idle: Group, tmp_path: Path) -> None:
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    body = "".join(json.dumps(a) + "\n" for a in articles("fifo", 3))
    writer = threading.Thread(target=fifo.write_text, args=(body,))
    writer.start()
    r = idle.cli("submit", str(fifo), "-q")
    writer.join(10)
    assert r.returncode == 0 and "3 enqueued" in r.stderr, r.stderr


def test_results_out_into_a_missing_directory_is_one_line(idle: Group, tmp_path: Path) -> None:
    bid = batch_id()
    src = write_jsonl(tmp_path / "in.jsonl", articles("od", 1))
    assert idle.cli("submit", str(src), "--batch-id", bid, "-q").returncode == 0
    out = tmp_path / "nope" / "out.jsonl"
    one_line(idle.cli("results", bid, "--out", str(out)), 3, f"--out {out}: no such directory")
    one_line(idle.cli("results", bid, "--follow", "--out", str(out)), 3, f"--out {out}: no such directory")
    # submit refuses it before it submits anything, not after the wait
    other = batch_id()
    one_line(idle.cli("submit", str(src), "--batch-id", other, "--out", str(out)), 3, "no such directory")
    assert idle.cli("status", other).returncode == 3


def test_a_malformed_redis_url_is_shown_as_given(idle: Group) -> None:
    r = idle.cli("status", "x", env={"REDIS_URL": "localhost:6379"})
    line = one_line(r, 3, "REDIS_URL 'localhost:6379' must start with redis://")
    assert "Secret" not in line
    r = idle.cli("status", "x", env={"REDIS_URL": "http://:pw-SECRET-1@localhost:6379"})
    assert "pw-SECRET-1" not in one_line(r, 3, "REDIS_URL 'http://:***@localhost:6379'")


# --------------------------------------------------------------------------- the resume command after Ctrl-C


def test_the_resume_command_printed_after_ctrl_c_works(
    stack: Stack, redis_url: str, local_llm: str, tmp_path: Path
) -> None:
    # Room for 10 unfinished jobs and no worker yet: the submit stores 10 of 30, then waits for room.
    g = isolated_group(stack, redis_url, local_llm, "sumy-lexrank", SUMMARIZE_MAX_QUEUED="10")
    src = write_jsonl(tmp_path / "meta.jsonl", articles("int", 30))
    bid = batch_id()
    proc = subprocess.Popen(
        [str(BIN / "summarize"), "submit", str(src), "--no-cache", "--max-words", "30", "--batch-id", bid, "-q"],
        env=g.env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    client = g.client()
    wait_until(lambda: client.redis.hget(client.store.keys.batch(bid), "total") == "10", 30, "the first chunk stored")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    command = err.strip().splitlines()[-1].strip()
    assert command == f"summarize submit {shlex.quote(str(src))} --batch-id {bid} -q", err
    g.worker("int-w1")
    argv = shlex.split(command)
    resumed = subprocess.run(
        [str(BIN / argv[0]), *argv[1:]], env=g.env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "20 enqueued, 10 already there" in resumed.stderr, resumed.stderr
    spec = client.store.spec(bid)
    assert spec.no_cache and spec.max_words == 30  # the stored spec, not the defaults
    assert g.cli("wait", bid, "--timeout", "90", "-q").returncode == 0
    # Options given explicitly must still match; the error names the difference.
    other = g.cli("submit", str(src), "--batch-id", bid, "--max-words", "50", "-q")
    one_line(other, 3, "max_words: 30 -> 50")


# --------------------------------------------------------------------------- a worker started before Redis


def test_a_worker_started_before_redis_waits_for_it_then_works(local_llm: str, tmp_path: Path) -> None:
    port = free_port()
    with Stack() as own:
        g = isolated_group(own, f"redis://127.0.0.1:{port}/0", local_llm, "sumy-lexrank")
        worker = own.worker("early-w", env=g.env, wait=False)
        wait_until(lambda: b"waiting for Redis" in worker.log.read_bytes(), 60, "the worker to say it waits")
        own.redis(port=port)
        wait_until(lambda: b"ready." in worker.log.read_bytes(), 60, "the worker to start once Redis is up")
        src = write_jsonl(tmp_path / "in.jsonl", articles("early", 3))
        bid = batch_id()
        r = g.cli("submit", str(src), "--batch-id", bid, "--wait", "--timeout", "60", "-q")
        assert r.returncode == 0, (r.stderr, worker.tail())
        assert {row["status"] for row in g.results(bid)} == {"done"}
        log = worker.log.read_text()
        assert "Traceback" not in log and "Unrecoverable" not in log, worker.tail(60)
        assert 1 <= log.count("waiting for Redis") <= 2 and "answers now" in log


# --------------------------------------------------------------------------- URLs without credentials


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
        ("rediss://acl-user:pw@h:1/0", "rediss://acl-user:***@h:1/0"),
        ("https://TOKEN@gw.example/v1", "https://***@gw.example/v1"),
        ("https://u:p@ss@gw/v1?api_key=k&model=m;token=t#f", "https://u:***@gw/v1?api_key=***&model=m;token=***#f"),
        (
            "https://gw/v1?Signature=s&X-Amz-Credential=c&X-Amz-Date=d",
            "https://gw/v1?Signature=***&X-Amz-Credential=***&X-Amz-Date=d",
        ),
        ("http://h?password=x&db=0", "http://h?password=***&db=0"),
        ("redis://:pa/ss@host:1/0", "redis://:***@host:1/0"),
        ("localhost:6379", "localhost:6379"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown and type(redact_url(url)) is str


def test_the_worker_banner_shows_the_base_url_without_its_credentials(stack: Stack, redis_url: str) -> None:
    base = "http://gw-user:gw-SECRET-pass@127.0.0.1:9/v1?api_key=gw-SECRET-key&region=eu"
    assert Settings.from_env({"OPENAI_BASE_URL": base}).public()["openai_base_url"] == (
        "http://gw-user:***@127.0.0.1:9/v1?api_key=***&region=eu"
    )
    g = isolated_group(stack, redis_url, base)
    worker = g.worker("banner-w")
    log = worker.log.read_text()
    assert "http://gw-user:***@127.0.0.1:9/v1?api_key=***&region=eu" in log, worker.tail()
    assert "gw-SECRET" not in log
