"""Reading and validating input records, streamed: JSON lines (plain, gzip or zstd), CSV/TSV, Parquet,
a single .txt/.md article, directories of .txt/.md, stdin, iterables.

Every problem becomes an InputError naming the source, line (a CSV file's line, a Parquet file's row) and
id, so a user can fix the file. `Fields` maps the article's columns (--text-field, --id-field); every
other column is metadata.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
import os
import re
import shlex
import shutil
import stat
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import zstandard

from contract.errors import InputError

MAX_ID_CHARS = 200
_BAD_ID_CHARS = re.compile(r"[\x00-\x1f\x7f]")
#: ids of invalid records kept as failed jobs (--skip-invalid) start with this; valid ids may not
INVALID_ID_PREFIX = "invalid@"
# json.dumps escapes a non-ASCII letter as \uXXXX: 6 bytes for at most 3 in UTF-8, 6 for 1 control char.
_LINE_SLACK = 6


@dataclass(frozen=True)
class Record:
    """One input record: valid when error is None."""

    source: str
    line: int
    job_id: str | None
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    error: InputError | None = None
    #: the id was derived from the text (the record brought none)
    derived: bool = False
    #: where in its source: the line number, or for a directory the file name
    place: str = ""

    @classmethod
    def invalid(cls, source: str, line: int, job_id: str | None, reason: str, place: str = "") -> Record:
        # A file name that is not UTF-8 (latin-1 from an old system) would put a surrogate into the invalid
        # record's id and error, which Redis can't be given: its bytes are shown as \xNN escapes instead.
        source, place = shown(source), shown(place)
        return cls(source, line, job_id, "", {}, InputError(source, line, job_id, reason), place=place or str(line))

    @property
    def invalid_id(self) -> str:
        """The id an invalid record is kept under (--skip-invalid): unique per source and place."""
        return f"{INVALID_ID_PREFIX}{self.source}:{self.place or self.line}"


def shown(name: str) -> str:
    """A path as text that is valid Unicode: the undecodable bytes of a file name as \\xNN escapes."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        pass
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that came from no undecodable byte
        raw = name.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "backslashreplace")


def content_id(text: str) -> str:
    """Id of a record that brings none: the same text always gets the same id, so resubmits dedupe."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def check_text(text: Any, max_bytes: int, name: str = "text") -> str | None:
    """Why `text` can't be summarized, or None when it can (`name`: the field it came from)."""
    if not isinstance(text, str):
        return f"'{name}' must be a string, got {type(text).__name__}"
    if not text.strip():
        return f"'{name}' is empty or whitespace only"
    if "\x00" in text:
        return f"'{name}' contains NUL characters"
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return f"'{name}' contains unpaired surrogates (not valid Unicode)"
    if size > max_bytes:
        return f"article is {size} bytes; the limit is {max_bytes} (SUMMARIZE_MAX_ARTICLE_BYTES)"
    return None


def check_id(raw: Any, name: str = "id") -> tuple[str | None, str | None]:
    """(id, error) for a record's id field (`name`: which one)."""
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        return None, f"'{name}' must be a string or an integer, got {type(raw).__name__}"
    job_id = str(raw)
    if not job_id.strip():
        return None, f"'{name}' is empty"
    if len(job_id) > MAX_ID_CHARS:
        return None, f"'{name}' is longer than {MAX_ID_CHARS} characters"
    if _BAD_ID_CHARS.search(job_id):
        return None, f"'{name}' contains control characters"
    if job_id.startswith(INVALID_ID_PREFIX):
        return None, f"ids starting with {INVALID_ID_PREFIX!r} are reserved for invalid records"
    try:
        job_id.encode("utf-8")
    except UnicodeEncodeError:
        return None, f"'{name}' is not valid Unicode (unpaired surrogate)"
    return job_id, None


@dataclass(frozen=True)
class Fields:
    """Which fields (columns) hold an article's text and id; every other one is metadata."""

    text: str = "text"
    id: str = "id"
    #: the id field was named (--id-field): a table without that column is an error, not derived ids
    id_given: bool = False

    @classmethod
    def of(cls, text_field: str | None = None, id_field: str | None = None) -> Fields:
        for option, value in (("--text-field", text_field), ("--id-field", id_field)):
            if value is not None and not value.strip():
                raise InputError(option, 0, None, "the field name is empty")
        if text_field is not None and text_field == id_field:
            raise InputError("--text-field", 0, None, f"{text_field!r} can't be both the text and the id")
        return cls(text_field or "text", id_field or "id", id_field is not None)


