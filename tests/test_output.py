"""producer/output.py: the registry of result formats, each writer's bytes, and `Batch.export` for real.

The units pin the exact bytes `summarize results` has always written (JSON lines as orjson writes them,
CSV with csv's \\r\\n and its columns in their documented order), so a format moved, added or rewritten
can't change what an existing export looks like. The scenarios export finished batches of the `fault`
group through `Batch.export` and compare the file with what `summarize results --out` writes.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson
import pytest

from contract.errors import ConfigError
from contract.record import JobResult
from producer import output
from producer.api import Batch
from producer.cli import UsageError, build_parser, follow
from scripts.stack import Stack
from tests.conftest import Group, batch_id, isolated_group
from tests.faultserver import FaultServer, expected_summary
from tests.helpers import articles, write_jsonl

META = {"section": "Wörld", "q": 'say "hi", then\nnewline', "n": 3}


def done_row(metadata: Any = None) -> dict[str, Any]:
    return {
        "id": "a1",
        "status": "done",
        "summary": 'Sum, with "quotes"\nand a newline',
        "data": {"h": "Héad", "b": ["x", 1], "n": 7, "f": 1.5, "z": None, "o": {"k": True}},
        "error": None,
        "error_type": None,
        "model": "m",
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        "cost_usd": 0.000123,
        "cached": False,
        "chunks": 0,
        "attempts": 1,
        "checks": {"flags": ["numbers"], "copied": 0.5},
        "metadata": META if metadata is None else metadata,
    }


FAILED = JobResult("b2", "failed", None, "HTTP 400: bad", None, None, 1, {}, error_type="PermanentLLMError")

JSONL = (
    '{"id":"a1","status":"done","summary":"Sum, with \\"quotes\\"\\nand a newline","data":{"h":"Héad",'
    '"b":["x",1],"n":7,"f":1.5,"z":null,"o":{"k":true}},"error":null,"error_type":null,"model":"m",'
    '"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15},"cost_usd":0.000123,"cached":false,'
    '"chunks":0,"attempts":1,"checks":{"flags":["numbers"],"copied":0.5},'
    '"metadata":{"section":"Wörld","q":"say \\"hi\\", then\\nnewline","n":3}}\n'
    '{"id":"b2","status":"failed","summary":null,"data":null,"error":"HTTP 400: bad",'
    '"error_type":"PermanentLLMError","model":null,"usage":null,"cost_usd":null,"cached":false,"chunks":0,'
    '"attempts":1,"checks":null,"metadata":{}}\n'
)
CSV_HEADER = (
    "id,status,summary,error,error_type,model,prompt_tokens,completion_tokens,total_tokens,cost_usd,cached,"
    "chunks,attempts,checks_flags,checks_copied,metadata"
)
CSV_A1 = (
    'a1,done,"Sum, with ""quotes""\nand a newline",,,m,10,5,15,0.000123,False,0,1,numbers,0.5,'
    '"{""section"": ""Wörld"", ""q"": ""say \\""hi\\"", then\\nnewline"", ""n"": 3}"'
)
CSV_B2 = "b2,failed,,HTTP 400: bad,PermanentLLMError,,,,,,False,0,1,,,{}"


def written(fmt: str, rows: list[JobResult | dict[str, Any]], **kw: Any) -> str:
    out = io.StringIO()
    writer = output.RowWriter(out, fmt, **kw)
    for r in rows:
        writer.write(r)
    writer.close()
    assert writer.written == len(rows)
    return out.getvalue()


# --------------------------------------------------------------------------- the registry


def test_the_registry_holds_jsonl_then_csv() -> None:
    assert output.names()[:2] == ["jsonl", "csv"]  # jsonl first: the default
    assert output.get("csv") is output.FORMATS["csv"] and output.get(output.FORMATS["csv"]) is output.FORMATS["csv"]
    assert output.FORMATS["jsonl"].raw_metadata and not output.FORMATS["csv"].raw_metadata
    assert all(output.FORMATS[n].appendable and not output.FORMATS[n].binary for n in ("jsonl", "csv"))
    with pytest.raises(ConfigError, match=r"unknown format 'xlsx': one of jsonl, csv"):
        output.get("xlsx")


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("out.jsonl", "jsonl"),
        ("out.ndjson", "jsonl"),
        ("/data/Run 1/OUT.CSV", "csv"),
        ("out.csv.jsonl", "jsonl"),
        ("a.csv/out.txt", None),  # the directory's suffix is not the file's
        (".csv", None),  # a hidden file called .csv has no suffix
        ("out", None),
    ],
)
def test_the_format_is_inferred_from_the_suffix(path: str, name: str | None) -> None:
    found = output.infer(Path(path))
    assert (found.name if found else None) == name


def test_resolve_prefers_the_format_given_and_names_the_path_it_cannot_read() -> None:
    assert output.resolve("out.csv", "jsonl").name == "jsonl"
    assert output.resolve("out.csv").name == "csv"
    assert output.resolve("-").name == output.resolve(None).name == "jsonl"
    with pytest.raises(ConfigError, match=r"^out\.txt: no format has this suffix; give the format: jsonl \(\.jsonl"):
        output.resolve("out.txt")


def test_a_name_or_suffix_another_format_has_is_refused() -> None:
    with pytest.raises(ValueError, match="'csv' is registered already"):
        output.register(output.Format("csv", (".csv2",), output.CsvWriter))
    with pytest.raises(ValueError, match=r"suffix '\.csv' belongs to 'csv'"):
        output.register(output.Format("csv2", (".csv",), output.CsvWriter))
    with pytest.raises(ValueError, match=r"lower case and start with '\.'"):
        output.register(output.Format("csv2", ("CSV",), output.CsvWriter))
    assert "csv2" not in output.FORMATS


class LengthsWriter:
    """A binary format with a footer: each row's id as a length-prefixed string, then the count."""

    def __init__(self, stream: IO[bytes], options: output.Options) -> None:
        self.out, self.n = stream, 0

    def write(self, row: dict[str, Any]) -> None:
        raw = f"{row['id']}:{row['status']}".encode()
        self.out.write(bytes([len(raw)]) + raw)
        self.n += 1

    def close(self) -> None:
        self.out.write(b"\0" + self.n.to_bytes(4, "big"))


