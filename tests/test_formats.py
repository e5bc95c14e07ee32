"""Data in and out the way people hold it, for real: `summarize submit` of Parquet, CSV and compressed JSON
lines through Redis, a Celery worker and the fault server's deterministic answers, `results` in the same
formats read back and compared row by row; bad rows named by their row; the input edge cases; the failures
of a large failed set counted by type; `summarize batches`.

The session's `fault` group (its worker on the fault server) for the whole module; what only checks the
input goes through the Python API in this process (the same reader), the rest through the CLI.
"""

from __future__ import annotations

import csv
import gzip
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from contract.errors import BatchNotFound, SummarizeError
from producer.api import Client
from tests.conftest import ROOT, Group, batch_id
from tests.faultserver import expected_summary
from tests.helpers import write_jsonl

SAMPLES = [json.loads(line) for line in (ROOT / "samples" / "articles.jsonl").read_text("utf-8").splitlines() if line]
META_FIELDS = [k for k in SAMPLES[0] if k not in ("id", "text")]


@pytest.fixture(scope="module")
def group(fault: Group) -> Group:
    return fault


@pytest.fixture(scope="module")
def client(fault: Group) -> Iterator[Client]:
    c = fault.client()
    try:
        yield c
    finally:
        c.close()


def refused(client: Client, path: Path, **options: Any) -> str:
    """The error a submit of PATH stops with (nothing enqueued): its text."""
    with pytest.raises(SummarizeError) as err:
        client.submit_path(str(path), batch_id=batch_id(), **options)
    return str(err.value)


def submit_out(group: Group, src: Path, out: Path, *options: str, code: int = 0) -> str:
    """`summarize submit SRC --out OUT` (it waits): the batch id."""
    bid = batch_id()
    r = group.cli("submit", str(src), "--batch-id", bid, "--out", str(out), "-q", "--timeout", "60", *options)
    assert r.returncode == code, r.stderr
    assert f"wrote {len(SAMPLES) if code == 0 else ''}" in r.stderr, r.stderr
    return bid


def assert_sample_rows(rows: list[dict[str, Any]]) -> None:
    """Rows in input order, each the fault server's summary of its article, metadata the other columns."""
    assert [r["id"] for r in rows] == [a["id"] for a in SAMPLES]
    for got, art in zip(rows, SAMPLES, strict=True):
        assert got["status"] == "done" and got["summary"] == expected_summary(art["text"]), got
        meta = got["metadata"] if isinstance(got["metadata"], dict) else json.loads(got["metadata"])
        assert meta == {k: art[k] for k in META_FIELDS}


def test_parquet_in_parquet_out_read_back_with_pyarrow(group: Group, tmp_path: Path) -> None:
    src = tmp_path / "articles.parquet"
    pq.write_table(pa.Table.from_pylist(SAMPLES), src, row_group_size=5)  # three row groups
    out = tmp_path / "summaries.parquet"
    submit_out(group, src, out)
    table = pq.read_table(out)
    assert table.schema.names[:3] == ["id", "status", "summary"] and "total_tokens" in table.schema.names
    rows = table.to_pylist()
    assert_sample_rows(rows)
    assert all(r["total_tokens"] == r["prompt_tokens"] + r["completion_tokens"] > 0 for r in rows)
    assert all(r["data"] is None and r["error"] is None for r in rows)


def test_csv_in_csv_out_with_mapped_columns(group: Group, tmp_path: Path) -> None:
    src = tmp_path / "cms-export.csv"
    with open(src, "w", encoding="utf-8-sig", newline="") as f:  # with a BOM, as spreadsheets write it
        w = csv.DictWriter(f, fieldnames=["slug", "body", *META_FIELDS])
        w.writeheader()
        w.writerows({"slug": a["id"], "body": a["text"], **{k: a[k] for k in META_FIELDS}} for a in SAMPLES)
    out = tmp_path / "out.csv"
    submit_out(group, src, out, "--text-field", "body", "--id-field", "slug")
    with open(out, encoding="utf-8", newline="") as f:
        assert_sample_rows(list(csv.DictReader(f)))


