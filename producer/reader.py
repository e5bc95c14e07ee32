"""Reading and validating input records, streamed: JSONL files, stdin, directories of .txt/.md, iterables.

Every problem becomes an InputError naming the source, line and id, so a user can fix the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

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
        return cls(source, line, job_id, "", {}, InputError(source, line, job_id, reason), place=place or str(line))

    @property
    def invalid_id(self) -> str:
        """The id an invalid record is kept under (--skip-invalid): unique per source and place."""
        return f"{INVALID_ID_PREFIX}{self.source}:{self.place or self.line}"


def content_id(text: str) -> str:
    """Id of a record that brings none: the same text always gets the same id, so resubmits dedupe."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def check_text(text: Any, max_bytes: int) -> str | None:
    """Why `text` can't be summarized, or None when it can."""
    if not isinstance(text, str):
        return f"'text' must be a string, got {type(text).__name__}"
    if not text.strip():
        return "'text' is empty or whitespace only"
    if "\x00" in text:
        return "'text' contains NUL characters"
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return "'text' contains unpaired surrogates (not valid Unicode)"
    if size > max_bytes:
        return f"article is {size} bytes; the limit is {max_bytes} (SUMMARIZE_MAX_ARTICLE_BYTES)"
    return None


def check_id(raw: Any) -> tuple[str | None, str | None]:
    """(id, error) for a record's 'id' field."""
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        return None, f"'id' must be a string or an integer, got {type(raw).__name__}"
    job_id = str(raw)
    if not job_id.strip():
        return None, "'id' is empty"
    if len(job_id) > MAX_ID_CHARS:
        return None, f"'id' is longer than {MAX_ID_CHARS} characters"
    if _BAD_ID_CHARS.search(job_id):
        return None, "'id' contains control characters"
    if job_id.startswith(INVALID_ID_PREFIX):
        return None, f"ids starting with {INVALID_ID_PREFIX!r} are reserved for invalid records"
    try:
        job_id.encode("utf-8")
    except UnicodeEncodeError:
        return None, "'id' is not valid Unicode (unpaired surrogate)"
    return job_id, None


def record_from_obj(obj: Any, source: str, line: int, max_bytes: int, check_unicode: bool = True) -> Record:
    def bad(reason: str, job_id: str | None = None) -> Record:
        return Record.invalid(source, line, job_id, reason)

    if not isinstance(obj, dict):
        return bad(f"expected a JSON object, got {type(obj).__name__}")
    job_id: str | None = None
    if "id" in obj and obj["id"] is not None:
        job_id, id_error = check_id(obj["id"])
        if id_error:
            return bad(id_error)
    if "text" not in obj:
        return bad("'text' is missing", job_id)
    text = obj["text"]
    reason = check_text(text, max_bytes)
    if reason:
        return bad(reason, job_id)
    metadata = {k: v for k, v in obj.items() if k not in ("id", "text")}
    try:
        if check_unicode and metadata:
            json.dumps(metadata, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, TypeError, ValueError) as exc:
        keys = ", ".join(sorted(metadata))
        return bad(f"metadata ({keys}) can't be stored: {type(exc).__name__}: {exc}"[:300], job_id)
    return Record(source, line, job_id or content_id(text), text, metadata, derived=job_id is None, place=str(line))


def iter_jsonl(stream: IO[bytes], source: str, max_bytes: int) -> Iterator[Record]:
    limit = max_bytes * _LINE_SLACK + 4096
    line_no = 0
    while True:
        raw = stream.readline(limit + 1)
        if not raw:
            return
        line_no += 1
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
            obj = json.loads(decoded)
        except json.JSONDecodeError as exc:
            yield Record.invalid(
                source, line_no, None, f"invalid JSON: {exc.msg.removesuffix(' at')} at column {exc.colno}"
            )
            continue
        # Unpaired surrogates in parsed JSON can only come from \uD800-\uDFFF escapes in the line.
        yield record_from_obj(obj, source, line_no, max_bytes, check_unicode=b"\\ud" in raw.lower())


