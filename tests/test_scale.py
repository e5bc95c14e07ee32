"""Ten million articles on one Redis, scaled down, with real processes: a bounded backlog shared fairly
between submits, priorities, and purge."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

from contract.keys import Keys
from scripts.stack import BIN, ROOT, Stack
from tests.conftest import batch_id, isolated_group
from tests.faultserver import FaultServer
from tests.helpers import articles, write_jsonl


def write(path: Path, tag: str, n: int) -> Path:
    return write_jsonl(path, articles(tag, n))


def test_redis_never_holds_more_unfinished_jobs_than_the_bound_and_small_urgent_batches_go_first(
    stack: Stack, redis_url: str, tmp_path: Path
) -> None:
    with FaultServer(latency=0.2) as srv:
        g = isolated_group(
            stack,
            redis_url,
            srv.url,
            SUMMARIZE_MAX_QUEUED="40",
            SUMMARIZE_CONCURRENCY="8",
            SUMMARIZE_JOBS_PER_MESSAGE="4",
        )
        g.worker("scale-w")
        r = g.client().redis
        backlog = Keys(g.settings.key_prefix).backlog
        seen: list[int] = []
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                seen.append(int(r.get(backlog) or 0))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        big_id, small_id = batch_id(), batch_id()
        big = subprocess.Popen(
            [str(BIN / "summarize"), "submit", str(write(tmp_path / "big.jsonl", "big", 300)), "--batch-id", big_id],
            env=g.env,
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.5)  # the big one is waiting for room by now
        small = g.cli(
            "submit",
            str(write(tmp_path / "small.jsonl", "urgent", 10)),
            "--batch-id",
            small_id,
            "--priority",
            "high",
            "--wait",
            "-q",
            timeout=120,
        )
        small_done = time.monotonic()
        assert small.returncode == 0, small.stderr
        _, err = big.communicate(timeout=180)
        assert big.returncode == 0, err
        status = g.client().batch(big_id).wait(timeout=120)
        sampling.set()
        sampler.join(5)
        assert status["done"] == 300
        assert "waiting for room" in err
        assert max(seen) <= 40, max(seen)  # never more unfinished jobs than SUMMARIZE_MAX_QUEUED
        big_finished = time.monotonic()
        assert big_finished - small_done > 2  # the urgent batch was not stuck behind the big one
        print(
            f"bound 40: at most {max(seen)} unfinished jobs while 310 went through; the urgent batch was done "
            f"{big_finished - small_done:.0f}s before the big one"
        )


def test_purge_removes_a_batch_only_once_it_is_over_unless_forced(stack: Stack, redis_url: str, tmp_path: Path) -> None:
    with FaultServer(latency=0.5) as srv:
        g = isolated_group(stack, redis_url, srv.url, SUMMARIZE_CONCURRENCY="2")
        src = write(tmp_path / "in.jsonl", "pg", 12)
        bid = batch_id()
        assert g.cli("submit", str(src), "--batch-id", bid, "-q").returncode == 0
        refused = g.cli("purge", bid)
        assert refused.returncode == 3 and "12 unfinished job(s)" in refused.stderr
        g.worker("purge-w")
        assert g.cli("wait", bid, "--timeout", "60", "-q").returncode == 0
        assert g.cli("results", bid, "--out", str(tmp_path / "out.jsonl")).returncode == 0
        assert g.cli("purge", bid).returncode == 0
        r = g.client().redis
        left = [k for k in r.scan_iter(f"{{{g.settings.key_prefix}}}:*{bid}*", count=1000)]
        assert left == [], left
        assert g.cli("status", bid).returncode == 3
        forced = batch_id()
        assert (
            g.cli("submit", str(write(tmp_path / "more.jsonl", "fp", 50)), "--batch-id", forced, "-q").returncode == 0
        )
        assert g.cli("purge", forced, "--force").returncode == 0
        assert int(r.get(Keys(g.settings.key_prefix).backlog) or 0) == 0