@pytest.mark.parametrize(("suffix", "compress"), [(".gz", gzip.compress), (".zst", zstandard.compress)])
def test_compressed_jsonl_in_and_out(group: Group, client: Client, tmp_path: Path, suffix: str, compress: Any) -> None:
    # Their article field under `content`, as news corpora often have it.
    src = tmp_path / f"articles.jsonl{suffix}"
    plain = [{k: v for k, v in a.items() if k != "text"} | {"content": a["text"]} for a in SAMPLES]
    src.write_bytes(compress(b"".join(json.dumps(a).encode() + b"\n" for a in plain)))
    if suffix == ".gz":
        r = group.cli("submit", str(src), "-q")
        assert r.returncode == 3 and r.stderr.count("\n") == 1 and "give --text-field content" in r.stderr, r.stderr
    else:
        assert "give --text-field content" in refused(client, src)
    out = tmp_path / f"out.jsonl{suffix}"
    bid = submit_out(group, src, out, "--text-field", "content")
    # A streamed zstd frame does not say its size up front: read it as `zstd -d` does.
    unzstd = zstandard.ZstdDecompressor().decompressobj()
    raw = gzip.decompress(out.read_bytes()) if suffix == ".gz" else unzstd.decompress(out.read_bytes())
    assert_sample_rows([json.loads(line) for line in raw.decode().splitlines()])
    # The same rows as plain JSON lines, byte for byte.
    assert raw.decode() == group.cli("results", bid).stdout


def test_a_bad_row_in_each_format_is_named_by_its_row_and_nothing_is_enqueued(
    group: Group, client: Client, tmp_path: Path
) -> None:
    rows = [{"id": f"r{i}", "text": "Fine article." if i != 3 else "   ", "n": i} for i in range(1, 6)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    with open(tmp_path / "in.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "text", "n"])
        w.writeheader()
        w.writerows(rows)
    (tmp_path / "in.jsonl.gz").write_bytes(gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in rows)))
    # Parquet and JSON lines count from the first row; CSV's line 1 is its header.
    for name, where in (("in.parquet", 3), ("in.csv", 4), ("in.jsonl.gz", 3)):
        bid = batch_id()
        src = tmp_path / name
        with pytest.raises(SummarizeError) as err:
            client.submit_path(str(src), batch_id=bid)
        assert f"{src}:{where} (id 'r3'): 'text' is empty or whitespace only" in str(err.value)
        assert "1 invalid record(s); nothing was enqueued" in str(err.value)
        with pytest.raises(BatchNotFound):
            client.batch(bid)
        batch = client.submit_path(str(src), batch_id=bid, skip_invalid=True)  # the bad row kept as a failed job
        assert batch.wait(timeout=30)["failed"] == 1
        assert [(x.id, x.status) for x in batch.results()][2] == (f"invalid@{src}:{where}", "failed")
    r = group.cli("submit", str(tmp_path / "in.parquet"), "-q")  # the CLI says the same
    assert r.returncode == 3 and f"{tmp_path / 'in.parquet'}:3 (id 'r3'): 'text' is empty" in r.stderr, r.stderr


