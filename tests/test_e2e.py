"""End to end through real processes: CLI and Python API -> Redis -> Celery worker -> HTTP LLM -> Redis."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TypedDict

from contract.record import JobResult
from localllm.extractive import summarize_text
from tests.conftest import Group, batch_id
from tests.faultserver import expected_summary
from tests.helpers import id_text, poll, write_jsonl

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "articles.jsonl"


class Sample(TypedDict):
    id: str
    text: str
    section: str
    n: int


def sample_articles(n: int) -> list[Sample]:
    base = [json.loads(line) for line in SAMPLES.read_text(encoding="utf-8").splitlines()]
    out: list[Sample] = []
    for i in range(n):
        art = base[i % len(base)]
        # A distinct lead sentence per copy, so every job has its own text and its own summary.
        text = f"Dispatch {i} was filed by the newsroom on day {i % 28 + 1}. " + art["text"]
        out.append({"id": f"{art['id']}-{i}", "text": text, "section": art["section"], "n": i})
    return out


def test_cli_submit_50_with_offline_llm(local: Group, tmp_path: Path) -> None:
    articles = sample_articles(50)
    src = write_jsonl(tmp_path / "in.jsonl", articles)
    bid = batch_id()
    sub = local.cli("submit", str(src), "--batch-id", bid, "--max-words", "60", "-q")
    assert sub.returncode == 0, sub.stderr
    assert sub.stdout.strip().splitlines()[-1] == bid

    wait = local.cli("wait", bid, "--timeout", "180", "-q")
    assert wait.returncode == 0, wait.stderr

    rows = local.results(bid)
    assert [r["id"] for r in rows] == [a["id"] for a in articles]  # input order kept
    for row, art in zip(rows, articles, strict=True):
        assert row["status"] == "done", row
        assert row["summary"] == summarize_text(art["text"], 60), row["id"]
        assert row["model"] == "sumy-lexrank"
        assert row["usage"]["total_tokens"] == row["usage"]["prompt_tokens"] + row["usage"]["completion_tokens"] > 0
        assert row["attempts"] == 1
        assert row["metadata"] == {"section": art["section"], "n": art["n"]}
        assert set(row) >= {"id", "status", "summary", "error", "model", "usage", "attempts", "metadata"}

    status = json.loads(local.cli("status", bid, "--json").stdout)
    assert {k: status[k] for k in ("total", "queued", "running", "done", "failed")} == {
        "total": 50,
        "queued": 0,
        "running": 0,
        "done": 50,
        "failed": 0,
    }


def test_api_submit_50_right_summary_for_each_article(fault: Group) -> None:
    client = fault.client()
    texts = [f"Article number {i} reports that the harbour reopened after {i} days of repairs." for i in range(50)]
    items: list[str | dict[str, object]] = [
        {"id": f"a{i}", "text": t, "url": f"https://example.org/{i}"} for i, t in enumerate(texts)
    ]
    batch = client.submit(items, batch_id=batch_id())
    status = batch.wait(timeout=120)
    assert status["done"] == 50 and status["failed"] == 0
    results = list(batch.results())
    assert [r.id for r in results] == [f"a{i}" for i in range(50)]
    for i, r in enumerate(results):
        assert r.summary == expected_summary(texts[i])
        assert r.metadata == {"url": f"https://example.org/{i}"}
        assert r.model == "fake-model" and r.attempts == 1


def test_api_plain_texts_get_content_ids_and_generators_work(fault: Group) -> None:
    client = fault.client()
    batch = client.submit(
        (f"Generated article {i} about the regional rail strike." for i in range(5)), batch_id=batch_id()
    )
    batch.wait(timeout=60)
    results = list(batch.results())
    assert len(results) == 5 and all(r.status == "done" for r in results)
    assert all(len(r.id) == 20 for r in results)  # derived from the content


def test_transient_faults_are_retried_then_succeed(fault: Group, tmp_path: Path) -> None:
    arts = {
        "r429": "Retry-After is honoured. [[fault:429x2:0.3]] The council met on Monday.",
        "r500": "Server errors are retried. [[fault:500x1]][[fault:502x1]] The mayor spoke.",
        "r503": "Unavailable is retried. [[fault:503x2]] The port reopened.",
        "hang": "A hung request times out and is retried. [[fault:hangx1:10]] Rain is expected.",
        "reset": "A reset connection is retried. [[fault:resetx1]] Schools closed early.",
    }
    bid = fault.submit_and_wait(write_jsonl(tmp_path / "in.jsonl", id_text(arts)), timeout=90)
    rows = fault.results_by_id(bid)
    expected_attempts = {"r429": 3, "r500": 3, "r503": 3, "hang": 2, "reset": 2}
    for key, text in arts.items():
        assert rows[key]["status"] == "done"
        assert rows[key]["summary"] == expected_summary(text)
        assert rows[key]["attempts"] == expected_attempts[key], rows[key]


def test_400_fails_at_once_with_error_kept_and_wait_exits_1(fault: Group, tmp_path: Path) -> None:
    arts = {
        "ok": "A fine article about the new library opening downtown.",
        "bad": "The provider rejects this one. [[fault:400]]",
    }
    bid = fault.submit_and_wait(write_jsonl(tmp_path / "in.jsonl", id_text(arts)), exit_code=1)
    rows = fault.results_by_id(bid)
    assert rows["ok"]["status"] == "done"
    bad = rows["bad"]
    assert bad["status"] == "failed" and bad["attempts"] == 1 and bad["summary"] is None
    assert "400" in bad["error"] and bad["error_type"] == "PermanentLLMError"

    status = json.loads(fault.cli("status", bid, "--json").stdout)
    assert status["failed"] == 1 and status["failed_jobs"][0]["id"] == "bad"
    human = fault.cli("status", bid).stdout
    assert "1 failed" in human and "failed bad: PermanentLLMError" in human


def test_results_csv_and_out_file(fault: Group, tmp_path: Path) -> None:
    src = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"id": "c1", "text": 'Commas, "quotes" and newlines\nsurvive CSV.', "tag": "x"},
            {"id": "c2", "text": "Second article about the bridge vote."},
        ],
    )
    out = tmp_path / "out.csv"
    sub = fault.cli("submit", str(src), "--batch-id", batch_id(), "--out", str(out), "--format", "csv", "-q")
    assert sub.returncode == 0, sub.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert [r["id"] for r in rows] == ["c1", "c2"]
    assert rows[0]["summary"] == expected_summary('Commas, "quotes" and newlines\nsurvive CSV.')
    assert json.loads(rows[0]["metadata"]) == {"tag": "x"} and rows[0]["status"] == "done"
    assert int(rows[0]["total_tokens"]) > 0


def test_wait_times_out_with_exit_2_and_retry_requeues_failed(fault: Group, tmp_path: Path) -> None:
    arts = {
        "slow": "This one keeps failing for a while. [[fault:503x40]]",
        "once": "This one is refused once, then fine. [[fault:400x1]]",
    }
    bid = fault.submit_and_wait(write_jsonl(tmp_path / "in.jsonl", id_text(arts)), timeout=3, exit_code=2)

    # 'once' failed for good on its 400; retry re-drives it and the second request succeeds.
    batch = fault.client().batch(bid)

    def once() -> JobResult | None:
        return next((r for r in batch.results() if r.id == "once"), None)

    poll(once, lambda r: r is not None and r.status == "failed", timeout=10, interval=0.1)
    retry = fault.cli("retry", bid)
    assert retry.returncode == 0 and "requeued 1 failed job" in retry.stderr
    after = poll(once, lambda r: r is not None and r.status == "done", timeout=20, interval=0.1)
    assert after is not None and after.summary == expected_summary(
        "This one is refused once, then fine. [[fault:400x1]]"
    )
    assert after.attempts == 2


def test_unknown_batch_is_a_clear_error(fault: Group) -> None:
    for cmd in (["status", "nope-123"], ["wait", "nope-123"], ["results", "nope-123"], ["retry", "nope-123"]):
        r = fault.cli(*cmd)
        assert r.returncode == 3, (cmd, r.stderr)
        assert "unknown batch 'nope-123'" in r.stderr
