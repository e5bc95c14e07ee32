"""The summary the user asks for, with real processes: a batch's own prompt and JSON schema, articles longer
than the model's context, a fallback model, and results as they finish."""

from __future__ import annotations

import csv
import io
import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from scripts.stack import BIN, ROOT, Stack
from tests.conftest import Group, batch_id, isolated_group
from tests.faultserver import FaultServer, expected_summary
from tests.helpers import poll
from worker.prompt import GUARD

SCHEMA = {
    "type": "object",
    "properties": {
        "headline": {"type": "string"},
        "bullets": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        "word_count": {"type": "integer"},
    },
    "required": ["headline", "bullets", "word_count"],
    "additionalProperties": False,
}


def write_articles(path: Path, tag: str, n: int) -> Path:
    path.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"{tag}{i}",
                    "text": f"{tag} story {i}: the harbour board met on day {i} and agreed a new ferry timetable.",
                }
            )
            + "\n"
            for i in range(n)
        )
    )
    return path


def test_a_custom_prompt_reaches_the_provider_as_the_instructions_of_every_request(
    fault: Group, fault_server: FaultServer, tmp_path: Path
) -> None:
    prompt = tmp_path / "brief.txt"
    prompt.write_text("Brief for the Zanzibar-7f3 desk: a headline, then three bullets, at most {max_words} words.")
    src = write_articles(tmp_path / "in.jsonl", "pr", 5)
    bid = batch_id()
    run = fault.cli("submit", str(src), "--batch-id", bid, "--prompt", str(prompt), "--max-words", "40", "--wait", "-q")
    assert run.returncode == 0, run.stderr
    seen = {text: n for text, n in fault_server.stats()["system_prompts"].items() if "Zanzibar-7f3" in text}
    assert sum(seen.values()) == 5, seen
    (system,) = seen
    assert system.startswith("Brief for the Zanzibar-7f3 desk") and "at most 40 words" in system
    assert GUARD in system  # the article's guard stays whatever the prompt says
    status = json.loads(fault.cli("status", bid, "--json").stdout)
    assert "Zanzibar-7f3" in status["spec"]["prompt"] and status["spec"]["max_words"] == 40
    # A resume must ask for the same spec; the error names what differs.
    other = fault.cli("submit", str(src), "--batch-id", bid, "--prompt", str(prompt), "--max-words", "50", "-q")
    assert other.returncode == 3 and "max_words: 40 -> 50" in other.stderr


def test_json_schema_answers_are_validated_and_every_row_carries_its_data(fault: Group, tmp_path: Path) -> None:
    schema = tmp_path / "brief.json"
    schema.write_text(json.dumps(SCHEMA))
    src = write_articles(tmp_path / "in.jsonl", "js", 6)
    bid = batch_id()
    run = fault.cli("submit", str(src), "--batch-id", bid, "--json-schema", str(schema), "--wait", "-q")
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in fault.cli("results", bid).stdout.splitlines()]
    assert len(rows) == 6
    for row in rows:
        jsonschema.validate(row["data"], SCHEMA)
        assert json.loads(row["summary"]) == row["data"]
    table = list(csv.DictReader(io.StringIO(fault.cli("results", bid, "--format", "csv").stdout)))
    assert {"data.headline", "data.bullets", "data.word_count"} <= set(table[0])
    assert json.loads(table[0]["data.bullets"]) == rows[0]["data"]["bullets"]


def test_a_bad_schema_or_prompt_file_is_refused_at_submit(fault: Group, tmp_path: Path) -> None:
    src = write_articles(tmp_path / "in.jsonl", "bad", 1)
    broken = tmp_path / "broken.json"
    broken.write_text('{"type": "object", "properties": {')
    r = fault.cli("submit", str(src), "--json-schema", str(broken))
    assert r.returncode == 3 and f"--json-schema {broken}: not JSON" in r.stderr
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"type": "object", "properties": {"a": {"type": "strin"}}}))
    r = fault.cli("submit", str(src), "--json-schema", str(wrong))
    assert r.returncode == 3 and "the JSON schema is invalid at properties/a/type" in r.stderr
    r = fault.cli("submit", str(src), "--prompt", str(tmp_path / "missing.txt"))
    assert r.returncode == 3 and "--prompt" in r.stderr and "missing.txt" in r.stderr


def long_article(tokens: int) -> str:
    paragraphs: list[str] = []
    n = 0
    while sum(len(p) for p in paragraphs) < tokens * 4:
        paragraphs.append(
            " ".join(
                f"In session {n}.{k} the regional council reviewed budget line {n * 7 + k} and "
                "heard residents on the harbour works."
                for k in range(6)
            )
        )
        n += 1
    return "\n\n".join(paragraphs)


@pytest.fixture(scope="module")
def small_context() -> Iterator[FaultServer]:
    with FaultServer(context_tokens=4096) as srv:
        yield srv