def lengths(raw: bytes) -> tuple[list[str], int]:
    items, i = [], 0
    while raw[i]:
        items.append(raw[i + 1 : i + 1 + raw[i]].decode())
        i += 1 + raw[i]
    return items, int.from_bytes(raw[i + 1 :], "big")


@pytest.fixture
def lengths_format() -> Iterator[output.Format]:
    """One registration makes a new format: the CLI's choices, suffix inference and Batch.export reach it."""
    fmt = output.register(output.Format("lengths", (".len",), LengthsWriter, binary=True, appendable=False))
    try:
        yield fmt
    finally:
        del output.FORMATS["lengths"]


def test_one_registration_reaches_the_cli_and_the_suffixes(lengths_format: output.Format, tmp_path: Path) -> None:
    assert output.resolve(tmp_path / "x.LEN") is lengths_format
    for argv in (["results", "b", "--format", "lengths"], ["submit", "in.jsonl", "--out", "o", "--format", "lengths"]):
        assert build_parser().parse_args(argv).format == "lengths"
    path = tmp_path / "x.len"
    with output.open_file(str(path), lengths_format) as out:
        assert "b" in out.mode
        deferred = JobResult("c3", "deferred", None, None, None, None, 0)
        assert output.write_rows([done_row(), FAILED, deferred], out, "lengths") == 3
    assert lengths(path.read_bytes()) == (["a1:done", "b2:failed", "c3:queued"], 3)


def test_follow_out_refuses_a_format_that_cannot_be_appended_to(
    lengths_format: output.Format, fault: Group, tmp_path: Path
) -> None:
    client = fault.client()
    try:
        with pytest.raises(
            UsageError, match=r"--follow --out: a lengths file can't be appended to \(one of jsonl, csv"
        ):
            follow(Batch(client, "never-looked-up"), str(tmp_path / "o.len"), "lengths")
    finally:
        client.close()


# --------------------------------------------------------------------------- the writers, byte for byte


def test_jsonl_is_one_orjson_line_a_row() -> None:
    assert written("jsonl", [done_row(), FAILED]) == JSONL
    # the stored metadata passes through unparsed, as the export path reads it from Redis
    raw = orjson.Fragment(b'{"section":"W\xc3\xb6rld","q":"say \\"hi\\", then\\nnewline","n":3}')
    assert written("jsonl", [done_row(raw), FAILED]) == JSONL