DEFAULT_FIELDS = Fields()


def record_from_obj(
    obj: Any, source: str, line: int, max_bytes: int, check_unicode: bool = True, fields: Fields = DEFAULT_FIELDS
) -> Record:
    def bad(reason: str, job_id: str | None = None) -> Record:
        return Record.invalid(source, line, job_id, reason)

    if not isinstance(obj, dict):
        return bad(f"expected a JSON object, got {type(obj).__name__}")
    job_id: str | None = None
    if obj.get(fields.id) is not None:
        job_id, id_error = check_id(obj[fields.id], fields.id)
        if id_error:
            return bad(id_error)
    if fields.text not in obj:
        return bad(missing(fields), job_id)
    text = obj[fields.text]
    reason = check_text(text, max_bytes, fields.text)
    if reason:
        return bad(reason, job_id)
    metadata = {k: v for k, v in obj.items() if k != fields.id and k != fields.text}
    try:
        if check_unicode and metadata:
            try:
                json.dumps(metadata, ensure_ascii=False, allow_nan=False).encode("utf-8")
            except ValueError as exc:
                if "Out of range float" not in str(exc):
                    raise
                # NaN (a pandas frame's missing float) as null, as JSON has it; see _no_constant
                metadata = {k: plain_floats(v) for k, v in metadata.items()}
    except (UnicodeEncodeError, TypeError, ValueError) as exc:
        keys = ", ".join(sorted(metadata))
        return bad(f"metadata ({keys}) can't be stored: {type(exc).__name__}: {exc}"[:300], job_id)
    return Record(source, line, job_id or content_id(text), text, metadata, derived=job_id is None, place=str(line))


def plain_floats(value: Any) -> Any:
    """`value` with NaN and infinities (at any depth of dicts and lists) as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: plain_floats(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_floats(v) for v in value]
    return value


def missing(fields: Fields) -> str:
    return f"'{fields.text}' is missing"


class Reading:
    """One pass over one source: makes its records, and watches for a text field no record has.

    When every record lacks the text field but has another string field, the fix is one option, said
    once (verdict), instead of a hundred lines of "'text' is missing".
    """

    #: records looked at for the field the text is under
    LOOK = 1000

    def __init__(self, source: str, max_bytes: int, fields: Fields = DEFAULT_FIELDS) -> None:
        self.source, self.max_bytes, self.fields = source, max_bytes, fields
        self.records = self.missing = 0
        self.lengths: dict[str, int] = {}
        self._missing = missing(fields)

    def record(self, obj: Any, line: int, check_unicode: bool = True) -> Record:
        rec = record_from_obj(obj, self.source, line, self.max_bytes, check_unicode, self.fields)
        self.records += 1
        if rec.error is not None and rec.error.reason == self._missing and isinstance(obj, dict):
            self.missing += 1
            if self.missing <= self.LOOK:
                for k, v in obj.items():
                    if isinstance(v, str) and k != self.fields.id:
                        self.lengths[k] = self.lengths.get(k, 0) + len(v)
        return rec

    def verdict(self) -> None:
        """Raise the one-line InputError when no record had the text field and another string field is there."""
        if self.records and self.missing == self.records and self.lengths:
            raise InputError(self.source, 0, None, no_text_field(self.fields.text, self.lengths, "record"))


def no_text_field(name: str, lengths: dict[str, int], kind: str) -> str:
    """The sentence for a text field no record (column) has, naming the likeliest one: the longest strings."""
    best = max(lengths, key=lambda k: lengths[k])
    option = shlex.quote(best)
    return (
        f"no {kind} has a '{name}' field; the article text seems to be under '{best}': "
        f"give --text-field {option} (text_field={best!r} in the Python API)"
    )


BOM = b"\xef\xbb\xbf"
_GZIP, _ZSTD, _PARQUET = b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"PAR1"
#: what --input-format takes: a file's format ("text": the whole file is one article)
INPUT_FORMATS = ("jsonl", "csv", "tsv", "parquet", "text")
_SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "text",
    ".md": "text",
}
#: compression is told by the bytes (gzip's and zstd's magic), these only come off the name first
_COMPRESSED = (".gz", ".zst", ".zstd")
_KIND = {"jsonl": "JSON lines", "csv": "CSV", "tsv": "TSV", "parquet": "Parquet", "text": "plain text"}
#: rows a Parquet file is read in (a batch of a row group: memory stays flat in the file's size)
PARQUET_BATCH_ROWS = 2048
_HEADER_CELL = re.compile(rb"[\w.\- ]{1,100}")


def input_format(path: str) -> str | None:
    """The format a file's name says (a .gz or .zst after it is compression), or None."""
    name = os.path.basename(path).lower()
    for suffix in _COMPRESSED:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return _SUFFIXES.get(os.path.splitext(name)[1])


