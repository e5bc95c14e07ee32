"""Result export: a registry of row writers, shared by `summarize results`/`submit --out` and `Batch.export`.

A format is one `register(Format(...))`: its name (what `--format` and `Batch.export(format=)` take), the
file suffixes that name it (`Batch.export` infers the format from them), and a writer class that
`RowWriter` drives:

    class ParquetWriter:
        def __init__(self, stream: IO[bytes], options: Options) -> None: ...   # header, data_fields
        def write(self, row: dict[str, Any]) -> None: ...                       # one public row dict
        def close(self) -> None: ...                                            # a footer; not the stream

    register(Format("parquet", (".parquet",), ParquetWriter, binary=True))

The rows a writer gets are public row dicts (JobResult.to_dict's shape) with the status already as
`summarize status` names it; a format that can't be appended to (a footer) says appendable=False, and
`results --follow --out` refuses it.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import gzip
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Protocol, runtime_checkable

import orjson

from contract.errors import ConfigError
from contract.job import unfinished
from contract.record import COLUMNS, JobResult

if TYPE_CHECKING:
    from .api import Batch

#: a result row's status as `summarize status` counts it: a job waiting for its retry's time (deferred)
#: or for its paused batch's resume (parked) is queued there, so it is queued in the rows too
ROW_STATUS = {"deferred": "queued", "parked": "queued"}
#: ROW_STATUS for the columnar path, whose statuses are UTF-8 bytes (contract/record.py public_columns)
_ROW_STATUS_BYTES = {k.encode(): v.encode() for k, v in ROW_STATUS.items()}


@dataclass(frozen=True)
class Options:
    """What a writer may need beyond the rows; a new format's option goes here, with a default."""

    #: a JSON-schema batch's top-level answer fields (CSV: one `data.<field>` column each)
    data_fields: tuple[str, ...] = ()
    #: False when appending to a file that has its header already (`results --follow --out`)
    header: bool = True
    #: a JSON-schema batch's schema (Parquet: `data` as a struct of its fields when every one maps to a type)
    json_schema: Mapping[str, Any] | None = None


class Writer(Protocol):
    """One format's writer, made as `writer(stream, options)` (a text stream, or binary for binary=True)."""

    def write(self, row: dict[str, Any]) -> None: ...

    def close(self) -> None:
        """Finish the file (a footer, a last row group); the stream stays open: its opener closes it."""


@runtime_checkable
class ColumnWriter(Writer, Protocol):
    """A writer of a columnar format (Format.columnar): it takes pages of columns as well as rows."""

    def write_columns(self, cols: Mapping[str, list[Any]]) -> None: ...


@dataclass(frozen=True)
class Format:
    name: str
    #: lower-case, with the dot; the longest one that ends a file's name wins (".csv.gz" before ".gz")
    suffixes: tuple[str, ...]
    #: made as writer(stream, options): a class, usually
    writer: Callable[[Any, Options], Writer]
    #: the stream is opened "wb" (stdout: sys.stdout.buffer); else text, UTF-8, newline="" (csv's own \r\n)
    binary: bool = False
    #: rows go on at the end of an existing file, as `results --follow --out` does on a resume
    appendable: bool = True
    #: rows may carry metadata as an orjson.Fragment of its stored JSON, for orjson to write out unparsed
    raw_metadata: bool = False
    #: the writer also takes pages of columns (write_columns, contract/record.py public_columns): export()
    #: gives it those instead of row dicts
    columnar: bool = False
    help: str = ""


FORMATS: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    """Add a format; a name or suffix another format has already is a mistake, refused."""
    if fmt.name in FORMATS:
        raise ValueError(f"format {fmt.name!r} is registered already")
    for suffix in fmt.suffixes:
        if not suffix.startswith(".") or suffix != suffix.lower():
            raise ValueError(f"format {fmt.name!r}: suffix {suffix!r} must be lower case and start with '.'")
        owner = next((f.name for f in FORMATS.values() if suffix in f.suffixes), None)
        if owner:
            raise ValueError(f"format {fmt.name!r}: suffix {suffix!r} belongs to {owner!r}")
    FORMATS[fmt.name] = fmt
    return fmt


