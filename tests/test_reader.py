"""The producer's input functions, called directly (the CLI tests in test_input.py drive them end to end)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from contract.record import digest
from producer import reader
from producer.cli import build_parser
from producer.reader import IdIndex, Record, check_id, check_text, content_id, id_hash, iter_jsonl, record_from_obj
from producer.submit import Checked, Problems, Resolver, to_job


def test_check_text_names_what_is_wrong() -> None:
    assert check_text("fine", 100) is None
    assert check_text(42, 100) == "'text' must be a string, got int"
    assert check_text(" \n", 100) == "'text' is empty or whitespace only"
    assert check_text("a\x00b", 100) == "'text' contains NUL characters"
    assert check_text("\ud800", 100) == "'text' contains unpaired surrogates (not valid Unicode)"
    assert "the limit is 3" in (check_text("éé", 3) or "")  # bytes, not characters


def test_check_id() -> None:
    assert check_id("a1") == ("a1", None) and check_id(7) == ("7", None)
    assert check_id(True)[1] == "'id' must be a string or an integer, got bool"
    assert check_id("x" * 201)[1] == "'id' is longer than 200 characters"
    assert check_id("a\tb")[1] == "'id' contains control characters"
    assert "reserved" in (check_id("invalid@x")[1] or "")


def test_record_from_obj_keeps_metadata_and_derives_ids() -> None:
    rec = record_from_obj({"id": "a", "text": "Body.", "url": "u"}, "f.jsonl", 3, 100)
    assert (rec.job_id, rec.text, rec.metadata, rec.derived, rec.place) == ("a", "Body.", {"url": "u"}, False, "3")
    derived = record_from_obj({"text": "Body."}, "f.jsonl", 4, 100)
    assert derived.job_id == content_id("Body.") and derived.derived
    bad = record_from_obj({"id": "b"}, "f.jsonl", 5, 100)
    assert bad.error is not None and str(bad.error) == "f.jsonl:5 (id 'b'): 'text' is missing"
    assert bad.invalid_id == "invalid@f.jsonl:5"


def test_iter_jsonl_reports_each_bad_line_and_skips_blank_ones() -> None:
    data = b'{"id": "a", "text": "ok"}\n\nnot json\n{"id": "c", "text": "caf\xe9"}\n"a string"\n'
    recs = list(iter_jsonl(io.BytesIO(data), "in.jsonl", 1000))
    assert [r.line for r in recs] == [1, 3, 4, 5]
    assert recs[0].error is None
    assert [r.error.reason if r.error else None for r in recs[1:]] == [
        "invalid JSON: Expecting value at column 1",
        "invalid UTF-8 at byte 24 of the line",
        "expected a JSON object, got str",
    ]


def test_iter_jsonl_skips_an_oversized_line_without_holding_it() -> None:
    big = json.dumps({"text": "x" * 5000}).encode() + b"\n" + b'{"text": "after"}\n'
    recs = list(iter_jsonl(io.BytesIO(big), "in.jsonl", 100))
    assert recs[0].error is not None and "line is" in recs[0].error.reason and recs[1].text == "after"


def test_directory_records(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("Second.")
    (tmp_path / "a.md").write_text("First.")
    (tmp_path / "skip.csv").write_text("no")
    (tmp_path / "bad.txt").write_bytes(b"\xff")
    recs = list(reader.iter_directory(tmp_path, 1000))
    assert [(r.job_id, r.place, r.error is None) for r in recs] == [
        ("a", "a.md", True),
        ("b", "b.txt", True),
        ("bad", "bad.txt", False),
    ]


def test_id_index_finds_repeats_in_eight_bytes_an_id() -> None:
    index = IdIndex()
    for job_id in ["a", "b", "a", "c", "b", "a"]:
        index.add(job_id)
    assert index.repeated() == {id_hash("a"), id_hash("b")}
    assert IdIndex().repeated() == set()


def rec(job_id: str, line: int, text: str = "t", derived: bool = False) -> Record:
    return Record("in.jsonl", line, job_id, text, {}, None, derived, str(line))


def test_resolver_numbers_repeated_texts_and_refuses_repeated_ids() -> None:
    h = content_id("same")
    checked = Checked(
        repeated_ids={id_hash("x")},
        repeated_texts={id_hash(h)},
        conflicts={id_hash("y"): "id 'y' is already in batch b with a different text"},
    )
    resolve = Resolver(checked).resolve
    assert [resolve(rec(h, n, "same", derived=True)).job_id for n in (1, 2, 3)] == [h, f"{h}-2", f"{h}-3"]
    assert resolve(rec("x", 4)).error is None
    dup = resolve(rec("x", 7))
    assert dup.error is not None and dup.error.reason == "duplicate id 'x': first seen at line 4"
    conflict = resolve(rec("y", 8))
    assert conflict.error is not None and "different text" in conflict.error.reason


def test_to_job_keeps_digest_and_origin() -> None:
    job = to_job(rec("a", 12, "Body text."), 2)
    assert (job.article.digest, job.article.origin) == (digest("Body text."), "2:12")
    bad = to_job(Record.invalid("in.jsonl", 9, "q", "'text' is missing"), 0)
    assert bad.job_id == "invalid@in.jsonl:9" and bad.error == "'text' is missing"


def test_problems_count_all_and_list_the_first_hundred() -> None:
    problems = Problems()
    for n in range(150):
        problems.add(Record.invalid("f", n + 1, None, "bad").error)  # type: ignore[arg-type]
    assert problems.count == 150 and len(problems.listed) == 100


@pytest.mark.parametrize("typo", ["--mod", "--max-w", "--batch", "--skip"])
def test_a_mistyped_option_is_an_error_never_an_abbreviation(typo: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["submit", "in.jsonl", typo, "x"])
    assert exit_.value.code == 2 and f"unrecognized arguments: {typo}" in capsys.readouterr().err