def _stem(path: str) -> str:
    name = os.path.basename(path)
    for suffix in _COMPRESSED:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return os.path.splitext(name)[0]


def other_format(kind: str, read_as: str) -> str:
    """The one line for a file plainly of another format than it is read as."""
    suffix = next(s for s, k in _SUFFIXES.items() if k == kind)
    return f"this looks like a {_KIND[kind]} file, not {read_as}: give --input-format {kind} (or name it *{suffix})"


def _looks_like(head: bytes) -> str | None:
    """Parquet by its magic, CSV/TSV by a header row of names and a second line as wide; else None."""
    if head.startswith(_PARQUET):
        return "parquet"
    lines = head.removeprefix(BOM).split(b"\n", 2)
    first = lines[0].strip()
    if not first or first[:1] in (b"{", b"[", b'"'):
        return None
    for delim, kind in ((b"\t", "tsv"), (b",", "csv")):
        cells = [c.strip().strip(b'"') for c in first.split(delim)]
        second = lines[1] if len(lines) > 1 else b""
        if second.lstrip()[:1] == b"{":
            return None  # a bad first line in JSON lines, not a header
        if len(cells) >= 2 and all(_HEADER_CELL.fullmatch(c) for c in cells) and second.count(delim) >= len(cells) - 1:
            return kind
    return None


def _peek(stream: IO[bytes], n: int) -> bytes:
    peek = getattr(stream, "peek", None)
    return bytes(peek(n)[:n]) if peek is not None else b""


def _decompressed(stream: IO[bytes], stack: ExitStack) -> IO[bytes]:
    """`stream`, or a reader of what it holds when that is gzip or zstd (told by the magic bytes)."""
    head = _peek(stream, 4)
    if head.startswith(_GZIP):
        unzipped: IO[bytes] = stack.enter_context(gzip.GzipFile(fileobj=stream, mode="rb"))  # type: ignore[arg-type]
        return unzipped
    if head.startswith(_ZSTD):
        cut = zstd_cut_short(stream)
        if cut:
            raise zstandard.ZstdError(cut)
        raw = zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True, closefd=False)
        return stack.enter_context(io.BufferedReader(raw, 1 << 20))  # type: ignore[arg-type]
    return stream


def _no_constant(name: str) -> None:
    """NaN and Infinity (Python's json writes them) as null: they are not JSON, and stored as they are they
    would come out of `summarize results` as lines no strict parser (jq, JavaScript, Go) reads."""
    return None


_DECODER = json.JSONDecoder(parse_constant=_no_constant)
_SKIPPABLE = range(0x184D2A50, 0x184D2A60)
_ZSTD_MAGIC = 0xFD2FB528


def zstd_cut_short(stream: IO[bytes]) -> str | None:
    """Why the zstd frames of a seekable stream don't end where it does, or None: walked by their headers
    (RFC 8878: frame header, block headers, checksum), nothing decoded, the stream put back where it was.

    zstandard's readers end without a word where a file is cut short (a copy or download stopped half-way):
    the rows after the cut would be lost silently, the last one read half. Damage inside a block is the
    decoder's to find; this only finds the end missing."""
    if not stream.seekable():
        return None
    start = stream.tell()
    size = stream.seek(0, os.SEEK_END)
    pos = start

    def take(n: int) -> bytes:
        nonlocal pos
        stream.seek(pos)
        got = stream.read(n)
        pos += len(got)
        return got

    try:
        frame = 0
        while pos < size:
            frame += 1
            magic = take(4)
            if len(magic) < 4:
                return f"cut short in the header of zstd frame {frame}"
            kind = int.from_bytes(magic, "little")
            if kind in _SKIPPABLE:
                length = take(4)
                pos += int.from_bytes(length, "little")
            elif kind != _ZSTD_MAGIC:
                return None  # not zstd from here on: the decoder says what it is
            else:
                fhd = take(1)
                if not fhd:
                    return f"cut short in the header of zstd frame {frame}"
                flags = fhd[0]
                single = flags >> 5 & 1
                pos += (0 if single else 1) + (0, 1, 2, 4)[flags & 3] + (single, 2, 4, 8)[flags >> 6]
                while pos <= size:
                    header = take(3)
                    if len(header) < 3:
                        break
                    block = int.from_bytes(header, "little")
                    pos += 1 if block >> 1 & 3 == 1 else block >> 3  # an RLE block holds one byte
                    if block & 1:  # the frame's last block
                        pos += 4 if flags >> 2 & 1 else 0  # its checksum
                        break
                else:
                    return f"cut short in zstd frame {frame}"
                if pos > size or len(header) < 3:
                    return f"cut short in zstd frame {frame}: its end is missing"
        return f"cut short in zstd frame {frame}: its end is missing" if pos > size else None
    finally:
        stream.seek(start)