def iter_directory(path: Path, max_bytes: int) -> Iterator[Record]:
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in (".txt", ".md"))
    source = str(path)
    for number, file in enumerate(files, start=1):
        yield _file_record(file, source, number, max_bytes)


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
            text = file.read_bytes().decode("utf-8")
            reason = check_text(text, max_bytes)
    except UnicodeDecodeError as exc:
        reason = f"invalid UTF-8 at byte {exc.start}"
    except OSError as exc:  # unreadable: a bad record like any other, listed with the rest
        reason = f"can't read the file: {unreadable(exc)}"
    if reason:
        return Record.invalid(str(file), 0, checked_id, reason, place=file.name)
    return Record(source, number, checked_id, text, {"file": file.name}, place=file.name)


def as_object(item: str | dict[str, Any]) -> Any:
    """An API item as a record object: a plain string is the text."""
    return {"text": item} if isinstance(item, str) else item


def iter_items(items: Iterable[str | dict[str, Any]], max_bytes: int) -> Iterator[Record]:
    for number, item in enumerate(items, start=1):
        yield record_from_obj(as_object(item), "<items>", number, max_bytes)


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


@contextmanager
def opened(path: str, max_bytes: int) -> Iterator[Source]:
    """A re-readable source for PATH: validation reads it once, enqueueing a second time."""
    if path == "-":
        # stdin can be read only once: spool it so both passes see the same bytes.
        with tempfile.TemporaryFile() as spool:
            shutil.copyfileobj(sys.stdin.buffer, spool, 1 << 20)
            yield Source(lambda: _rewound(spool, "<stdin>", max_bytes))
        return
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except OSError as exc:  # missing, a path through a file, no permission on a directory on the way
        raise InputError(path, 0, None, unreadable(exc)) from None
    if stat.S_ISDIR(mode):
        try:
            next(p.iterdir(), None)
        except OSError as exc:
            raise InputError(path, 0, None, f"can't list the directory: {unreadable(exc)}") from None
        yield Source(lambda: iter_directory(p, max_bytes))
    elif stat.S_ISREG(mode):
        yield Source(lambda: _from_file(p, max_bytes))
    elif stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        # A pipe (`<(zcat f.gz)`, a FIFO) can be read only once: spooled, as stdin is.
        with tempfile.TemporaryFile() as spool:
            try:
                with open(p, "rb") as stream:
                    shutil.copyfileobj(stream, spool, 1 << 20)
            except OSError as exc:
                raise InputError(path, 0, None, f"can't read: {unreadable(exc)}") from None
            yield Source(lambda: _rewound(spool, path, max_bytes))
    else:
        raise InputError(path, 0, None, "not a file, a directory or a pipe")


@contextmanager
def opened_items(items: Iterable[str | dict[str, Any]], max_bytes: int) -> Iterator[Source]:
    """A re-readable source for API items: a sequence is read twice, anything else spooled first."""
    if isinstance(items, Sequence):
        yield Source(lambda: iter_items(items, max_bytes))
        return
    # A generator can be read only once: spool it as JSONL so both passes see the same records.
    with tempfile.TemporaryFile() as spool:
        for item in items:
            spool.write(json.dumps(as_object(item), ensure_ascii=False).encode() + b"\n")
        yield Source(lambda: _rewound(spool, "<items>", max_bytes))


class Source:
    """Makes a fresh record iterator per pass over the input."""

    def __init__(self, make: Any) -> None:
        self._make = make

    def records(self) -> Iterator[Record]:
        result: Iterator[Record] = self._make()
        return result


def _rewound(stream: IO[bytes], source: str, max_bytes: int) -> Iterator[Record]:
    stream.seek(0)
    return iter_jsonl(stream, source, max_bytes)


def _from_file(path: Path, max_bytes: int) -> Iterator[Record]:
    source = os.fspath(path)
    try:
        f = open(path, "rb", buffering=1 << 20)  # noqa: SIM115 - closed below, its errors named
    except OSError as exc:
        raise InputError(source, 0, None, f"can't read: {unreadable(exc)}") from None
    with f:
        lines = iter_jsonl(f, source, max_bytes)
        while True:
            try:
                rec = next(lines)
            except StopIteration:
                return
            except OSError as exc:  # a read failing half-way (an I/O error, a file on a dead mount)
                raise InputError(source, 0, None, f"can't read: {unreadable(exc)}") from None
            yield rec


def unreadable(exc: OSError) -> str:
    """Why a path can't be read, in words (no Python exception names)."""
    return (exc.strerror or type(exc).__name__).lower()