def names() -> list[str]:
    """The registered format names, in registration order (jsonl first: the default)."""
    return list(FORMATS)


def get(name: str | Format) -> Format:
    if isinstance(name, Format):
        return name
    try:
        return FORMATS[name]
    except KeyError:
        raise ConfigError(f"unknown format {name!r}: one of {', '.join(FORMATS)}") from None


def infer(path: str | os.PathLike[str]) -> Format | None:
    """The format a file's suffix names (case-insensitive), or None."""
    name = os.path.basename(os.fspath(path)).lower()
    found = [(len(s), f) for f in FORMATS.values() for s in f.suffixes if name.endswith(s) and len(name) > len(s)]
    return max(found, key=lambda pair: pair[0])[1] if found else None


def resolve(path: str | os.PathLike[str] | None, format: str | Format | None = None) -> Format:
    """The format given, else the one the path's suffix names; stdout (None or '-') defaults to jsonl."""
    if format is not None:
        return get(format)
    if path is None or os.fspath(path) == "-":
        return FORMATS["jsonl"]
    inferred = infer(path)
    if inferred is None:
        known = ", ".join(f"{f.name} ({' '.join(f.suffixes)})" for f in FORMATS.values())
        raise ConfigError(f"{os.fspath(path)}: no format has this suffix; give the format: {known}")
    return inferred


# --------------------------------------------------------------------------- the writers


class JsonLinesWriter:
    """One JSON object a line, as orjson writes it (stored metadata passed through unparsed)."""

    def __init__(self, stream: IO[str], options: Options) -> None:
        self.out = stream

    def write(self, row: dict[str, Any]) -> None:
        self.out.write(orjson.dumps(row).decode("utf-8") + "\n")

    def close(self) -> None:
        pass


CSV_FIELDS = [
    "id",
    "status",
    "summary",
    "error",
    "error_type",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_usd",
    "cached",
    "chunks",
    "attempts",
    "checks_flags",
    "checks_copied",
    "metadata",
]


class CsvWriter:
    """CSV_FIELDS (usage flattened, metadata as JSON), then a structured answer's fields as `data.<field>`."""

    def __init__(self, stream: IO[str], options: Options) -> None:
        self.data_fields = list(options.data_fields)
        self.fieldnames = CSV_FIELDS + [f"data.{f}" for f in self.data_fields]
        self._csv = csv.DictWriter(stream, fieldnames=self.fieldnames)
        if options.header:
            self._csv.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        self._csv.writerow(self._flat(row))

    def close(self) -> None:
        pass

    def _flat(self, row: dict[str, Any]) -> dict[str, Any]:
        row = dict(row)
        usage = row.pop("usage") or {}
        row.update({k: usage.get(k, "") for k in ("prompt_tokens", "completion_tokens", "total_tokens")})
        data = row["data"] if isinstance(row.get("data"), dict) else {}
        row["metadata"] = json.dumps(row.get("metadata") or {}, ensure_ascii=False)
        checks = row.get("checks")  # the checks' flags as one ;-separated cell, the copied share beside it
        row["checks_flags"] = ";".join(checks["flags"]) if checks else None
        row["checks_copied"] = checks["copied"] if checks else None
        for name in self.data_fields:
            value = data.get(name)
            row[f"data.{name}"] = (
                value
                if isinstance(value, str | int | float)
                else ("" if value is None else json.dumps(value, ensure_ascii=False))
            )
        return {k: "" if row.get(k) is None else row[k] for k in self.fieldnames}


register(
    Format(
        "jsonl",
        (".jsonl", ".ndjson"),
        JsonLinesWriter,
        raw_metadata=True,
        help="one JSON object a job",
    )
)
register(Format("csv", (".csv",), CsvWriter, help="one row a job; a structured answer's fields as data.<field>"))


class _CompressedJsonLines:
    """The JSON lines jsonl writes, through a compressor, lines gathered so it is called once a megabyte."""

    def __init__(self, stream: IO[bytes], options: Options) -> None:
        self.out = self.compressor(stream)
        self._lines: list[bytes] = []
        self._size = 0

    def compressor(self, stream: IO[bytes]) -> IO[bytes]:
        raise NotImplementedError

    def write(self, row: dict[str, Any]) -> None:
        line = orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE)
        self._lines.append(line)
        self._size += len(line)
        if self._size >= 1 << 20:
            self._drain()

    def _drain(self) -> None:
        self.out.write(b"".join(self._lines))
        self._lines, self._size = [], 0

    def close(self) -> None:
        self._drain()
        self.out.close()  # the compressor's end (gzip's trailer, zstd's frame end); the stream stays open


