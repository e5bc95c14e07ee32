"""The online path against a chaos server nobody here wrote: llmock (pinned in the dev dependencies) injects
429s with Retry-After and 5xx at random and judges the client's resilience (retry storms, Retry-After
ignored, repeated look-ups). Every article must end done, and the verdict must pass."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.stack import BIN, Stack
from tests.conftest import batch_id, isolated_group
from tests.helpers import articles, http_request, wait_until

LLMOCK = BIN / "llmock"
pytestmark = pytest.mark.skipif(not LLMOCK.exists(), reason="llmock is not installed (make bootstrap installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def llmock(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = (tmp_path / "llmock.log").open("wb")
    proc = subprocess.Popen(
        [
            str(LLMOCK),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--latency-ms",
            "50",
            "--error-rate",
            "429=0.15",
            "--error-rate",
            "500=0.05",
            "--error-rate",
            "503=0.05",
            "--log-level",
            "warning",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(base), 30, "llmock up")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(tmp_path / ".llmock", ignore_errors=True)


def _answers(base: str) -> bool:
    # Its own admin path: a probe of /v1/models could draw a random 429, and the next probe 50 ms later
    # would then be judged as this client ignoring Retry-After.
    try:
        return http_request(f"{base}/_llmock/verdict", timeout=2).status == 200
    except OSError:
        return False


def test_every_article_done_and_the_resilience_verdict_passes(stack: Stack, redis_url: str, llmock: str) -> None:
    g = isolated_group(
        stack,
        redis_url,
        f"{llmock}/v1",
        "gpt-4o-mini",
        SUMMARIZE_CONCURRENCY="8",
        SUMMARIZE_JOBS_PER_MESSAGE="4",
        SUMMARIZE_DEFER_BASE="1",
    )
    g.worker("llmock-w1")
    batch = g.client().submit(articles("lm", 60), batch_id=batch_id(), no_cache=True)
    final = batch.wait(timeout=150)
    assert (final["done"], final["failed"]) == (60, 0), final
    time.sleep(0.5)
    verdict = http_request(f"{llmock}/_llmock/verdict").json()
    print(
        f"llmock (429 15%, 500 5%, 503 5%): 60/60 done, verdict passed={verdict['passed']}, "
        f"{verdict['calls']} calls, {verdict['faults_injected']} faults injected, findings {verdict['findings']}"
    )
    assert verdict["passed"], verdict
    assert verdict["faults_injected"] > 0  # the chaos was there