def test_csv_columns_header_and_quoting() -> None:
    assert written("csv", [done_row(), FAILED]) == f"{CSV_HEADER}\r\n{CSV_A1}\r\n{CSV_B2}\r\n"
    assert written("csv", [FAILED], header=False) == CSV_B2 + "\r\n"  # appending: no second header
    assert CSV_HEADER.split(",") == output.CSV_FIELDS


def test_csv_flattens_a_structured_answer_into_data_columns() -> None:
    fields = ("h", "b", "n", "f", "z", "o", "missing")
    text = written("csv", [done_row(), FAILED, {**done_row(), "id": "s", "data": "not an object"}], data_fields=fields)
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert text.splitlines()[0] == CSV_HEADER + ",data.h,data.b,data.n,data.f,data.z,data.o,data.missing"
    data = {k: v for k, v in rows[0].items() if k.startswith("data.")}
    # a string or number as it is, anything else as JSON, nothing as an empty cell
    assert data == {
        "data.h": "Héad",
        "data.b": '["x", 1]',
        "data.n": "7",
        "data.f": "1.5",
        "data.z": "",
        "data.o": '{"k": true}',
        "data.missing": "",
    }
    assert all(rows[i][f"data.{f}"] == "" for i in (1, 2) for f in fields)  # a failed row; an answer not an object


def test_a_json_schema_maps_to_an_arrow_struct_or_to_json_text() -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = {
        "type": "object",
        "properties": {
            "h": {"type": "string"},
            "n": {"type": ["integer", "null"]},
            "f": {"type": "number"},
            "ok": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "who": {"type": "object", "properties": {"name": {"type": "string"}}},
        },
    }
    kind = output.arrow_type(schema)
    assert str(kind) == (
        "struct<h: string, n: int64, f: double, ok: bool, tags: list<item: string>, who: struct<name: string>>"
    )
    # a union, an untyped field or an object without properties has no one type: the answer stays JSON text
    assert output.arrow_type({"type": "object", "properties": {"x": {"anyOf": [{"type": "string"}]}}}) is None
    assert output.arrow_type({"type": "object", "properties": {"x": {"type": ["string", "integer"]}}}) is None
    assert output.arrow_type({"type": "object"}) is None
    good = {"h": "Héad", "n": 7, "f": 1.5, "ok": True, "tags": ["a"], "who": {"name": "Ann"}}
    rows: list[JobResult | dict[str, Any]] = [
        {**done_row(), "data": good},
        FAILED,  # no data: null
        {**done_row(), "id": "bad", "data": {"h": ["not", "a", "string"]}},  # the schema can't hold it: null
    ]
    for json_schema in (schema, None):
        out = io.BytesIO()
        output.write_rows(rows, out, "parquet", json_schema=json_schema)
        got = pq.read_table(pa.BufferReader(out.getvalue())).column("data").to_pylist()
        if json_schema is None:  # no schema: the answer's JSON text, as in JSON lines
            assert [json.loads(v) if v else v for v in got] == [good, None, {"h": ["not", "a", "string"]}]
        else:
            assert got == [good, None, None]


def test_every_format_writes_the_status_summarize_status_counts() -> None:
    rows: list[JobResult | dict[str, Any]] = [
        {**done_row(), "status": "deferred"},
        JobResult("p", "parked", None, None, None, None, 0),
        JobResult("r", "running", None, None, None, None, 1),
    ]
    lines = written("jsonl", rows).splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["queued", "queued", "running"]
    table = list(csv.DictReader(io.StringIO(written("csv", rows), newline="")))
    assert [r["status"] for r in table] == ["queued", "queued", "running"]