def iter_jsonl(
    stream: IO[bytes], source: str, max_bytes: int, fields: Fields = DEFAULT_FIELDS, reading: Reading | None = None
) -> Iterator[Record]:
    rd = reading or Reading(source, max_bytes, fields)
    limit = max_bytes * _LINE_SLACK + 4096
    line_no = 0
    while True:
        raw = stream.readline(limit + 1)
        if not raw:
            rd.verdict()
            return
        line_no += 1
        if line_no == 1:
            raw = raw.removeprefix(BOM)  # an editor's byte-order mark: not part of the JSON
        if len(raw) > limit and not raw.endswith(b"\n"):
            # Skip the rest of a huge line without holding it in memory.
            size = len(raw)
            while raw and not raw.endswith(b"\n"):
                raw = stream.readline(1 << 20)
                size += len(raw)
            err = f"line is {size} bytes; an article may be at most {max_bytes} bytes (SUMMARIZE_MAX_ARTICLE_BYTES)"
            yield Record.invalid(source, line_no, None, err)
            continue
        if not raw.strip():
            continue  # blank lines are common at the end of files
        if b"\x00" in raw:
            yield Record.invalid(source, line_no, None, "line contains NUL bytes")
            continue
        try:
            decoded = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield Record.invalid(source, line_no, None, f"invalid UTF-8 at byte {exc.start} of the line")
            continue
        try:
            obj = _DECODER.decode(decoded)
        except json.JSONDecodeError as exc:
            yield Record.invalid(
                source, line_no, None, f"invalid JSON: {exc.msg.removesuffix(' at')} at column {exc.colno}"
            )
            continue
        # Unpaired surrogates in parsed JSON can only come from \uD800-\uDFFF escapes in the line.
        yield rd.record(obj, line_no, check_unicode=b"\\ud" in raw.lower())


def _columns_checked(rd: Reading, names: Sequence[str], sample: Callable[[], list[dict[str, Any]]]) -> None:
    """A table must have the text's column (and a named id's): else one line naming the likeliest one."""
    f = rd.fields
    shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    if f.text not in names:
        lengths: dict[str, int] = {}
        for obj in sample():
            for k, v in obj.items():
                if isinstance(v, str) and k != f.id:
                    lengths[k] = lengths.get(k, 0) + len(v)
        lengths = {k: n for k, n in lengths.items() if n}
        if lengths:
            reason = no_text_field(f.text, lengths, "column") + f"; its columns: {shown}"
        else:
            reason = f"there is no '{f.text}' column (its columns: {shown}): name the text's with --text-field"
        raise InputError(rd.source, 0, None, reason)
    if f.id_given and f.id not in names:
        raise InputError(rd.source, 0, None, f"there is no '{f.id}' column (--id-field; its columns: {shown})")


def iter_csv(stream: IO[bytes], rd: Reading, delimiter: str = ",") -> Iterator[Record]:
    """CSV (or TSV) with a header row; a record's line is the file line its row starts on (the header is 1)."""
    # Undecodable bytes become surrogates, so one bad row is reported and the rest read on.
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    try:
        csv.field_size_limit(max(csv.field_size_limit(), rd.max_bytes))
        # strict: a quote never closed is an error at its row, not the rest of the file read into that row
        rows = csv.reader(text, delimiter=delimiter, strict=True)
        kind = _KIND["tsv" if delimiter == "\t" else "csv"]
        try:
            header = [h.strip() for h in next(rows)]
        except StopIteration:
            return
        except csv.Error as exc:
            raise InputError(rd.source, 1, None, f"not {kind}: {exc}") from None
        _header_checked(rd, header, kind)
        _columns_checked(rd, header, lambda: _sample_csv(rows, header))
        id_col = rd.fields.id
        while True:
            start = rows.line_num + 1
            try:
                row = next(rows)
            except StopIteration:
                return
            except csv.Error as exc:
                yield Record.invalid(rd.source, start, None, _csv_error(exc))
                continue
            if not row:
                continue  # a blank line
            if len(row) != len(header):
                yield Record.invalid(
                    rd.source, start, None, f"the row has {len(row)} fields; the header has {len(header)}"
                )
                continue
            try:
                "".join(row).encode("utf-8")
            except UnicodeEncodeError:
                yield Record.invalid(rd.source, start, None, "invalid UTF-8 in the row")
                continue
            obj = dict(zip(header, row, strict=True))
            if obj.get(id_col) == "":
                del obj[id_col]  # an empty cell: no id given, one is derived from the text
            yield rd.record(obj, start, check_unicode=False)
    finally:
        text.detach()  # the byte stream is its opener's to close (a spooled stdin is read again)