class GzipJsonLinesWriter(_CompressedJsonLines):
    def compressor(self, stream: IO[bytes]) -> IO[bytes]:
        # mtime 0: the same rows give the same bytes
        return gzip.GzipFile(fileobj=stream, mode="wb", compresslevel=6, mtime=0)  # type: ignore[return-value]


class ZstdJsonLinesWriter(_CompressedJsonLines):
    def compressor(self, stream: IO[bytes]) -> IO[bytes]:
        import zstandard

        writer: IO[bytes] = zstandard.ZstdCompressor(level=3).stream_writer(stream, closefd=False)  # type: ignore[assignment]
        return writer


for _name, _suffixes, _writer in (
    ("jsonl.gz", (".jsonl.gz", ".ndjson.gz"), GzipJsonLinesWriter),
    ("jsonl.zst", (".jsonl.zst", ".ndjson.zst"), ZstdJsonLinesWriter),
):
    # Not appendable: a compressed stream cut back to a cursor's offset can't be read on from there.
    register(
        Format(_name, _suffixes, _writer, binary=True, appendable=False, raw_metadata=True, help=f"jsonl, {_name[6:]}")
    )

#: the Parquet file's columns, in order: the public row's (contract/record.py COLUMNS, which the columnar
#: path builds), the same for every batch (a structured answer's `data` is its JSON unless its schema maps)
_INT_COLUMNS = ("prompt_tokens", "completion_tokens", "total_tokens", "chunks", "attempts")
PARQUET_COLUMNS: tuple[tuple[str, str], ...] = tuple(
    (name, {"cost_usd": "float64", "cached": "bool_"}.get(name, "int64" if name in _INT_COLUMNS else "string"))
    for name in COLUMNS
)
#: rows a Parquet row group holds: the writer keeps no more than one group's rows in memory
PARQUET_ROW_GROUP = 10_000
_USAGE = ("prompt_tokens", "completion_tokens", "total_tokens")