def test_input_edge_cases_a_new_user_meets(group: Group, client: Client, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    r = group.cli("submit", str(empty), "-q")
    assert r.returncode == 3 and "no .txt or .md files in this directory" in r.stderr, r.stderr

    arts = tmp_path / "arts"
    arts.mkdir()
    (arts / "old").mkdir()
    (arts / "index.html").write_text("<p>no</p>")
    (arts / "bridge.txt").write_text(SAMPLES[0]["text"], encoding="utf-8")
    (arts / "bridge.md").write_text(SAMPLES[1]["text"], encoding="utf-8")
    error = refused(client, arts)
    assert "duplicate id 'bridge': bridge.md and bridge.txt both give it" in error
    assert " line" not in error.split("invalid record(s)")[1], error
    (arts / "bridge.md").unlink()
    r = group.cli("submit", str(arts), "-q")
    assert r.returncode == 0 and "skipped 1 subdirectory and 1 other file" in r.stderr, r.stderr

    single = tmp_path / "one-article.txt"
    single.write_text(SAMPLES[2]["text"], encoding="utf-8")
    batch = client.submit_path(str(single), batch_id=batch_id())
    batch.wait(timeout=30)
    [row] = list(batch.results())
    assert (row.id, row.summary, row.metadata) == (
        "one-article",
        expected_summary(SAMPLES[2]["text"]),
        {"file": "one-article.txt"},
    )

    as_jsonl = tmp_path / "export.jsonl"
    as_jsonl.write_text("id,text\nx1,Some article.\n", encoding="utf-8")
    r = group.cli("submit", str(as_jsonl), "-q")
    assert r.returncode == 3 and r.stderr.count("\n") == 1 and "--input-format csv" in r.stderr, r.stderr

    bid = batch_id()
    r = group.cli(
        "submit", "-", "--input-format", "csv", "--batch-id", bid, "--wait", "-q", input="text\nFrom stdin.\n"
    )
    assert r.returncode == 0, r.stderr
    assert [x["summary"] for x in group.results(bid)] == [expected_summary("From stdin.")]


def test_status_counts_failures_by_type_and_results_status_lists_them_all(
    group: Group, client: Client, tmp_path: Path
) -> None:
    arts = [{"id": f"f{i}", "text": f"Refused article {i}. [[fault:400]]"} for i in range(12)]
    arts += [{"id": "e1", "text": " "}, {"id": "ok", "text": "One that works."}]
    bid = batch_id()
    src = write_jsonl(tmp_path / "in.jsonl", arts)
    r = group.cli("submit", str(src), "--batch-id", bid, "--skip-invalid", "--wait", "-q", "--timeout", "60")
    assert r.returncode == 1, r.stderr
    text = group.cli("status", bid).stdout
    assert f"... and 3 more failed job(s): summarize results {bid} --status failed" in text, text
    assert "failed jobs by error type:" in text and "PermanentLLMError" in text
    st = json.loads(group.cli("status", bid, "--json").stdout)
    assert st["failed"] == 13 and len(st["failed_jobs"]) == 10 and st["failed_jobs_not_listed"] == 3
    assert st["failures"]["PermanentLLMError"]["count"] == 12 and "400" in st["failures"]["PermanentLLMError"]["error"]
    assert sum(v["count"] for v in st["failures"].values()) == 13
    failed = group.cli("results", bid, "--status", "failed")
    ids = [json.loads(line)["id"] for line in failed.stdout.splitlines()]
    assert len(ids) == 13 and "ok" not in ids
    assert client.batch(bid).export(tmp_path / "f.parquet", status="failed").rows == 13
    done = client.batch(bid).export(tmp_path / "d.jsonl", status=["done", "cancelled"])
    assert done.rows == 1 and json.loads((tmp_path / "d.jsonl").read_text())["id"] == "ok"


def test_summarize_batches_lists_newest_first_paged(group: Group, client: Client) -> None:
    made = []
    for i in range(3):
        b = client.submit([f"Listed article {i} {time.time()}"], batch_id=batch_id(), priority="high")
        b.wait(timeout=30)
        made.append(b.id)
        time.sleep(0.01)  # distinct creation times (ms)
    page = client.batches(limit=2)
    assert [b["batch"] for b in page] == made[::-1][:2]
    assert page[0]["state"] == "finished" and page[0]["total"] == page[0]["done"] == 1
    assert (page[0]["mode"], page[0]["priority"], page[0]["model"]) == ("online", "high", "fake-model")
    assert page[0]["finished_ms"] >= page[0]["created_ms"] > 0
    listed = json.loads(group.cli("batches", "--json", "--limit", "2", "--offset", "1").stdout)
    assert [b["batch"] for b in listed["batches"]] == made[::-1][1:3]
    assert listed["total"] >= 3 and listed["next_offset"] == 3
    r = group.cli("batches", "--limit", "3")
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["BATCH", "STATE", "TOTAL"] and [ln.split()[0] for ln in lines[1:]] == made[::-1]
    assert "batches 1-3 of" in r.stderr


def test_the_api_streams_a_table_row_by_row_with_mapped_fields(client: Client, tmp_path: Path) -> None:
    # What a datasets.Dataset or a polars frame gives too: dicts one at a time, the text under another key.
    src = tmp_path / "frame.parquet"
    pq.write_table(pa.Table.from_pylist([{"key": a["id"], "body": a["text"]} for a in SAMPLES[:4]]), src)
    rows = (row for batch in pq.ParquetFile(src).iter_batches(batch_size=2) for row in batch.to_pylist())
    batch = client.submit(rows, batch_id=batch_id(), text_field="body", id_field="key")
    assert batch.wait(timeout=30)["done"] == 4
    assert [(r.id, r.summary, r.metadata) for r in batch.results()] == [
        (a["id"], expected_summary(a["text"]), {}) for a in SAMPLES[:4]
    ]