def test_flush_returns_the_size_a_cursor_records(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    with output.open_file(str(path), "csv") as out:
        writer = output.RowWriter(out, "csv")
        writer.write(FAILED)
        size = writer.flush()
        assert size == path.stat().st_size == len(f"{CSV_HEADER}\r\n{CSV_B2}\r\n".encode())
    with output.open_file(str(path), "csv", append=True) as out:
        output.RowWriter(out, "csv", header=False).write(done_row())
    assert path.read_bytes() == f"{CSV_HEADER}\r\n{CSV_B2}\r\n{CSV_A1}\r\n".encode()


def test_a_file_that_cannot_be_opened_is_one_line_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "out.csv"
    with pytest.raises(ConfigError, match=rf"^--out {missing}: no such directory {missing.parent}$"):
        output.open_file(str(missing), "csv", label="--out ")
    with pytest.raises(ConfigError, match=rf"^{tmp_path}: is a directory$"):
        output.open_file(str(tmp_path), "jsonl")


# --------------------------------------------------------------------------- Batch.export, real processes

ARTICLES: list[dict[str, Any]] = [
    {"id": "ok1", "text": 'Commas, "quotes" and newlines\nsurvive the export.', "desk": "Zürich"},
    {"id": "bad", "text": "The provider refuses this one for good. [[fault:400]]"},
    {"id": "ok2", "text": "Second article about the bridge vote.", "n": 2},
]


def cli_export(group: Group, bid: str, out: Path, fmt: str, n: int = len(ARTICLES)) -> bytes:
    """`summarize results BID --out OUT --format FMT`: the file's bytes."""
    r = group.cli("results", bid, "--out", str(out), "--format", fmt)
    assert r.returncode == 0 and f"wrote {n} result(s) to {out}" in r.stderr, r.stderr
    return out.read_bytes()


def test_batch_export_writes_what_the_cli_writes_in_both_formats(
    fault: Group, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = fault.client()
    try:
        batch = client.submit(ARTICLES, batch_id=batch_id())
        status = batch.wait(timeout=60)
        assert (status["done"], status["failed"]) == (2, 1), status

        jsonl = batch.export(tmp_path / "api.jsonl")  # inferred from the suffix
        assert (jsonl.rows, jsonl.format, jsonl.path, jsonl.unfinished) == (3, "jsonl", str(tmp_path / "api.jsonl"), 0)
        table = batch.export(str(tmp_path / "api.txt"), format="csv")  # given: the suffix says nothing
        assert (table.rows, table.format, table.unfinished) == (3, "csv", 0)

        raw = (tmp_path / "api.jsonl").read_bytes()
        assert raw == cli_export(fault, batch.id, tmp_path / "cli.jsonl", "jsonl")
        assert (tmp_path / "api.txt").read_bytes() == cli_export(fault, batch.id, tmp_path / "cli.csv", "csv")

        rows = [json.loads(line) for line in raw.decode().splitlines()]
        assert [(r["id"], r["status"]) for r in rows] == [("ok1", "done"), ("bad", "failed"), ("ok2", "done")]
        assert rows[0]["summary"] == expected_summary(str(ARTICLES[0]["text"]))
        assert rows[0]["metadata"] == {"desk": "Zürich"} and rows[2]["metadata"] == {"n": 2}
        assert rows[1]["error_type"] == "PermanentLLMError" and "400" in rows[1]["error"]
        cells = list(csv.DictReader(io.StringIO((tmp_path / "api.txt").read_text(encoding="utf-8"), newline="")))
        assert [c["id"] for c in cells] == ["ok1", "bad", "ok2"] and list(cells[0]) == output.CSV_FIELDS
        assert cells[0]["summary"] == rows[0]["summary"] and json.loads(cells[0]["metadata"]) == {"desk": "Zürich"}
        assert int(cells[0]["total_tokens"]) == rows[0]["usage"]["total_tokens"] > 0

        capsys.readouterr()
        assert batch.export("-").rows == 3  # stdout, jsonl by default
        assert capsys.readouterr().out.encode() == raw
        with pytest.raises(ConfigError, match=r"api\.xlsx: no format has this suffix"):
            batch.export(tmp_path / "api.xlsx")
        assert not (tmp_path / "api.xlsx").exists()
    finally:
        client.close()


def parquet_rows(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return list(pq.read_table(path).to_pylist())


def test_a_parquet_export_from_columns_is_the_row_paths_file(fault: Group, tmp_path: Path) -> None:
    """Batch.export writes Parquet from the store's pages of columns: the same table as the rows the other
    formats get, written through the row path (done, failed, queued, a status filter), and the same schema."""
    import pyarrow.parquet as pq

    client = fault.client()
    try:
        batch = client.submit(ARTICLES, batch_id=batch_id())
        batch.wait(timeout=60)
        assert batch.export(tmp_path / "cols.parquet").rows == 3
        with open(tmp_path / "rows.parquet", "wb") as out:
            output.write_rows(client.store.rows(batch.id, raw_metadata=True), out, "parquet")
        assert pq.read_schema(tmp_path / "cols.parquet") == pq.read_schema(tmp_path / "rows.parquet")
        got = parquet_rows(tmp_path / "cols.parquet")
        assert got == parquet_rows(tmp_path / "rows.parquet")
        assert [(r["id"], r["status"]) for r in got] == [("ok1", "done"), ("bad", "failed"), ("ok2", "done")]
        assert json.loads(got[0]["metadata"]) == {"desk": "Zürich"} and got[1]["total_tokens"] is None
        assert got[0]["summary"] == expected_summary(str(ARTICLES[0]["text"]))
        assert batch.export(tmp_path / "failed.parquet", status="failed").rows == 1
        assert [r["id"] for r in parquet_rows(tmp_path / "failed.parquet")] == ["bad"]
        assert batch.export(tmp_path / "none.parquet", status="queued").rows == 0
        assert parquet_rows(tmp_path / "none.parquet") == []
    finally:
        client.close()


def test_batch_export_reaches_a_registered_format(lengths_format: output.Format, fault: Group, tmp_path: Path) -> None:
    client = fault.client()
    try:
        batch = client.submit(ARTICLES[::2], batch_id=batch_id())
        batch.wait(timeout=60)
        assert batch.export(tmp_path / "out.len").rows == 2
        assert lengths((tmp_path / "out.len").read_bytes()) == (["ok1:done", "ok2:done"], 2)
    finally:
        client.close()


SCHEMA = {
    "type": "object",
    "properties": {"headline": {"type": "string"}, "bullets": {"type": "array", "items": {"type": "string"}}},
    "required": ["headline", "bullets"],
    "additionalProperties": False,
}


def test_batch_export_of_a_json_schema_batch_has_its_data_columns(fault: Group, tmp_path: Path) -> None:
    client = fault.client()
    try:
        batch = client.submit(ARTICLES[::2], batch_id=batch_id(), json_schema=SCHEMA)
        batch.wait(timeout=60)
        assert batch.export(tmp_path / "out.csv").rows == 2
        cells = list(csv.DictReader(io.StringIO((tmp_path / "out.csv").read_text(encoding="utf-8"), newline="")))
        fields = output.data_fields(batch)  # the stored schema's order (it is stored canonical: sorted)
        assert sorted(fields) == ["bullets", "headline"]
        assert list(cells[0]) == [*output.CSV_FIELDS, *(f"data.{f}" for f in fields)]
        for c, r in zip(cells, batch.results(), strict=True):
            assert c["data.headline"] == r.data["headline"] and json.loads(c["data.bullets"]) == r.data["bullets"]
        assert (tmp_path / "out.csv").read_bytes() == cli_export(fault, batch.id, tmp_path / "cli.csv", "csv", 2)
        # Parquet: `data` is a struct of the schema's fields, read back as the answers were
        import pyarrow.parquet as pq

        assert batch.export(tmp_path / "out.parquet").rows == 2
        table = pq.read_table(tmp_path / "out.parquet")
        assert str(table.schema.field("data").type) == "struct<bullets: list<element: string>, headline: string>"
        assert table.column("data").to_pylist() == [r.data for r in batch.results()]
    finally:
        client.close()


def test_an_unfinished_batch_exports_its_queued_rows_and_says_so(
    stack: Stack, redis_url: str, fault_server: FaultServer, tmp_path: Path
) -> None:
    idle = isolated_group(stack, redis_url, fault_server.url)  # no worker: every job stays queued
    client = idle.client()
    try:
        batch = client.submit(ARTICLES, batch_id=batch_id())
        done = batch.export(tmp_path / "out.jsonl")
        assert (done.rows, done.unfinished, done.status["queued"]) == (3, 3, 3)
        statuses = [json.loads(line)["status"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
        assert statuses == ["queued"] * 3
        # Parquet's columnar path says the same of jobs with no final record yet
        assert batch.export(tmp_path / "out.parquet", status=["queued"]).rows == 3
        assert [r["status"] for r in parquet_rows(tmp_path / "out.parquet")] == ["queued"] * 3
        batch.cancel()
    finally:
        client.close()


def test_the_cli_takes_the_format_from_the_out_files_suffix(fault: Group, tmp_path: Path) -> None:
    batch = fault.submit_and_wait(write_jsonl(tmp_path / "in.jsonl", articles("sfx", 2)))
    csv_out, other = tmp_path / "rows.csv", tmp_path / "rows.out"
    assert fault.cli("results", batch, "--out", str(csv_out)).returncode == 0
    assert csv_out.read_text().splitlines()[0].startswith("id,status")
    assert fault.cli("results", batch, "--out", str(other)).returncode == 0
    assert json.loads(other.read_text().splitlines()[0])["status"] == "done"  # an unknown suffix: JSON lines