def _header_checked(rd: Reading, header: list[str], kind: str) -> None:
    """A header row of UTF-8 names, each once: a name given twice would keep only its last column's values."""
    try:
        "".join(header).encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(
            rd.source, 1, None, f"invalid UTF-8 in the header row: save the {kind} file as UTF-8"
        ) from None
    twice = named_twice(header)
    if twice:
        raise InputError(rd.source, 1, None, twice)


def named_twice(names: Sequence[str]) -> str | None:
    """The sentence for a column named twice, or None: a record would keep only the last one's value (the
    article text replaced by a note under the same name), silently."""
    seen: set[str] = set()
    for name in names:
        if name in seen and name:
            return f"the column {name[:100]!r} is there twice: rename one"
        seen.add(name)
    return None


def _sample_csv(rows: Iterator[list[str]], header: list[str]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        out.append(dict(zip(header, row, strict=False)))
        if len(out) >= 50:
            break
    return out


def _csv_error(exc: csv.Error) -> str:
    if "field larger than field limit" in str(exc):
        return "a field is longer than an article may be (SUMMARIZE_MAX_ARTICLE_BYTES)"
    if "unexpected end of data" in str(exc):
        return 'a quoted field opened on this row is never closed (no closing " up to the end of the file)'
    return f"bad CSV: {exc}"


def iter_parquet(src: str | IO[bytes], rd: Reading) -> Iterator[Record]:
    """A Parquet file in batches of PARQUET_BATCH_ROWS rows (never the whole file); a record's line is its row."""
    import pyarrow  # only a Parquet input pays for it
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(src)
    except (pyarrow.ArrowException, OSError) as exc:
        raise InputError(rd.source, 0, None, f"not a readable Parquet file: {exc}") from None
    schema = pf.schema_arrow
    twice = named_twice(schema.names)
    if twice:
        raise InputError(rd.source, 0, None, twice)
    _columns_checked(rd, schema.names, lambda: _sample_parquet(pf))
    simple = (
        pyarrow.types.is_string,
        pyarrow.types.is_large_string,
        pyarrow.types.is_integer,
        pyarrow.types.is_floating,
        pyarrow.types.is_boolean,
        pyarrow.types.is_null,
    )
    # Timestamps, dates, decimals, bytes in metadata: written as JSON has them (ISO 8601, strings).
    convert = [f.name for f in schema if f.name != rd.fields.text and not any(t(f.type) for t in simple)]
    # pandas writes a missing float as NaN: null, as JSON has it (NaN stored would come out as a bare NaN)
    convert += [f.name for f in schema if pyarrow.types.is_floating(f.type) and f.name != rd.fields.text]
    row = 0
    try:
        # A reader per row group: one over the whole file holds on to what it read (memory grows with rows).
        for group in range(pf.num_row_groups):
            for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group], use_threads=False):
                yield from _parquet_records(batch.to_pylist(), convert, rd, row)
                row += batch.num_rows
    except (pyarrow.ArrowException, OSError) as exc:  # a damaged page is an OSError (ArrowIOError's kin)
        reason = " ".join(str(exc).split())[:300]
        raise InputError(rd.source, row + 1, None, f"can't read the Parquet file from this row: {reason}") from None
    rd.verdict()


def _parquet_records(objs: list[dict[str, Any]], convert: list[str], rd: Reading, row: int) -> Iterator[Record]:
    for obj in objs:
        row += 1
        for name in convert:
            obj[name] = plain(obj[name])
        yield rd.record(obj, row, check_unicode=False)


def _sample_parquet(pf: Any) -> list[dict[str, Any]]:
    for batch in pf.iter_batches(batch_size=50):
        rows: list[dict[str, Any]] = batch.to_pylist()
        return rows
    return []