class ParquetWriter:
    """PARQUET_COLUMNS (usage flattened; data and metadata as JSON text), a row group every PARQUET_ROW_GROUP rows.

    Rows are kept as they come and turned into columns a group at a time (pyarrow converts the dicts; only the
    JSON columns are made here): no per-row work beyond an append, so it keeps up with orjson's JSON lines."""

    def __init__(self, stream: IO[bytes], options: Options) -> None:
        import pyarrow  # only a Parquet export pays for it
        import pyarrow.parquet as pq

        self._pa = pyarrow
        #: a structured answer's type: a struct of the JSON schema's fields, else (None) its JSON text
        self._data = arrow_type(options.json_schema) if options.json_schema else None
        self.schema = pyarrow.schema(
            [
                (name, self._data if name == "data" and self._data is not None else getattr(pyarrow, kind)())
                for name, kind in PARQUET_COLUMNS
            ]
        )
        # Dictionaries and min/max statistics only where they pay: a summary or an id is unique to its row.
        self._writer = pq.ParquetWriter(
            stream, self.schema, use_dictionary=list(_DICTIONARY), write_statistics=list(_STATISTICS)
        )
        self._rows: list[dict[str, Any]] = []
        self._pages: list[Mapping[str, list[Any]]] = []
        self._paged = 0
        usage = pyarrow.struct([self.schema.field(name) for name in _USAGE])
        self._struct = pyarrow.struct(
            [pyarrow.field("usage", usage) if name == "usage" else self.schema.field(name) for name in _STRUCT_FIELDS]
        )

    def write(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        if len(self._rows) >= PARQUET_ROW_GROUP:
            self._group()

    def write_columns(self, cols: Mapping[str, list[Any]]) -> None:
        """A page of rows as columns (contract/record.py public_columns: text as UTF-8 bytes, metadata its
        stored JSON). Export's path: pyarrow makes each column from a list, with no dict a row, which is what
        makes a Parquet export faster than a JSON lines one (docs/formats.md)."""
        self._pages.append(cols)
        self._paged += len(cols["id"])
        if self._paged >= PARQUET_ROW_GROUP:
            self._column_group()

    def _column_group(self) -> None:
        if not self._pages:
            return
        pa, pages = self._pa, self._pages
        by_name: dict[str, Any] = {}
        for name, kind in PARQUET_COLUMNS:
            values = pages[0][name] if len(pages) == 1 else [v for page in pages for v in page[name]]
            if name == "status":
                by_name[name] = pa.array([_ROW_STATUS_BYTES.get(v, v) for v in values], pa.binary()).view(pa.string())
            elif name == "data":
                by_name[name] = self._data_column(values)
            elif name == "checks":
                by_name[name] = _checks_column(pa, values)
            elif name in _BYTES_TEXT:
                # Written from Python strings (or Lua's literals), so valid UTF-8: viewed as text as they are,
                # not checked again byte by byte (that check was a third of the column's cost).
                by_name[name] = pa.array(values, pa.binary()).view(pa.string())
            else:
                by_name[name] = pa.array(values, getattr(pa, kind)())
        arrays = [by_name[name] for name, _ in PARQUET_COLUMNS]
        self._writer.write_batch(pa.record_batch(arrays, schema=self.schema))
        self._pages, self._paged = [], 0
        pa.default_memory_pool().release_unused()

    def _group(self) -> None:
        if not self._rows:
            return
        pa, rows, dumps = self._pa, self._rows, orjson.dumps
        # The plain fields and usage in one conversion (pyarrow reads the dicts), flattened into columns.
        plain = pa.array(rows, type=self._struct).flatten()
        by_name = dict(zip(self._struct.names, plain, strict=True))
        by_name.update(zip(_USAGE, by_name.pop("usage").flatten(), strict=True))
        # JSON text as UTF-8 bytes (pyarrow takes them for a string column). orjson writes a Fragment inside
        # a list six times faster than one on its own, hence the brackets cut off.
        by_name["metadata"] = pa.array([dumps([r["metadata"] or {}])[1:-1] for r in rows], type=pa.string())
        by_name["data"] = self._data_column([r.get("data") for r in rows])
        by_name["checks"] = _checks_column(pa, [r.get("checks") for r in rows])
        arrays = [by_name[name] for name, _ in PARQUET_COLUMNS]
        self._writer.write_batch(pa.record_batch(arrays, schema=self.schema))
        self._rows = []
        # Give the group's buffers back: pyarrow's pool would keep them, memory growing with the row groups.
        pa.default_memory_pool().release_unused()

    def _data_column(self, values: list[Any]) -> Any:
        pa = self._pa
        if self._data is None:
            return pa.array([None if v is None else orjson.dumps(v) for v in values], pa.string())
        try:
            return pa.array(values, type=self._data)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
            # An answer the schema's types can't hold (the worker validates answers, so a schema changed by
            # `retry` or a hand-written row): that row's data is null, the others keep theirs.
            return pa.array([self._one(v) for v in values], type=self._data)

    def _one(self, value: Any) -> Any:
        try:
            self._pa.array([value], type=self._data)
        except (self._pa.ArrowInvalid, self._pa.ArrowTypeError, TypeError, ValueError):
            return None
        return value

    def close(self) -> None:
        self._group()
        self._column_group()
        self._writer.close()  # the footer; a file-like stream given to pyarrow stays open


_JSON_SCALARS = {"string": "string", "integer": "int64", "number": "float64", "boolean": "bool_"}


def arrow_type(schema: Mapping[str, Any]) -> Any:
    """The Arrow type of values a JSON schema describes, or None when a part of it has no one type (a union,
    an untyped field, an object without properties): the whole answer is then written as its JSON text."""
    import pyarrow as pa

    kind = schema.get("type")
    if isinstance(kind, list):  # ["string", "null"]: nullable anyway
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    if kind in _JSON_SCALARS:
        return getattr(pa, _JSON_SCALARS[kind])()
    if kind == "array" and isinstance(schema.get("items"), Mapping):
        item = arrow_type(schema["items"])
        return None if item is None else pa.list_(item)
    props = schema.get("properties")
    if kind == "object" and isinstance(props, Mapping) and props:
        fields = [(name, arrow_type(sub) if isinstance(sub, Mapping) else None) for name, sub in props.items()]
        if any(t is None for _, t in fields):
            return None
        return pa.struct(fields)
    return None


_DICTIONARY = ("status", "error_type", "model")
#: the text columns public_columns gives as UTF-8 bytes
_BYTES_TEXT = ("summary", "error", "error_type", "model", "metadata")
_STATISTICS = ("id", "status", *_USAGE, "cost_usd", "cached", "chunks", "attempts")
#: the columns pyarrow takes from the row dicts as they are: PARQUET_COLUMNS with usage as the row's one struct
#: (flattened after) and without the JSON columns, which are made apart
_STRUCT_FIELDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        "usage" if name in _USAGE else name for name, _ in PARQUET_COLUMNS if name not in ("data", "metadata", "checks")
    )
)