@pytest.mark.parametrize("how", ["setting", "models-endpoint", "400"])
def test_an_article_longer_than_the_context_is_split_and_combined(
    stack: Stack, redis_url: str, small_context: FaultServer, how: str
) -> None:
    """The window from SUMMARIZE_CONTEXT_TOKENS, from the server's /v1/models, or learned from its 400
    context_length_exceeded (a model /v1/models does not list)."""
    small_context.reset()
    env = {"SUMMARIZE_MAX_ARTICLE_BYTES": str(4 << 20)} | (
        {"SUMMARIZE_CONTEXT_TOKENS": "4096"} if how == "setting" else {}
    )
    g = isolated_group(
        stack, redis_url, small_context.url, model="unlisted-model" if how == "400" else "fake-model", **env
    )
    g.worker(f"long-w-{how}")
    text = long_article(60_000)
    batch = g.client().submit(
        [{"id": "long", "text": text}, {"id": "short", "text": "A short one. It fits."}], batch_id=batch_id()
    )
    assert batch.wait(timeout=120)["done"] == 2
    rows = {r.id: r for r in batch.results()}
    long, stats = rows["long"], small_context.stats()
    assert long.chunks > 10 and long.summary and long.usage is not None
    # Every request of the article was billed and is in its row: the parts, and the combining.
    assert long.attempts >= long.chunks + 1
    assert long.usage["prompt_tokens"] >= len(text) // 4
    # Told the window or read it from /v1/models: never a request above it. Otherwise the provider's 400s
    # (not billed) teach it.
    assert (stats["context_refused"] >= 1) if how == "400" else (stats["context_refused"] == 0), stats
    assert stats["max_request_tokens"] <= 4096 or how == "400"
    assert rows["short"].chunks == 0 and rows["short"].summary == expected_summary("A short one. It fits.")
    print(
        f"60,000-token article, context 4096 (from {how}): {long.chunks} parts, "
        f"{long.attempts} calls, {long.usage['prompt_tokens']} prompt tokens, largest request "
        f"{stats['max_request_tokens']} tokens"
    )


def test_the_fallback_model_takes_over_when_the_model_is_gone_or_fails(
    stack: Stack, redis_url: str, fault_server: FaultServer
) -> None:
    fault_server.configure(missing_models=["gone-model"])
    try:
        g = isolated_group(stack, redis_url, fault_server.url, model="gone-model")
        g.worker("fallback-w")
        arts = [{"id": f"fb{i}", "text": f"Fallback story {i}: the tram line opened."} for i in range(4)]
        gone = g.client().submit(arts, batch_id=batch_id(), fallback_model="fake-model")
        status = gone.wait(timeout=60)
        assert status["done"] == 4 and status["state"] == "finished"  # a model that is gone halts nothing
        assert {r.model for r in gone.results()} == {"fake-model"}
        refused = g.client().submit(
            [{"id": "r", "text": "Refused once by the primary. [[fault:400x1]] Ferry."}],
            batch_id=batch_id(),
            model="fake-model",
            fallback_model="backup-model",
        )
        assert refused.wait(timeout=60)["done"] == 1
        (row,) = list(refused.results())
        assert row.model == "backup-model" and row.attempts == 2
    finally:
        fault_server.configure(missing_models=[])


def test_results_follow_prints_rows_as_they_finish_once_each_and_resumes(
    stack: Stack, redis_url: str, tmp_path: Path
) -> None:
    with FaultServer(latency=1.0) as srv:
        g = isolated_group(stack, redis_url, srv.url, SUMMARIZE_CONCURRENCY="2", SUMMARIZE_JOBS_PER_MESSAGE="2")
        g.worker("follow-w")
        batch = g.client().submit(write_lines(10), batch_id=batch_id())
        out = tmp_path / "live.jsonl"
        argv = [str(BIN / "summarize"), "results", batch.id, "--follow", "--out", str(out)]
        first = subprocess.Popen(argv, env=g.env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        poll(lambda: out.exists() and bool(out.read_text().strip()), bool, timeout=30, interval=0.1)
        status = batch.status()
        assert status["done"] < 10, "the first row came only after the batch was over"
        first.send_signal(signal.SIGKILL)  # killed mid-way: the second run goes on where it stopped
        first.wait(10)
        second = subprocess.run(argv, env=g.env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stderr
        ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
        assert sorted(ids) == sorted(f"f{i}" for i in range(10)) and len(ids) == 10  # each row exactly once
        again = subprocess.run(argv, env=g.env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and len(out.read_text().splitlines()) == 10
        rows = list(batch.iter_results())
        assert [r.id for r in rows] == ids  # the Python API: the same rows in the same (finishing) order


def write_lines(n: int) -> list[dict[str, str]]:
    return [{"id": f"f{i}", "text": f"Follow story {i}: the museum reopened its east wing."} for i in range(n)]