def plain(value: Any) -> Any:
    """A Parquet value as JSON holds it: datetimes and dates in ISO 8601, decimals and bytes as strings,
    NaN and infinities null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | int | bool):
        return value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    isoformat = getattr(value, "isoformat", None)
    if callable(isoformat):
        return isoformat()
    if hasattr(value, "total_seconds"):
        return value.total_seconds()
    return str(value)


def _text_record(stream: IO[bytes], source: str, name: str | None, max_bytes: int) -> Record:
    """A whole file as one article: its id the file name's stem (none from stdin: derived from the text)."""
    job_id: str | None = None
    if name is not None:
        job_id, id_error = check_id(_stem(name))
        if id_error:
            return Record.invalid(source, 0, None, f"file name: {id_error}", place=name)
    raw = stream.read(max_bytes + 1)
    reason: str | None = None
    if len(raw) > max_bytes:
        reason = f"article is more than {max_bytes} bytes (SUMMARIZE_MAX_ARTICLE_BYTES)"
    else:
        try:
            text = raw.removeprefix(BOM).decode("utf-8")
            reason = check_text(text, max_bytes)
        except UnicodeDecodeError as exc:
            reason = f"invalid UTF-8 at byte {exc.start}"
    if reason:
        return Record.invalid(source, 0, job_id, reason, place=name or "")
    metadata = {"file": name} if name else {}
    return Record(source, 1, job_id or content_id(text), text, metadata, derived=job_id is None, place=name or "1")


def _from_stream(stream: IO[bytes], fmt: str | None, rd: Reading, name: str | None = None) -> Iterator[Record]:
    """Records of a seekable byte stream at its start, in `fmt` (None: by its bytes; JSON lines else)."""
    head = _peek(stream, 8)
    if head.startswith(_PARQUET) and fmt in (None, "parquet"):
        yield from iter_parquet(stream, rd)
        return
    if fmt == "parquet":
        raise InputError(rd.source, 0, None, "not a Parquet file (it does not start with PAR1)")
    with ExitStack() as stack:
        data = _decompressed(stream, stack)
        head = _peek(data, 1 << 16)
        if fmt in (None, "jsonl"):
            kind = _looks_like(head)
            if kind is not None:
                raise InputError(rd.source, 0, None, other_format(kind, "JSON lines"))
            yield from iter_jsonl(data, rd.source, rd.max_bytes, reading=rd)
        elif fmt in ("csv", "tsv"):
            if head.startswith(_PARQUET):
                raise InputError(rd.source, 0, None, other_format("parquet", _KIND[fmt]))
            if head.removeprefix(BOM).lstrip()[:1] == b"{":
                raise InputError(rd.source, 0, None, other_format("jsonl", _KIND[fmt]))
            yield from iter_csv(data, rd, "\t" if fmt == "tsv" else ",")
            rd.verdict()
        else:
            yield _text_record(data, rd.source, name, rd.max_bytes)


def scan_directory(path: Path) -> tuple[list[Path], int, int]:
    """A directory's .txt/.md files (sorted), and how many subdirectories and other files it skips."""
    files, dirs, others = [], 0, 0
    for p in path.iterdir():
        if p.is_dir():
            dirs += 1
        elif p.is_file() and p.suffix.lower() in (".txt", ".md"):
            files.append(p)
        else:
            others += 1
    return sorted(files), dirs, others


def iter_directory(path: Path, max_bytes: int) -> Iterator[Record]:
    files, _, _ = scan_directory(path)
    source = str(path)
    first: dict[str, str] = {}
    for number, file in enumerate(files, start=1):
        rec = _file_record(file, source, number, max_bytes)
        if rec.error is None and rec.job_id is not None:
            seen = first.setdefault(rec.job_id, file.name)
            if seen != file.name:
                # Two files of one name (a.txt, a.md) give one id: named by their files, not lines.
                reason = f"duplicate id {rec.job_id!r}: {seen} and {file.name} both give it; rename one"
                rec = Record.invalid(str(file), 0, rec.job_id, reason, place=file.name)
        yield rec


def _file_record(file: Path, source: str, number: int, max_bytes: int) -> Record:
    checked_id, id_error = check_id(file.stem)
    if id_error or checked_id is None:
        return Record.invalid(str(file), 0, None, f"file name: {id_error}", place=file.name)
    reason: str | None = None
    try:
        size = file.stat().st_size
        if size > max_bytes:
            reason = f"article is {size} bytes; the limit is {max_bytes} (SUMMARIZE_MAX_ARTICLE_BYTES)"
        else:
            text = file.read_bytes().removeprefix(BOM).decode("utf-8")
            reason = check_text(text, max_bytes)
    except UnicodeDecodeError as exc:
        reason = f"invalid UTF-8 at byte {exc.start}"
    except OSError as exc:  # unreadable: a bad record like any other, listed with the rest
        reason = f"can't read the file: {unreadable(exc)}"
    if reason:
        return Record.invalid(str(file), 0, checked_id, reason, place=file.name)
    return Record(source, number, checked_id, text, {"file": file.name}, place=file.name)