def _checks_column(pa: Any, values: list[Any]) -> Any:
    """The rows' `checks` as JSON text ({"flags": [...], "copied": 0.42}; null when not checked)."""
    return pa.array([None if v is None else orjson.dumps(v) for v in values], pa.string())


register(
    Format(
        "parquet",
        (".parquet", ".pq"),
        ParquetWriter,
        binary=True,
        appendable=False,
        raw_metadata=True,
        columnar=True,
        help="columns: usage flattened, data and metadata as JSON text; a row group a 10,000 rows",
    )
)


# --------------------------------------------------------------------------- driving a writer


class RowWriter:
    """A format's writer fed rows as the store gives them (JobResults or row dicts), counting them."""

    def __init__(
        self,
        out: IO[Any],
        fmt: str | Format,
        header: bool = True,
        data_fields: Sequence[str] = (),
        json_schema: Mapping[str, Any] | None = None,
    ) -> None:
        self.format = get(fmt)
        self.out, self.written = out, 0
        self._writer: Writer = self.format.writer(out, Options(tuple(data_fields), header, json_schema))

    def write(self, r: JobResult | dict[str, Any]) -> None:
        """One row: a JobResult, or its dict form (the export path builds those straight from Redis)."""
        row = r.to_dict() if isinstance(r, JobResult) else r
        if row["status"] in ROW_STATUS:
            row = {**row, "status": ROW_STATUS[row["status"]]}
        self._writer.write(row)
        self.written += 1

    def close(self) -> None:
        self._writer.close()

    def flush(self) -> int:
        """Flush to disk; returns the file's size (what a cursor records)."""
        self.out.flush()
        with contextlib.suppress(OSError, ValueError):
            os.fsync(self.out.fileno())
        try:
            return int(self.out.tell())
        except (OSError, ValueError):
            return 0


def write_rows(
    rows: Iterable[JobResult | dict[str, Any]],
    out: IO[Any],
    fmt: str | Format,
    data_fields: Sequence[str] = (),
    json_schema: Mapping[str, Any] | None = None,
) -> int:
    """Every row to `out` in one format, finished; returns how many."""
    writer = RowWriter(out, fmt, data_fields=data_fields, json_schema=json_schema)
    for r in rows:
        writer.write(r)
    writer.close()
    return writer.written


def data_fields(batch: Batch) -> list[str]:
    """The top-level fields of the batch's JSON schema (none for plain summaries)."""
    schema = json_schema(batch) or {}
    props = schema.get("properties")
    return list(props) if isinstance(props, dict) else []


def json_schema(batch: Batch) -> dict[str, Any] | None:
    """The batch's JSON schema (None for plain summaries)."""
    return batch.client.store.spec(batch.id).json_schema


# --------------------------------------------------------------------------- files


def why(exc: OSError, path: str) -> str:
    """An open's error as the one line a user reads."""
    parent = os.path.dirname(os.path.abspath(path))
    # Only when it is so: a file system that takes no new files (/proc) says "not found" too.
    if isinstance(exc, FileNotFoundError) and not os.path.isdir(parent):
        return f"no such directory {parent}"
    return (exc.strerror or str(exc)).lower()


