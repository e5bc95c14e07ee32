"""The input formats of producer/reader.py and the output formats they pair with, called directly.

The CLI and the real stack drive the same code in test_formats.py; these pin each format's records,
line (row) numbers and the one-line errors a file of the wrong shape gets.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from contract.errors import InputError
from producer import output, reader
from producer.cli import build_parser
from producer.reader import Fields, Record

LIMIT = 10_000
ROWS = [
    {"id": "a1", "text": "First article, with a comma.", "section": "local"},
    {"id": "a2", "text": 'Second "quoted"\narticle.', "section": "world"},
]


def records(path: Path, fmt: str | None = None, fields: Fields = reader.DEFAULT_FIELDS) -> list[Record]:
    with reader.opened(str(path), LIMIT, fmt, fields) as source:
        first = list(source.records())
        assert [(r.job_id, r.text) for r in source.records()] == [(r.job_id, r.text) for r in first]  # pass 2
        return first


def good(recs: list[Record]) -> list[tuple[str | None, str, dict[str, Any]]]:
    assert all(r.error is None for r in recs), [str(r.error) for r in recs]
    return [(r.job_id, r.text, r.metadata) for r in recs]


EXPECTED = [(r["id"], r["text"], {"section": r["section"]}) for r in ROWS]


def jsonl_bytes(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def write_csv(path: Path, rows: list[dict[str, Any]], delimiter: str = ",") -> Path:
    import csv

    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        w.writeheader()
        w.writerows(rows)
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]], row_group_size: int | None = None) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("a.jsonl", "jsonl"),
        ("a.JSONL.GZ", "jsonl"),
        ("a.ndjson.zst", "jsonl"),
        ("a.csv", "csv"),
        ("a.csv.gz", "csv"),
        ("a.tsv", "tsv"),
        ("a.parquet", "parquet"),
        ("a.txt", "text"),
        ("a.md", "text"),
        ("a.data", None),
        ("noext", None),
    ],
)
def test_the_input_format_is_the_suffix_before_the_compression(name: str, fmt: str | None) -> None:
    assert reader.input_format(name) == fmt


def test_the_cli_offers_every_input_format() -> None:
    args = build_parser().parse_args(["submit", "x", "--input-format", "parquet", "--text-field", "body"])
    assert (args.input_format, args.text_field, args.id_field) == ("parquet", "body", None)
    for fmt in reader.INPUT_FORMATS:
        assert build_parser().parse_args(["submit", "x", "--input-format", fmt]).input_format == fmt
    with pytest.raises(SystemExit):
        build_parser().parse_args(["submit", "x", "--input-format", "xlsx"])


@pytest.mark.parametrize("compress", [lambda b: b, gzip.compress, lambda b: zstandard.ZstdCompressor().compress(b)])
def test_jsonl_plain_gzip_and_zstd_give_the_same_records(tmp_path: Path, compress: Any) -> None:
    # The compression is told by the bytes: a .jsonl name on gzip data is read all the same.
    path = tmp_path / "in.jsonl"
    path.write_bytes(compress(jsonl_bytes(ROWS)))
    assert good(records(path)) == EXPECTED


def test_a_byte_order_mark_is_accepted_in_every_text_format(tmp_path: Path) -> None:
    bom = b"\xef\xbb\xbf"
    (tmp_path / "in.jsonl").write_bytes(bom + jsonl_bytes(ROWS))
    assert good(records(tmp_path / "in.jsonl")) == EXPECTED
    write_csv(tmp_path / "in.csv", ROWS)
    (tmp_path / "in.csv").write_bytes(bom + (tmp_path / "in.csv").read_bytes())
    assert good(records(tmp_path / "in.csv")) == EXPECTED
    (tmp_path / "one.txt").write_bytes(bom + b"A plain article.")
    assert good(records(tmp_path / "one.txt")) == [("one", "A plain article.", {"file": "one.txt"})]


def test_csv_and_tsv_map_the_header_and_keep_the_rest_as_metadata(tmp_path: Path) -> None:
    assert good(records(write_csv(tmp_path / "in.csv", ROWS))) == EXPECTED
    assert good(records(write_csv(tmp_path / "in.tsv", ROWS, "\t"))) == EXPECTED
    mapped = [{"key": "k1", "body": "Body one.", "url": "u"}, {"key": "", "body": "Body two.", "url": "v"}]
    recs = records(write_csv(tmp_path / "m.csv", mapped), fields=Fields.of("body", "key"))
    assert good(recs)[0] == ("k1", "Body one.", {"url": "u"})
    assert recs[1].derived and recs[1].job_id == reader.content_id("Body two.")  # an empty id cell: derived


def test_a_bad_csv_row_is_named_by_the_line_it_starts_on(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    # line 1 header; 2-3 one row with a newline in its cell; 4 an empty text; 5 one field short
    path.write_bytes(b'id,text,n\nr1,"two\nlines",1\nr2,,2\nr3,short\nr4,fine,4\n')
    recs = records(path)
    assert [(r.line, r.job_id) for r in recs] == [(2, "r1"), (4, "r2"), (5, None), (6, "r4")]
    assert [str(r.error) if r.error else None for r in recs] == [
        None,
        f"{path}:4 (id 'r2'): 'text' is empty or whitespace only",
        f"{path}:5: the row has 2 fields; the header has 3",
        None,
    ]


def test_a_csv_without_the_text_column_names_the_likeliest_one_once(tmp_path: Path) -> None:
    rows = [{"id": "c1", "title": "Short", "content": "A much longer article body here."}]
    with pytest.raises(InputError) as err:
        records(write_csv(tmp_path / "in.csv", rows))
    assert "--text-field content" in str(err.value) and "its columns: id, title, content" in str(err.value)
    with pytest.raises(InputError, match=r"there is no 'key' column \(--id-field"):
        records(write_csv(tmp_path / "in.csv", rows), fields=Fields.of("content", "key"))


def test_jsonl_whose_every_record_lacks_the_text_field_says_so_once(tmp_path: Path) -> None:
    rows = [{"id": f"j{i}", "headline": "Hi", "content": f"Body number {i} of the article."} for i in range(150)]
    path = tmp_path / "in.jsonl"
    path.write_bytes(jsonl_bytes(rows))
    with reader.opened(str(path), LIMIT) as source, pytest.raises(InputError) as err:
        list(source.records())
    assert str(err.value) == (
        f"{path}: no record has a 'text' field; the article text seems to be under 'content': "
        "give --text-field content (text_field='content' in the Python API)"
    )
    assert good(records(path, fields=Fields.of("content")))[0] == ("j0", rows[0]["content"], {"headline": "Hi"})
    # Some records with it: the others are errors like any other, no hint.
    path.write_bytes(jsonl_bytes([{"id": "x", "text": "Has it."}, *rows[:2]]))
    reasons = [r.error.reason if r.error else None for r in records(path)]
    assert reasons == [None, "'text' is missing", "'text' is missing"]


def test_a_file_plainly_of_another_format_gets_one_line_naming_it(tmp_path: Path) -> None:
    write_csv(tmp_path / "rows.jsonl", ROWS)
    with pytest.raises(InputError, match=r"looks like a CSV file, not JSON lines: give --input-format csv"):
        records(tmp_path / "rows.jsonl")
    assert good(records(tmp_path / "rows.jsonl", "csv")) == EXPECTED  # the option it names works
    write_parquet(tmp_path / "table.jsonl", ROWS)
    with pytest.raises(InputError, match=r"looks like a Parquet file, not JSON lines: give --input-format parquet"):
        records(tmp_path / "table.jsonl", "jsonl")
    write_parquet(tmp_path / "table.data", ROWS)
    assert good(records(tmp_path / "table.data")) == EXPECTED  # a name saying nothing: Parquet's magic says it
    # A bad first line followed by JSON lines is a bad line, not a header.
    (tmp_path / "bad-first.jsonl").write_bytes(b"oops, junk\n" + jsonl_bytes(ROWS))
    recs = records(tmp_path / "bad-first.jsonl")
    assert recs[0].error is not None and recs[0].error.reason.startswith("invalid JSON") and good(recs[1:]) == EXPECTED
    (tmp_path / "lines.csv").write_bytes(jsonl_bytes(ROWS))
    with pytest.raises(InputError, match=r"looks like a JSON lines file, not CSV: give --input-format jsonl"):
        records(tmp_path / "lines.csv")


def test_parquet_is_read_in_batches_with_its_rows_numbered(tmp_path: Path) -> None:
    when = dt.datetime(2026, 3, 11, 8, 30, tzinfo=dt.UTC)
    rows = [
        {"id": f"p{i}", "text": f"Parquet article {i}." if i != 2500 else " ", "published": when, "n": i}
        for i in range(3000)
    ]
    path = write_parquet(tmp_path / "in.parquet", rows, row_group_size=1000)
    assert pq.ParquetFile(path).num_row_groups == 3
    recs = records(path)
    assert len(recs) == 3000 and recs[0].metadata == {"published": "2026-03-11T08:30:00+00:00", "n": 0}
    assert json.dumps(recs[0].metadata)  # storable as JSON
    bad = [r for r in recs if r.error]
    assert [str(r.error) for r in bad] == [f"{path}:2501 (id 'p2500'): 'text' is empty or whitespace only"]
    numbers = [{"id": 7, "text": "An integer id."}]
    assert good(records(write_parquet(tmp_path / "ints.parquet", numbers))) == [("7", "An integer id.", {})]


def test_parquet_without_the_text_column_names_the_option(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "in.parquet", [{"id": "q", "article": "The long body of it.", "lang": "en"}])
    with pytest.raises(InputError, match=r"no column has a 'text' field; .* give --text-field article"):
        records(path)
    assert good(records(path, fields=Fields.of("article"))) == [("q", "The long body of it.", {"lang": "en"})]
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match=r"broken\.parquet: not a readable Parquet file"):
        records(tmp_path / "broken.parquet")


def test_parquet_and_csv_read_from_a_spool_as_stdin_is(tmp_path: Path) -> None:
    for raw, fmt in (
        (write_parquet(tmp_path / "s.parquet", ROWS).read_bytes(), None),
        (write_csv(tmp_path / "s.csv", ROWS).read_bytes(), "csv"),
        (gzip.compress(jsonl_bytes(ROWS)), None),
    ):
        with tempfile.TemporaryFile() as spool:
            spool.write(raw)
            for _ in range(2):  # both passes read the same spool
                recs = list(reader._spooled(spool, "<stdin>", fmt, LIMIT, reader.DEFAULT_FIELDS, None))
                assert good(recs) == EXPECTED


def test_a_single_text_file_is_one_article(tmp_path: Path) -> None:
    (tmp_path / "Harbor Bridge.md").write_text("# Harbor\n\nThe council voted.\n", encoding="utf-8")
    assert good(records(tmp_path / "Harbor Bridge.md")) == [
        ("Harbor Bridge", "# Harbor\n\nThe council voted.\n", {"file": "Harbor Bridge.md"})
    ]
    (tmp_path / "gz.txt.gz").write_bytes(gzip.compress(b"Compressed text."))
    assert good(records(tmp_path / "gz.txt.gz")) == [("gz", "Compressed text.", {"file": "gz.txt.gz"})]


def test_a_directory_says_what_it_skips_refuses_to_be_empty_and_names_duplicate_files(tmp_path: Path) -> None:
    d = tmp_path / "arts"
    d.mkdir()
    with pytest.raises(InputError, match=r"arts: no \.txt or \.md files in this directory$"):
        records(d)
    (d / "sub").mkdir()
    (d / "notes.html").write_text("<p>x</p>")
    with pytest.raises(InputError, match=r"no \.txt or \.md files in this directory \(1 subdirectory and 1 other"):
        records(d)
    (d / "a.txt").write_text("Plain A.")
    (d / "a.md").write_text("Markdown A.")
    (d / "b.txt").write_text("B.")
    with reader.opened(str(d), LIMIT) as source:
        recs = list(source.records())
        assert source.notes == [f"{d}: skipped 1 subdirectory and 1 other file (only .txt and .md files are read)"]
    assert [(r.job_id, r.error.reason if r.error else None) for r in recs] == [
        ("a", None),
        ("a", "duplicate id 'a': a.md and a.txt both give it; rename one"),
        ("b", None),
    ]
    # a format for a directory would be ignored: refused, naming it; "text" is what a directory is anyway
    with pytest.raises(
        InputError, match=r"arts: a directory is read as one article per \.txt or \.md file, not as CSV"
    ):
        records(d, "csv")
    with reader.opened(str(d), LIMIT, "text") as source:
        assert [r.job_id for r in source.records()] == ["a", "a", "b"]


def test_items_map_their_fields_and_generators_are_spooled() -> None:
    fields = Fields.of("body", "key")
    items: list[str | dict[str, Any]] = [{"key": "k", "body": "Body."}, "A bare string is the text."]
    with reader.opened_items(items, LIMIT, fields) as source:
        assert [(r.job_id, r.text) for r in source.records()] == [
            ("k", "Body."),
            (reader.content_id("A bare string is the text."), "A bare string is the text."),
        ]
    when = dt.date(2026, 1, 2)
    with reader.opened_items(({"key": "g", "body": "Gen.", "day": when} for _ in range(1)), LIMIT, fields) as source:
        assert good(list(source.records())) == [("g", "Gen.", {"day": "2026-01-02"})]
    with pytest.raises(InputError, match="can't be both"):
        Fields.of("x", "x")


# --------------------------------------------------------------------------- output formats, unit


def row(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"r{i}",
        "status": "done" if i % 3 else "failed",
        "summary": f"Summary {i}, with ü" if i % 3 else None,
        "data": {"h": i} if i % 2 else None,
        "error": None if i % 3 else "HTTP 400",
        "error_type": None if i % 3 else "PermanentLLMError",
        "model": "m",
        "usage": {"prompt_tokens": i, "completion_tokens": 1, "total_tokens": i + 1} if i % 3 else None,
        "cost_usd": 0.5 if i % 3 else None,
        "cached": i % 5 == 0,
        "chunks": 0,
        "attempts": 1,
        "metadata": {"n": i, **extra},
    }


def test_compressed_jsonl_holds_exactly_the_plain_lines() -> None:
    rows = [row(i) for i in range(30)]
    plain = io.StringIO()
    output.write_rows(rows, plain, "jsonl")
    unzip: dict[str, Any] = {
        "jsonl.gz": gzip.decompress,
        "jsonl.zst": lambda raw: zstandard.ZstdDecompressor().decompressobj().decompress(raw),
    }
    for name, undo in unzip.items():
        out = io.BytesIO()
        assert output.write_rows(rows, out, name) == 30 and not out.closed
        assert undo(out.getvalue()).decode() == plain.getvalue()
    assert output.resolve("x.jsonl.gz").name == "jsonl.gz" and output.resolve("x.ndjson.zst").name == "jsonl.zst"
    assert not output.get("jsonl.gz").appendable and not output.get("parquet").appendable


def test_parquet_has_a_stable_schema_and_a_row_group_per_n_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output, "PARQUET_ROW_GROUP", 100)
    rows = [row(i) for i in range(250)]
    out = io.BytesIO()
    assert output.write_rows(rows, out, "parquet") == 250
    pf = pq.ParquetFile(io.BytesIO(out.getvalue()))
    assert pf.num_row_groups == 3
    assert [(f.name, str(f.type)) for f in pf.schema_arrow] == [
        (n, {"bool_": "bool", "float64": "double"}.get(t, t)) for n, t in output.PARQUET_COLUMNS
    ]
    back = pf.read().to_pylist()
    for got, want in zip(back, rows, strict=True):
        usage = want["usage"] or {}
        assert got == {
            **{k: want[k] for k in ("id", "status", "summary", "error", "error_type", "model", "cost_usd")},
            **{k: want[k] for k in ("cached", "chunks", "attempts")},
            "data": None if want["data"] is None else orjson.dumps(want["data"]).decode(),
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
            "total_tokens": usage.get("total_tokens"),
            "checks": None if want.get("checks") is None else orjson.dumps(want["checks"]).decode(),
            "metadata": orjson.dumps(want["metadata"]).decode(),
        }
    empty = io.BytesIO()
    assert output.write_rows([], empty, "parquet") == 0
    assert pq.read_table(io.BytesIO(empty.getvalue())).schema == pf.schema_arrow  # the same columns, no rows