def _skipped(dirs: int, others: int) -> str:
    parts = [f"{dirs} subdirector{'y' if dirs == 1 else 'ies'}"] if dirs else []
    parts += [f"{others} other file{'' if others == 1 else 's'}"] if others else []
    return " and ".join(parts)


def as_object(item: str | dict[str, Any], fields: Fields = DEFAULT_FIELDS) -> Any:
    """An API item as a record object: a plain string is the text."""
    return {fields.text: item} if isinstance(item, str) else item


def iter_items(
    items: Iterable[str | dict[str, Any]], max_bytes: int, fields: Fields = DEFAULT_FIELDS
) -> Iterator[Record]:
    rd = Reading("<items>", max_bytes, fields)
    for number, item in enumerate(items, start=1):
        yield rd.record(as_object(item, fields), number)
    rd.verdict()


class IdIndex:
    """Every id of an input in 8 bytes each (numpy), to find the ones seen twice once the pass is over.

    A dict of ids would take ~100 bytes an id: a gigabyte for ten million articles.
    """

    def __init__(self) -> None:
        self._chunks: list[Any] = []  # numpy arrays of uint64
        self._current: list[int] = []

    def add(self, job_id: str) -> None:
        self._current.append(id_hash(job_id))
        if len(self._current) >= 65536:
            self._flush()

    def _flush(self) -> None:
        import numpy  # only a submit pays for it

        if self._current:
            self._chunks.append(numpy.array(self._current, dtype=numpy.uint64))
            self._current = []

    def repeated(self) -> set[int]:
        """Hashes of ids seen more than once."""
        import numpy

        self._flush()
        if not self._chunks:
            return set()
        ids = numpy.sort(numpy.concatenate(self._chunks))
        return {int(h) for h in numpy.unique(ids[1:][ids[1:] == ids[:-1]])}