def open_file(path: str, fmt: str | Format, append: bool = False, label: str = "") -> IO[Any]:
    """`path` opened for a format's writer, or ConfigError naming it (`label`: the option that gave it)."""
    mode = ("a" if append else "w") + ("b" if get(fmt).binary else "")
    try:
        if "b" in mode:
            return open(path, mode)
        return open(path, mode, encoding="utf-8", newline="")
    except OSError as exc:
        raise ConfigError(f"{label}{path}: {why(exc, path)}") from None


def stdout(fmt: str | Format) -> IO[Any]:
    """Standard output as a format's writer takes it (a binary one gets the buffer, after the text written)."""
    if get(fmt).binary:
        sys.stdout.flush()
        return sys.stdout.buffer
    return sys.stdout


@contextlib.contextmanager
def output(path: str | None, fmt: str | Format, label: str = "") -> Iterator[IO[Any]]:
    """The file (or stdout for None or '-'; left open, flushed)."""
    if path is None or path == "-":
        out = stdout(fmt)
        try:
            yield out
        finally:
            out.flush()
        return
    with open_file(path, fmt, label=label) as f:
        yield f


@contextlib.contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """The rows of an export are acyclic and freed by reference counting; the cyclic collector would only
    walk every object the imports made, again and again as rows are allocated (a sixth of the time)."""
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@dataclass(frozen=True)
class Exported:
    """What an export wrote: `rows` rows of `format` to `path` ('-': stdout), and the batch's status then."""

    path: str
    format: str
    rows: int
    status: dict[str, Any] = field(compare=False, repr=False)

    @property
    def unfinished(self) -> int:
        """Jobs not finished when the export ended: their rows say queued or running."""
        return unfinished(self.status)


#: what `results --status` and `Batch.export(status=)` take: the statuses a row can say
ROW_STATUSES = ("done", "failed", "cancelled", "queued", "running")


def export(
    batch: Batch,
    path: str | os.PathLike[str] | None,
    fmt: str | Format,
    label: str = "",
    statuses: Sequence[str] | None = None,
    flagged: bool = False,
) -> Exported:
    """Every job of the batch in input order to `path` (None or '-': stdout); only those whose row says
    one of `statuses` when it is given, and only those some check flagged with `flagged`."""
    form = get(fmt)
    target = "-" if path is None else os.fspath(path)
    wanted: frozenset[str] | None = None
    if statuses is not None:
        unknown = sorted(set(statuses) - set(ROW_STATUSES))
        if unknown:
            raise ConfigError(f"unknown status {', '.join(unknown)}: one of {', '.join(ROW_STATUSES)}")
        wanted = frozenset(statuses)
    with output(target, form, label) as out, no_cyclic_gc():
        if form.columnar and not flagged:  # the flagged few are filtered as rows
            n = _write_columns(batch, out, form, wanted)
        else:
            rows: Iterable[dict[str, Any]] = batch.client.store.rows(batch.id, raw_metadata=form.raw_metadata)
            if wanted is not None:
                rows = (r for r in rows if ROW_STATUS.get(r["status"], r["status"]) in wanted)
            if flagged:
                rows = (r for r in rows if r.get("checks") and r["checks"]["flags"])
            n = write_rows(rows, out, form, data_fields(batch), json_schema(batch))
    return Exported(target, form.name, n, batch.status())


def _write_columns(batch: Batch, out: IO[Any], form: Format, wanted: frozenset[str] | None) -> int:
    """export()'s path for a columnar format: the store's pages of columns, filtered by row status."""
    writer = form.writer(out, Options((), True, json_schema(batch)))
    assert isinstance(writer, ColumnWriter)
    n = 0
    wanted_bytes = {w.encode() for w in wanted or ()}
    for cols in batch.client.store.column_pages(batch.id):
        if wanted is not None:
            keep = [i for i, s in enumerate(cols["status"]) if _ROW_STATUS_BYTES.get(s, s) in wanted_bytes]
            if len(keep) < len(cols["status"]):
                cols = {name: [values[i] for i in keep] for name, values in cols.items()}
        if cols["id"]:
            writer.write_columns(cols)
            n += len(cols["id"])
    writer.close()
    return n
