"""Breaking issue 25 (data in and out) with real processes: damaged and odd input in each format refused by
file and line with nothing enqueued, exports of a batch still running equal in every format to
`summarize results` row for row, a submit killed with SIGKILL resumed in each format.

The session's `fault` group (a worker on the fault server) for what needs answers; an isolated group of its
own, whose worker this module stops and continues, for exports of a frozen running batch; a group with no
worker for the resumes (jobs only queued).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import signal
import subprocess
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
from producer.output import CSV_FIELDS
from scripts.stack import BIN, Stack
from tests.conftest import ROOT, Group, batch_id, isolated_group
from tests.faultserver import FaultServer, expected_summary
from tests.helpers import jl, wait_until, write_lines


@pytest.fixture(scope="module")
def client(fault: Group) -> Iterator[Client]:
    c = fault.client()
    try:
        yield c
    finally:
        c.close()


def refused(client: Client, path: Path, **options: Any) -> str:
    """The error a submit of PATH stops with; the batch must not exist after it."""
    bid = batch_id()
    with pytest.raises(SummarizeError) as err:
        client.submit_path(str(path), batch_id=bid, **options)
    with pytest.raises(BatchNotFound):
        client.batch(bid)
    return str(err.value)


def strict_json(line: str) -> Any:
    """json.loads that refuses NaN and Infinity (not JSON: jq, JavaScript, Go and Rust reject them)."""

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(line, parse_constant=constant)


def lines(n: int, tag: str) -> bytes:
    return b"".join(jl({"id": f"{tag}{i}", "text": f"Article {tag} {i}: the council met."}) for i in range(n))


# --------------------------------------------------------------------------- input: refused, by file and line


def test_a_truncated_zstd_file_is_refused_not_read_short(client: Client, tmp_path: Path) -> None:
    # Two frames (as `zstd` writes a file of several parts, or `cat a.zst b.zst`), the second cut short after its
    # header: nothing of it decodes, so without the check the first frame's rows go in and the rest is lost.
    whole = zstandard.compress(lines(3, "a")) + zstandard.compress(lines(500, "b"))
    src = write_lines(tmp_path / "cut.jsonl.zst", whole[: len(zstandard.compress(lines(3, "a"))) + 12])
    assert f"{src}: the compressed data is damaged or cut short" in refused(client, src)
    # --skip-invalid can't keep what is not there: still refused
    assert "cut short" in refused(client, src, skip_invalid=True)
    # cut in the middle of a line, a CSV file too
    assert "cut short" in refused(client, write_lines(tmp_path / "mid.jsonl.zst", whole[:-40]), skip_invalid=True)
    table = zstandard.compress(b"id,text\n" + b"".join(b"c%d,Article %d.\n" % (i, i) for i in range(2000)))
    assert "cut short" in refused(client, write_lines(tmp_path / "cut.csv.zst", table[: len(table) // 2]))


def test_gzip_cut_short_is_refused_and_concatenated_streams_are_read_whole(client: Client, tmp_path: Path) -> None:
    g = gzip.compress(lines(500, "g"))
    assert "cut short" in refused(client, write_lines(tmp_path / "cut.jsonl.gz", g[: len(g) // 2]), skip_invalid=True)
    for suffix, compress in ((".gz", gzip.compress), (".zst", zstandard.compress)):
        src = write_lines(tmp_path / f"cat.jsonl{suffix}", compress(lines(2, "x")) + compress(lines(2, "y")))
        batch = client.submit_path(str(src), batch_id=batch_id())
        assert batch.wait(timeout=30)["done"] == 4
        assert [r.id for r in batch.results()] == ["x0", "x1", "y0", "y1"]


def test_a_csv_header_with_latin1_bytes_is_a_clear_error(fault: Group, client: Client, tmp_path: Path) -> None:
    # A CMS export in latin-1: 'résumé' in the header. It crashed the submit with a traceback and left an empty
    # "finished" batch behind.
    src = write_lines(tmp_path / "latin.csv", b"id,text,r\xe9sum\xe9\n", b"l1,An article.,x\n")
    bid = batch_id()
    r = fault.cli("submit", str(src), "--batch-id", bid, "-q")
    assert r.returncode == 3 and "Traceback" not in r.stderr, r.stderr
    assert f"{src}:1" in r.stderr and "UTF-8" in r.stderr, r.stderr
    with pytest.raises(BatchNotFound):
        client.batch(bid)


def test_a_column_named_twice_in_csv_or_parquet_is_refused(client: Client, tmp_path: Path) -> None:
    # csv.DictReader-like zipping keeps the last of two `text` columns: the first article silently lost.
    src = write_lines(tmp_path / "dup.csv", b"id,text,text\n", b"d1,The real article.,a note\n")
    error = refused(client, src)
    assert f"{src}:1" in error and "'text'" in error and "twice" in error, error
    meta = write_lines(tmp_path / "dupmeta.csv", b"id,text,tag,tag\n", b"d1,An article.,first,second\n")
    assert "'tag'" in refused(client, meta)
    # Parquet allows two columns of one name too: the article was the note's text
    table = pa.Table.from_arrays(
        [pa.array(["p1"]), pa.array(["The real article."]), pa.array(["a note"])], ["id", "text", "text"]
    )
    pq.write_table(table, tmp_path / "dup.parquet")
    assert "'text' is there twice" in refused(client, tmp_path / "dup.parquet")


def test_a_csv_quote_never_closed_is_named_not_swallowing_the_rest(client: Client, tmp_path: Path) -> None:
    # A stray quote at line 3 made every later row part of that row's text: 3 articles became 2, silently.
    src = write_lines(
        tmp_path / "quote.csv", b"id,text\n", b"q1,First article.\n", b'q2,"Second article.\n', b"q3,Third article.\n"
    )
    error = refused(client, src)
    assert f"{src}:3" in error and "nothing was enqueued" in error, error


def test_a_file_of_no_records_is_refused_as_an_empty_directory_is(fault: Group, tmp_path: Path) -> None:
    # The issue called an empty directory's empty "finished" batch with exit 0 an error; a CSV file of its header
    # only (an export whose filter matched nothing), a Parquet file of no rows, an empty or blank (compressed)
    # JSON lines file and an empty stdin still made one.
    pq.write_table(
        pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}), tmp_path / "e.parquet"
    )
    write_lines(tmp_path / "e.csv", b"id,text\n")
    write_lines(tmp_path / "e.jsonl", b"")
    write_lines(tmp_path / "e.jsonl.zst", zstandard.compress(b"\n\n"))
    for name in ("e.parquet", "e.csv", "e.jsonl", "e.jsonl.zst"):
        bid = batch_id()
        r = fault.cli("submit", str(tmp_path / name), "--batch-id", bid, "-q")
        assert r.returncode == 3 and f"{tmp_path / name}: no records in it" in r.stderr, (name, r.stderr)
        assert "unknown batch" in fault.cli("status", bid).stderr
    r = fault.cli("submit", "-", "-q", input="")
    assert r.returncode == 3 and "<stdin>: no records in it" in r.stderr, r.stderr


def test_a_csv_of_odd_but_valid_shapes_goes_in_as_written(client: Client, tmp_path: Path) -> None:
    # BOM, CRLF, a quoted newline and comma, an empty id (derived from the text), a numeric-looking id kept as text
    src = write_lines(
        tmp_path / "odd.csv",
        b"\xef\xbb\xbfid,text,note\r\n",
        b'007,"Line one,\r\nline two.",n1\r\n',
        b",No id here.,n2\r\n",
    )
    batch = client.submit_path(str(src), batch_id=batch_id())
    assert batch.wait(timeout=30)["done"] == 2
    rows = list(batch.results())
    assert rows[0].id == "007" and rows[0].summary == expected_summary("Line one,\r\nline two.")
    assert rows[0].metadata == {"note": "n1"} and rows[1].metadata == {"note": "n2"} and len(rows[1].id) == 20


def test_a_parquet_file_named_csv_says_so_in_one_line(client: Client, tmp_path: Path) -> None:
    src = tmp_path / "export.csv"
    pq.write_table(pa.table({"id": ["p1"], "text": ["An article."]}), src)
    error = refused(client, src)
    assert "--input-format parquet" in error and len(error) < 300, error


def test_a_damaged_parquet_file_is_refused_with_the_row_it_failed_at(client: Client, tmp_path: Path) -> None:
    src = tmp_path / "damaged.parquet"
    n = 6000
    pq.write_table(
        pa.table({"id": [f"p{i}" for i in range(n)], "text": [f"Article {i} about the council." for i in range(n)]}),
        src,
        row_group_size=2000,
    )
    raw = bytearray(src.read_bytes())
    for i in range(len(raw) // 2, len(raw) // 2 + 64):
        raw[i] ^= 0xFF  # a page of the second or third row group
    src.write_bytes(bytes(raw))
    error = refused(client, src, skip_invalid=True)
    assert f"{src}:" in error and "Parquet" in error, error


def test_a_directory_with_a_non_utf8_file_name_and_skip_invalid(fault: Group, client: Client, tmp_path: Path) -> None:
    # A file name in latin-1 ('café.txt' written by an old system): refused without --skip-invalid; with it, the
    # bad name kept as a failed job crashed the submit (a surrogate in the id) and left an empty batch.
    d = tmp_path / "arts"
    d.mkdir()
    (d / "good.txt").write_text("A good article about the bridge.", encoding="utf-8")
    (d / "link.txt").symlink_to(d / "good.txt")  # a symlink is read as the file it points to
    (d / "dangling.txt").symlink_to(tmp_path / "missing.txt")
    with open(os.fsencode(d) + b"/caf\xe9.txt", "wb") as f:
        f.write(b"An article under a latin-1 name.")
    r = fault.cli("submit", str(d), "--batch-id", batch_id(), "-q")
    assert r.returncode == 3 and "caf" in r.stderr and "Traceback" not in r.stderr, r.stderr
    bid = batch_id()
    r = fault.cli("submit", str(d), "--batch-id", bid, "--skip-invalid", "--wait", "-q", "--timeout", "30")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    rows = fault.results_by_id(bid)
    assert rows["good"]["status"] == rows["link"]["status"] == "done"
    [bad] = [row for job, row in rows.items() if job.startswith("invalid@")]
    assert bad["status"] == "failed" and "caf" in bad["id"] and "not valid Unicode" in bad["error"]


def test_nan_in_parquet_metadata_is_exported_as_json(fault: Group, tmp_path: Path) -> None:
    # pandas writes a missing float as NaN; it came back out as the bare word NaN in the JSON lines and the
    # Parquet metadata column (not JSON: jq and every strict parser refuse the line).
    src = tmp_path / "frame.parquet"
    pq.write_table(
        pa.table({"id": ["n1", "n2"], "text": ["One article.", "Two articles."], "score": [float("nan"), 0.5]}), src
    )
    bid = batch_id()
    r = fault.cli("submit", str(src), "--batch-id", bid, "--wait", "-q", "--timeout", "30")
    assert r.returncode == 0, r.stderr
    out = fault.cli("results", bid).stdout.splitlines()
    assert [strict_json(line)["metadata"] for line in out] == [{"score": None}, {"score": 0.5}]
    jsonl = tmp_path / "nan.jsonl"
    jsonl.write_text('{"id": "j1", "text": "An article.", "score": NaN}\n', encoding="utf-8")
    bid = batch_id()
    assert fault.cli("submit", str(jsonl), "--batch-id", bid, "--wait", "-q", "--timeout", "30").returncode == 0
    assert strict_json(fault.cli("results", bid).stdout)["metadata"] == {"score": None}
    # a pandas frame's rows through the Python API, as a list and as a generator (spooled as JSON lines)
    c = fault.client()
    try:
        for rows in (
            [{"text": "A frame row.", "score": float("nan")}],
            ({"text": "A frame row, two."} | {"v": [float("inf")]} for _ in "x"),
        ):
            batch = c.submit(rows, batch_id=batch_id())
            batch.wait(timeout=30)
            exported = tmp_path / f"{batch.id}.jsonl"
            batch.export(exported)
            assert list(strict_json(exported.read_text("utf-8"))["metadata"].values()) in ([None], [[None]])
    finally:
        c.close()


# --------------------------------------------------------------------------- output: a running batch, every format


def parquet_as_rows(path: Path) -> list[dict[str, Any]]:
    """A Parquet export read back in `summarize results`' JSON shape (usage regrouped, JSON columns parsed)."""
    out = []
    for p in pq.read_table(path).to_pylist():
        usage = {k: p.pop(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
        p["usage"] = None if usage["total_tokens"] is None else usage
        p["data"] = json.loads(p["data"]) if isinstance(p["data"], str) else p["data"]
        p["checks"] = None if p["checks"] is None else json.loads(p["checks"])
        p["metadata"] = json.loads(p["metadata"])
        out.append(p)
    return out


def csv_as_rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def csv_cells(row: dict[str, Any], data_fields: list[str]) -> dict[str, str]:
    """A results row as CsvWriter's cells should be."""
    usage = row["usage"] or {}
    checks = row["checks"]
    cells: dict[str, Any] = {k: row[k] for k in ("id", "status", "summary", "error", "error_type", "model")}
    cells.update({k: usage.get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")})
    cells.update({k: row[k] for k in ("cost_usd", "cached", "chunks", "attempts")})
    # the checks' two columns, by whatever name CSV_FIELDS gives them (checks.flags or checks_flags)
    [flags] = [f for f in CSV_FIELDS if f.startswith("checks") and f.endswith("flags")]
    [copied] = [f for f in CSV_FIELDS if f.startswith("checks") and f.endswith("copied")]
    cells[flags] = ";".join(checks["flags"]) if checks else None
    cells[copied] = checks["copied"] if checks else None
    cells["metadata"] = json.dumps(row["metadata"], ensure_ascii=False)
    for name in data_fields:
        v = (row["data"] or {}).get(name)
        cells[f"data.{name}"] = v if isinstance(v, str | int | float) else (None if v is None else json.dumps(v))
    return {k: "" if v is None else str(v) for k, v in cells.items()}


SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "headline": {"type": "string"},
        "score": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["headline", "score", "tags"],
    "additionalProperties": False,
}
KNOWN = "The council approved the bridge budget on Tuesday night, after a long debate."


@pytest.mark.no_invariants  # the worker is stopped with a job claimed: its hold outlives the lease until it goes on
def test_exports_of_a_frozen_running_batch_equal_results_in_every_format(
    stack: Stack, redis_url: str, fault_server: FaultServer, tmp_path: Path
) -> None:
    g = isolated_group(stack, redis_url, fault_server.url)
    w = g.worker(f"{g.env['SUMMARIZE_QUEUE']}-w1")
    c = g.client()
    try:
        schema = tmp_path / "schema.json"
        schema.write_text(json.dumps(SCHEMA))
        first = c.submit([{"id": "k", "text": KNOWN}], batch_id=batch_id())
        first.wait(timeout=30)  # its answer cached: the same text below is answered from the cache
        arts = [
            {"id": "d1", "text": KNOWN, "t": "ünï ✓ 😀 \u2028", "nested": {"x": [1, {"y": "z"}]}, "none": None},
            {"id": "f1", "text": "Refused article. [[fault:400]]", "t": "x"},
            {"id": "h1", "text": "A hanging article. [[fault:hang:60]]", "t": "h"},
            {"id": "e1", "text": "   "},
            {"id": "r1", "text": "A failing-again article. [[fault:500x100]]"},
            {"id": "o1", "text": "Ordinary article about the school board vote."},
        ]
        src = tmp_path / "mixed.jsonl"
        src.write_text("".join(json.dumps(a, ensure_ascii=False) + "\n" for a in arts), encoding="utf-8")
        bids = []
        for extra in (
            ("--price-in", "1.5", "--price-out", "2.25"),
            ("--json-schema", str(schema)),
        ):  # costs known, unknown
            bid = batch_id()
            r = g.cli("submit", str(src), "--batch-id", bid, "--skip-invalid", "-q", *extra)
            assert r.returncode == 0, r.stderr
            bids.append(bid)

        def settled() -> bool:
            return all(c.batch(b).status()["done"] >= 2 and c.batch(b).status()["failed"] >= 2 for b in bids)

        wait_until(settled, 30, "done and failed rows beside unfinished ones")
        w.signal(signal.SIGSTOP)  # frozen: no row changes while the formats are written
        try:
            for bid, fields in zip(bids, ([], list(SCHEMA["properties"])), strict=True):
                # split on \n only: str.splitlines also splits inside a string holding U+2028 (JSON keeps it raw)
                rows = [json.loads(x) for x in g.cli("results", bid).stdout.split("\n") if x]
                statuses = {r["status"] for r in rows}
                assert {"done", "failed"} <= statuses and statuses & {"queued", "running"}, statuses
                assert any(r["cached"] for r in rows) or fields  # the cached answer was a plain one
                assert any(isinstance(r["cost_usd"], float) and r["cost_usd"] > 0 for r in rows) or fields
                for status in (None, "done", "failed", "queued", "running"):
                    want = [r for r in rows if status is None or r["status"] == status]
                    for fmt in ("jsonl", "jsonl.gz", "jsonl.zst", "csv", "parquet"):
                        out = tmp_path / f"{bid}-{status}.{fmt}"
                        if status is None:  # the CLI once; the filters through Batch.export (the same code)
                            r = g.cli("results", bid, "--out", str(out))
                            assert r.returncode == 0 and f"wrote {len(want)} result(s)" in r.stderr, r.stderr
                        else:
                            assert c.batch(bid).export(out, status=status).rows == len(want)
                        if fmt == "parquet":
                            got: list[Any] = parquet_as_rows(out)
                            assert got == want, (status, fmt)
                            if fields:
                                assert pa.types.is_struct(pq.read_schema(out).field("data").type)
                        elif fmt == "csv":
                            cells = [csv_cells(x, fields) for x in want]
                            diff = [
                                (k, a.get(k), b[k])
                                for a, b in zip(csv_as_rows(out), cells, strict=True)
                                for k in b
                                if a.get(k) != b[k]
                            ]
                            assert not diff, (status, diff)
                            header = out.read_text("utf-8").split("\n", 1)[0].split(",")
                            assert header == CSV_FIELDS + [f"data.{f}" for f in fields]
                        else:
                            raw = out.read_bytes()
                            if fmt == "jsonl.gz":
                                raw = gzip.decompress(raw)
                            elif fmt == "jsonl.zst":
                                raw = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
                            assert [json.loads(x) for x in raw.decode().split("\n") if x] == want, (status, fmt)
                r = g.cli("results", bid, "--status", "running", "--out", str(tmp_path / "running.parquet"))
                want = [r for r in rows if r["status"] == "running"]
                assert r.returncode == 0 and parquet_as_rows(tmp_path / "running.parquet") == want
        finally:
            w.signal(signal.SIGCONT)
        for bid in bids:
            c.batch(bid).cancel()
            c.batch(bid).wait(timeout=30)
    finally:
        c.close()


@pytest.fixture(scope="module")
def small(fault: Group) -> str:
    """A finished batch of one article: its id."""
    bid = batch_id()
    r = fault.cli("submit", "-", "--input-format", "text", "--batch-id", bid, "--wait", "-q", input="One article.")
    assert r.returncode == 0, r.stderr
    return bid


def test_an_export_that_cannot_be_written_names_the_path_and_writes_nothing(
    fault: Group, small: str, tmp_path: Path
) -> None:
    bid = small
    for fmt in ("parquet", "csv", "jsonl.zst"):
        missing = tmp_path / "no" / "such" / f"out.{fmt}"
        r = fault.cli("results", bid, "--out", str(missing))
        assert r.returncode == 3 and str(missing.parent) in r.stderr and not missing.parent.exists(), r.stderr
        afile = tmp_path / "a-file"
        afile.write_text("x")
        r = fault.cli("results", bid, "--out", str(afile / f"out.{fmt}"))
        assert r.returncode == 3 and str(afile / f"out.{fmt}") in r.stderr and afile.read_text() == "x", r.stderr
    # a file system that takes no new file: sysfs refuses even root (a read-only directory does not), procfs
    # says "not found" of a directory that is there
    for place, said in (("/sys", "permission denied"), ("/proc", "no such file or directory")):
        r = fault.cli("results", bid, "--out", f"{place}/out.parquet")
        assert r.returncode == 3 and f"{place}/out.parquet: {said}" in r.stderr, r.stderr
    for fmt in ("parquet", "jsonl.gz", "jsonl.zst"):
        out = tmp_path / f"follow.{fmt}"
        r = fault.cli("results", bid, "--follow", "--out", str(out))
        assert r.returncode == 2 and "can't be appended to" in r.stderr and not out.exists(), r.stderr
    r = fault.cli("results", "t-no-such-batch", "--out", str(tmp_path / "x.parquet"))
    assert r.returncode == 3 and not (tmp_path / "x.parquet").exists(), r.stderr


# --------------------------------------------------------------------------- a submit killed, then run again


def _kill_mid_submit(g: Group, c: Client, src: Path, bid: str, total: int) -> None:
    proc = subprocess.Popen(
        [str(BIN / "summarize"), "submit", str(src), "--batch-id", bid, "-q"],
        env=g.env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    key = c.store.keys.batch_ids(bid)
    try:
        wait_until(lambda: c.redis.llen(key) > 0 or proc.poll() is not None, 30, "the submit storing jobs")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(10)
    stored = c.redis.llen(key)
    assert 0 < stored < total, f"killed too late: {stored} of {total} stored"


def test_a_submit_killed_mid_way_resumes_each_format_storing_every_article_once(
    stack: Stack, redis_url: str, tmp_path: Path
) -> None:
    g = isolated_group(stack, redis_url, "http://127.0.0.1:9/v1")  # no worker: the jobs stay queued
    c = g.client()
    n = 12_000
    rows = [{"id": f"k{i}", "text": f"Article {i}: the council met on day {i}.", "n": i} for i in range(n)]
    srcs = [tmp_path / "in.parquet", tmp_path / "in.csv", tmp_path / "in.jsonl.zst", tmp_path / "in.jsonl.gz"]
    pq.write_table(pa.Table.from_pylist(rows), srcs[0], row_group_size=5000)
    with open(srcs[1], "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "text", "n"])
        w.writeheader()
        w.writerows(rows)
    body = b"".join(jl(r) for r in rows)
    srcs[2].write_bytes(zstandard.compress(body))
    srcs[3].write_bytes(gzip.compress(body))
    try:
        for src in srcs:
            bid = batch_id()
            _kill_mid_submit(g, c, src, bid, n)
            r = g.cli("submit", str(src), "--batch-id", bid, "-q")
            assert r.returncode == 0 and "already there" in r.stderr, r.stderr
            st = c.batch(bid).status()
            assert st["total"] == st["queued"] == n, (src.name, st)
            ids = [x if isinstance(x, str) else x.decode() for x in c.redis.lrange(c.store.keys.batch_ids(bid), 0, -1)]
            assert ids == [f"k{i}" for i in range(n)], src.name
            c.batch(bid).cancel()
    finally:
        c.close()
    time.sleep(0)  # nothing to stop: the group has no worker


@pytest.mark.xfail(
    strict=True,
    reason="producer/cli.py _format: an --out suffix no format has (.tsv, .csv.gz, .parq) silently gets JSON lines, "
    "while Batch.export refuses the same path and docs/formats.md says the format comes from the suffix",
)
def test_results_out_with_a_suffix_no_format_has_is_refused_as_export_refuses_it(
    fault: Group, client: Client, small: str, tmp_path: Path
) -> None:
    for name in ("out.tsv", "out.csv.gz", "out.parq"):
        with pytest.raises(SummarizeError, match="no format has this suffix"):
            client.batch(small).export(tmp_path / name)
        r = fault.cli("results", small, "--out", str(tmp_path / name))
        assert r.returncode != 0 and "no format has this suffix" in r.stderr, (name, r.stderr)
        assert not (tmp_path / name).exists()


def test_a_final_record_whose_error_lua_cut_mid_character_exports_to_parquet_as_results_shows_it() -> None:
    # _lib.lua `land` cuts a waiter's error with string.sub(err, 1, 2000): bytes, so a long error of non-ASCII
    # text (an id, a provider's message) can end inside a character. public_row decodes it with "replace";
    # public_columns gave the bytes to Parquet unchecked, viewed as a string column: a file pyarrow can't read.
    # (A unit of the two functions on the record as Lua writes it: no fault makes an error that long.)
    from contract.record import Final, pack, public_columns, public_row, unpack
    from contract.schema import FINAL
    from producer.output import Options, ParquetWriter

    stored = FINAL.read(unpack(Final("failed", "d", "0:1", error="x", error_type="PermanentLLMError").pack()))
    values = {k: stored[k] for k in FINAL.fields}
    values["error"] = ("an identical article (" + "é" * 1200 + ") failed: HTTP 400").encode()[:1999]  # inside an é
    blob = pack(FINAL.row(**values))
    row = public_row("j1", blob, {})
    buf = io.BytesIO()
    writer = ParquetWriter(buf, Options())
    writer.write_columns(public_columns([b"j1"], [blob], [b"{}"], {}))
    writer.close()
    buf.seek(0)
    assert pq.read_table(buf).column("error").to_pylist() == [row["error"]]