def id_hash(job_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(job_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


def _check_format(input_format: str | None) -> None:
    if input_format is not None and input_format not in INPUT_FORMATS:
        raise InputError(
            "--input-format", 0, None, f"unknown format {input_format!r}: one of {', '.join(INPUT_FORMATS)}"
        )


@contextmanager
def opened(
    path: str, max_bytes: int, input_format: str | None = None, fields: Fields = DEFAULT_FIELDS
) -> Iterator[Source]:
    """A re-readable source for PATH: validation reads it once, enqueueing a second time.

    A file's format is `input_format`, else the one its suffix names, else told by its bytes (JSON lines,
    or Parquet by its magic); gzip and zstd compression by its bytes, whatever the name."""
    _check_format(input_format)
    if path == "-":
        # stdin can be read only once: spool it so both passes see the same bytes.
        with tempfile.TemporaryFile() as spool:
            shutil.copyfileobj(sys.stdin.buffer, spool, 1 << 20)
            yield Source(
                lambda: _not_empty("<stdin>", _spooled(spool, "<stdin>", input_format, max_bytes, fields, None))
            )
        return
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except OSError as exc:  # missing, a path through a file, no permission on a directory on the way
        raise InputError(path, 0, None, unreadable(exc)) from None
    if stat.S_ISDIR(mode):
        if input_format not in (None, "text"):
            # A directory's files are each one article (.txt/.md): a format for them would be ignored, silently.
            raise InputError(
                path,
                0,
                None,
                f"a directory is read as one article per .txt or .md file, not as {_KIND[input_format]}: "
                "drop --input-format, or give the file itself",
            )
        try:
            files, dirs, others = scan_directory(p)
        except OSError as exc:
            raise InputError(path, 0, None, f"can't list the directory: {unreadable(exc)}") from None
        skipped = _skipped(dirs, others)
        if not files:
            # An empty batch "finished" at once would only hide the mistake.
            raise InputError(
                path, 0, None, "no .txt or .md files in this directory" + (f" ({skipped} skipped)" if skipped else "")
            )
        notes = [f"{path}: skipped {skipped} (only .txt and .md files are read)"] if skipped else []
        yield Source(lambda: iter_directory(p, max_bytes), notes)
    elif stat.S_ISREG(mode):
        fmt = input_format or input_format_of(path)
        yield Source(lambda: _not_empty(path, _from_file(p, fmt, max_bytes, fields)))
    elif stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        # A pipe (`<(zcat f.gz)`, a FIFO) can be read only once: spooled, as stdin is.
        with tempfile.TemporaryFile() as spool:
            try:
                with open(p, "rb") as stream:
                    shutil.copyfileobj(stream, spool, 1 << 20)
            except OSError as exc:
                raise InputError(path, 0, None, f"can't read: {unreadable(exc)}") from None
            fmt = input_format or input_format_of(path)
            yield Source(lambda: _not_empty(path, _spooled(spool, path, fmt, max_bytes, fields, None)))
    else:
        raise InputError(path, 0, None, "not a file, a directory or a pipe")


def input_format_of(path: str) -> str | None:
    return input_format(path)


@contextmanager
def opened_items(
    items: Iterable[str | dict[str, Any]], max_bytes: int, fields: Fields = DEFAULT_FIELDS
) -> Iterator[Source]:
    """A re-readable source for API items: a sequence is read twice, anything else spooled first."""
    if isinstance(items, Sequence):
        yield Source(lambda: iter_items(items, max_bytes, fields))
        return
    # A generator can be read only once: spool it as JSONL so both passes see the same records.
    with tempfile.TemporaryFile() as spool:
        for item in items:
            spool.write(json.dumps(as_object(item, fields), ensure_ascii=False, default=plain).encode() + b"\n")
        yield Source(lambda: _spooled(spool, "<items>", "jsonl", max_bytes, fields, None))


class Source:
    """Makes a fresh record iterator per pass over the input; `notes` say what the reading skipped."""

    def __init__(self, make: Callable[[], Iterator[Record]], notes: Sequence[str] = ()) -> None:
        self._make = make
        self.notes = list(notes)

    def records(self) -> Iterator[Record]:
        return self._make()


def _spooled(
    spool: IO[bytes], source: str, fmt: str | None, max_bytes: int, fields: Fields, name: str | None
) -> Iterator[Record]:
    spool.seek(0)
    rd = Reading(source, max_bytes, fields)
    if fmt == "parquet" or (fmt is None and _peek(spool, 4) == _PARQUET):
        # pyarrow may close the file it is given: a duplicate of the spool's descriptor, read from the start.
        with os.fdopen(os.dup(spool.fileno()), "rb") as dup:
            dup.seek(0)
            yield from _guarded(source, iter_parquet(dup, rd))
        return
    yield from _guarded(source, _from_stream(spool, fmt, rd, name))


def _from_file(path: Path, fmt: str | None, max_bytes: int, fields: Fields) -> Iterator[Record]:
    source = os.fspath(path)
    rd = Reading(source, max_bytes, fields)
    if fmt == "parquet":
        yield from _guarded(source, iter_parquet(source, rd))
        return
    try:
        f = open(path, "rb", buffering=1 << 20)  # noqa: SIM115 - closed below, its errors named
    except OSError as exc:
        raise InputError(source, 0, None, f"can't read: {unreadable(exc)}") from None
    with f:
        yield from _guarded(source, _from_stream(f, fmt, rd, path.name))


def _not_empty(source: str, records: Iterator[Record]) -> Iterator[Record]:
    """The records of a file (or stdin), or an InputError when it has none: an empty file, a CSV file of its
    header only, a Parquet file of no rows would make an empty batch "finished" at once, hiding the mistake
    (as an empty directory would)."""
    any_record = False
    for rec in records:
        any_record = True
        yield rec
    if not any_record:
        raise InputError(shown(source), 0, None, "no records in it (empty, blank lines or a header row only)")


def _guarded(source: str, records: Iterator[Record]) -> Iterator[Record]:
    """The records, with a read failing half-way (an I/O error, damaged compressed data) as an InputError."""
    while True:
        try:
            rec = next(records)
        except StopIteration:
            return
        except OSError as exc:  # an I/O error, a file on a dead mount; gzip's BadGzipFile is one too
            raise InputError(source, 0, None, f"can't read: {unreadable(exc)}") from None
        except (EOFError, zlib.error, zstandard.ZstdError) as exc:
            raise InputError(source, 0, None, f"the compressed data is damaged or cut short: {exc}") from None
        yield rec


def unreadable(exc: OSError) -> str:
    """Why a path can't be read, in words (no Python exception names)."""
    return (exc.strerror or str(exc) or type(exc).__name__).lower()
