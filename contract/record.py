"""How a job is stored in Redis, packed small: its article while unfinished, its final record after.

Measured on news articles (bench/memory.py): zstd at level 3 compresses as well as zlib (about half
the size for a 4 KB article) at a fifth of the CPU, and with a small dictionary of news English
(contract/data/news.zdict, scripts/train_zdict.py) 10-15% better again on articles it was not trained
on, more on summaries: texts and summaries are stored that way. Each blob starts with a one-byte
codec tag, so the choice can change without rewriting stored data.

The final record is a msgpack array (Lua reads and writes it with cmsgpack), laid out as
contract/schema.py FINAL: read and built here by field name, never by position.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import msgpack
import zstandard

from .checks import NOT_CHECKED, Checks
from .schema import ARTICLE, FINAL

_RAW, _ZSTD, _ZSTD_DICT = b"r", b"s", b"d"
#: below this many bytes compression doesn't pay for its frame header
_MIN_COMPRESS = 32
_DICT = zstandard.ZstdCompressionDict(
    (Path(__file__).resolve().parent / "data" / "news.zdict").read_bytes(), dict_type=zstandard.DICT_TYPE_FULLDICT
)
# Without the frame's checksum, content size and dictionary id (the tag says which dictionary): 8 bytes less.
_compressor = zstandard.ZstdCompressor(
    level=3, dict_data=_DICT, write_checksum=False, write_content_size=False, write_dict_id=False
)
_batch_compressor = zstandard.ZstdCompressor(
    level=3, dict_data=_DICT, write_checksum=False, write_content_size=False, write_dict_id=False
)
_decompressor = zstandard.ZstdDecompressor(dict_data=_DICT)
_plain_decompressor = zstandard.ZstdDecompressor()


def compress(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) < _MIN_COMPRESS:
        return _RAW + raw
    packed = _compressor.compress(raw)
    return _ZSTD_DICT + packed if len(packed) < len(raw) else _RAW + raw


def compress_many(texts: Sequence[str]) -> list[bytes]:
    """compress() of each text, byte for byte, in one call that holds no GIL while zstd works: a submit
    compresses a chunk this way in its storing thread while the reading thread parses the next one."""
    raws = [t.encode("utf-8") for t in texts]
    big: list[bytes | bytearray | memoryview] = [r for r in raws if len(r) >= _MIN_COMPRESS]
    # Its own compressor: a ZstdCompressor is not safe to share between threads.
    frames = _batch_compressor.multi_compress_to_buffer(big, threads=1) if big else None
    out, k = [], 0
    for raw in raws:
        if len(raw) < _MIN_COMPRESS:
            out.append(_RAW + raw)
            continue
        assert frames is not None
        packed = frames[k].tobytes()
        k += 1
        out.append(_ZSTD_DICT + packed if len(packed) < len(raw) else _RAW + raw)
    return out


def decompress(blob: bytes) -> str:
    tag, body = blob[:1], blob[1:]
    if tag == _ZSTD_DICT:
        # No content size in the frame: the output bound is generous (news compresses well under 10:1).
        return _decompressor.decompressobj().decompress(body).decode("utf-8")
    if tag == _ZSTD:
        return _plain_decompressor.decompress(body).decode("utf-8")
    if tag == _RAW:
        return body.decode("utf-8")
    raise ValueError(f"unknown text codec {tag!r}")


def pack(obj: Any) -> bytes:
    """msgpack as Redis' Lua cmsgpack reads it: it knows no bin type, so bytes go as raw strings."""
    packed: bytes = msgpack.packb(obj, use_bin_type=False)
    return packed


def unpack(blob: bytes) -> Any:
    """The other way: every string comes back as bytes; callers decode the text ones."""
    return msgpack.unpackb(blob, raw=True)


def text(value: Any) -> str:
    """A string Redis handed back as bytes (or anything else) as str."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _s(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else ("" if value is None else str(value))


#: what str.split() splits ASCII text on besides the space (str.isspace in the ASCII range)
_ASCII_SPACES = b"\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f"
_TO_SPACE = bytes.maketrans(_ASCII_SPACES, b" " * len(_ASCII_SPACES))


def digest(text: str) -> str:
    """What makes two articles "the same text": NFC, whitespace collapsed. 32 hex characters."""
    if text.isascii():
        # The same bytes as the general way below (NFC leaves ASCII alone), without splitting the text into
        # hundreds of word objects: that split was 4/5 of a submit's hashing time (bench/submit.py).
        normal = text.encode("ascii").translate(_TO_SPACE)
        while b"  " in normal:
            normal = normal.replace(b"  ", b" ")
        return hashlib.blake2b(normal.strip(b" "), digest_size=16).hexdigest()
    joined = " ".join(unicodedata.normalize("NFC", text).split())
    return hashlib.blake2b(joined.encode("utf-8"), digest_size=16).hexdigest()


# ---- the article of an unfinished job ---------------------------------------------------------------


@dataclass(frozen=True)
class Article:
    digest: str
    #: "SOURCE_INDEX:LINE", SOURCE_INDEX into the batch's sources list: where the record came from
    origin: str
    text: str

    def pack(self) -> bytes:
        return self.pack_compressed(compress(self.text))

    def pack_compressed(self, compressed: bytes) -> bytes:
        """pack() with the text compressed already (compress_many: a chunk at a time)."""
        return pack(ARTICLE.row(digest=self.digest, origin=self.origin, text=compressed))

    @classmethod
    def unpack(cls, blob: bytes) -> Article:
        a = ARTICLE.read(unpack(blob))
        return cls(_s(a["digest"]), _s(a["origin"]), decompress(a["text"]))

    @staticmethod
    def where(blob: bytes) -> tuple[str, str]:
        """(digest, origin) of a packed article, without decompressing its text."""
        a = ARTICLE.read(unpack(blob))
        return _s(a["digest"]), _s(a["origin"])


# ---- the final record -------------------------------------------------------------------------------

DONE, FAILED, CANCELLED = "done", "failed", "cancelled"


@dataclass(frozen=True)
class Final:
    """What a finished job keeps: about 400 bytes for an 80-word summary."""

    status: str
    digest: str = ""
    origin: str = ""
    summary: str | None = None
    error: str | None = None
    error_type: str | None = None
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 0
    cached: bool = False
    chunks: int = 0
    #: paid answers that could not be used (cut off, empty, not JSON)
    unusable: int = 0
    finished_ms: int = 0
    cost_usd: float | None = None
    #: the result-cache key of a done answer (its article digest under the answer's fingerprint): a cache
    #: pointer to this record is trusted only if the key matches (contract/lua/_lib.lua cached_record)
    cache_key: str = ""
    #: the checks of a done answer (contract/checks.py): a bitmask of FLAGS, and the copied share in whole
    #: percent (-1: not checked)
    flags: int = 0
    copied: int = NOT_CHECKED

    def pack(self) -> bytes:
        """The one Python writer of a final record (Lua's is _lib.lua pack_final)."""
        # Its fields are FINAL's, by name (tests/test_schema.py): only the ones stored otherwise are changed.
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(
            summary=compress(self.summary) if self.summary is not None else b"",
            error=self.error or "",
            error_type=self.error_type or "",
            model=self.model or "",
            cost_usd=-1.0 if self.cost_usd is None else self.cost_usd,
        )
        return pack(FINAL.row(**values))

    @classmethod
    def unpack(cls, blob: bytes) -> Final:
        # records of older versions carry only the first fields: the rest read as None
        f = FINAL.read(unpack(blob))
        cost = f["cost_usd"]
        return cls(
            status=_s(f["status"]),
            digest=_s(f["digest"]),
            origin=_s(f["origin"]),
            summary=decompress(f["summary"]) if f["summary"] else None,
            error=_s(f["error"]) or None,
            error_type=_s(f["error_type"]) or None,
            model=_s(f["model"]) or None,
            prompt_tokens=f["prompt_tokens"] or 0,
            completion_tokens=f["completion_tokens"] or 0,
            attempts=f["attempts"] or 0,
            cached=bool(f["cached"]),
            chunks=f["chunks"] or 0,
            unusable=f["unusable"] or 0,
            finished_ms=f["finished_ms"] or 0,
            cost_usd=None if cost is None or cost < 0 else float(cost),
            cache_key=_s(f["cache_key"]),
            flags=f["flags"] or 0,
            copied=NOT_CHECKED if f["copied"] is None else f["copied"],
        )

    @staticmethod
    def flags_of(blob: bytes) -> int:
        """The checks' flags of a packed final record of a done answer (0: none, or not done)."""
        f = FINAL.read(unpack(blob))
        return int(f["flags"] or 0) if f["status"] == DONE.encode() else 0

    @staticmethod
    def where(blob: bytes) -> tuple[str, str]:
        """(digest, origin) of a packed final record, without decompressing its summary."""
        f = FINAL.read(unpack(blob))
        return _s(f["digest"]), _s(f["origin"])


# ---- the public row ---------------------------------------------------------------------------------


def public_row(job_id: str, blob: bytes, metadata: Any, structured: bool = False) -> dict[str, Any]:
    """The row `summarize results` prints for a finished job, straight from its packed record (the
    export path: no objects in between, tens of thousands of rows a second). `metadata` is a dict, or
    an orjson.Fragment of its stored JSON when the row is only written out again."""
    f = FINAL.read(unpack(blob))
    status = f["status"].decode()
    pt, ct = f["prompt_tokens"] or 0, f["completion_tokens"] or 0
    summary = decompress(f["summary"]) if f["summary"] else None
    cost = f["cost_usd"]
    return {
        "id": job_id,
        "status": status,
        "summary": summary,
        "data": json.loads(summary) if structured and summary and status == DONE else None,
        "error": f["error"].decode("utf-8", "replace") if f["error"] else None,
        "error_type": f["error_type"].decode() if f["error_type"] else None,
        "model": f["model"].decode("utf-8", "replace") if f["model"] else None,
        "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}
        if pt or ct or status == DONE
        else None,
        "cost_usd": None if cost is None or cost < 0 else float(cost),
        "cached": bool(f["cached"]),
        "chunks": f["chunks"] or 0,
        "attempts": f["attempts"] or 0,
        "checks": Checks(f["flags"] or 0, NOT_CHECKED if f["copied"] is None else f["copied"]).public(),
        "metadata": metadata,
    }


#: the columns of public_columns, in the order of a row's keys (usage flattened)
COLUMNS = (
    "id",
    "status",
    "summary",
    "data",
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
    "checks",
    "metadata",
)


def decompress_bytes(blob: bytes) -> bytes:
    """decompress() without the decode: UTF-8 bytes for a writer that takes them as they are (pyarrow)."""
    tag, body = blob[:1], blob[1:]
    if tag == _ZSTD_DICT:
        return _decompressor.decompressobj().decompress(body)
    if tag == _ZSTD:
        return _plain_decompressor.decompress(body)
    if tag == _RAW:
        return body
    raise ValueError(f"unknown text codec {tag!r}")


def public_columns(
    ids: Sequence[bytes],
    finals: Sequence[bytes | None],
    metas: Sequence[bytes | None],
    states: dict[str, str],
    structured: bool = False,
) -> dict[str, list[Any]]:
    """public_row of a page of jobs, as columns (COLUMNS, usage flattened into its three counts): the
    Parquet export's path, with no dict a row. Text columns hold UTF-8 bytes (status and the summary
    too, still encoded), metadata its stored JSON (b"{}" for none); an unfinished job (no final) takes its
    status from `states`, as public_row's caller does. tests/test_record.py holds it equal to public_row."""
    width = len(FINAL.fields)
    records: list[Sequence[Any]] = []
    for raw_id, final in zip(ids, finals, strict=True):
        if final is None:
            # What public_row's caller makes of an unfinished job: its status, and nothing else yet.
            records.append(_unfinished(states.get(raw_id.decode("utf-8"), "missing").encode()))
            continue
        f = unpack(final)
        # An older, shorter record: the fields it lacks are None (Layout.read).
        records.append(f if len(f) >= width else [*f, *([None] * (width - len(f)))])
    if not records:
        return {name: [] for name in COLUMNS}
    # One transposition in C instead of a dozen appends a row (a longer, newer record's extra fields drop).
    by_field = dict(zip(FINAL.fields, zip(*records, strict=False), strict=False))
    done = DONE.encode()
    status = list(by_field["status"])
    summary = [decompress_bytes(b) if b else None for b in by_field["summary"]]
    has_usage = [
        bool(p or c or s == done)
        for s, p, c in zip(status, by_field["prompt_tokens"], by_field["completion_tokens"], strict=True)
    ]
    pt = [(p or 0) if u else None for p, u in zip(by_field["prompt_tokens"], has_usage, strict=True)]
    ct = [(c or 0) if u else None for c, u in zip(by_field["completion_tokens"], has_usage, strict=True)]
    return {
        "id": [i.decode("utf-8") for i in ids],
        "status": status,
        "summary": summary,
        "data": [json.loads(t) if t and s == done else None for t, s in zip(summary, status, strict=True)]
        if structured
        else [None] * len(ids),
        # public_row decodes these with errors="replace": a Lua string.sub can cut a character in two
        "error": [_utf8(v) if v else None for v in by_field["error"]],
        "error_type": [v or None for v in by_field["error_type"]],
        "model": [_utf8(v) if v else None for v in by_field["model"]],
        "prompt_tokens": pt,
        "completion_tokens": ct,
        "total_tokens": [(p or 0) + (c or 0) if u else None for p, c, u in zip(pt, ct, has_usage, strict=True)],
        "cost_usd": [None if c is None or c < 0 else float(c) for c in by_field["cost_usd"]],
        "cached": [bool(c) for c in by_field["cached"]],
        "chunks": [c or 0 for c in by_field["chunks"]],
        "attempts": [a or 0 for a in by_field["attempts"]],
        # the row's `checks`, as public_row has them (None unless checked)
        "checks": [
            _checks(fl or 0, NOT_CHECKED if cp is None else cp)
            for fl, cp in zip(by_field["flags"], by_field["copied"], strict=True)
        ],
        "metadata": [m or b"{}" for m in metas],
    }


def _utf8(raw: bytes) -> bytes:
    """`raw` when it is valid UTF-8, else its bytes as public_row's decode("utf-8", "replace") gives them: a
    byte-level cut (Lua's string.sub of a long error, _lib.lua land) must not reach a writer that takes the
    bytes as text unchecked (Parquet), where it would make a file no reader can decode."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace").encode("utf-8")
    return raw


def _checks(flags: int, copied: int) -> dict[str, Any] | None:
    return Checks(flags, copied).public()


def _unfinished(status: bytes) -> list[Any]:
    """The positional record public_columns reads for a job with no final record yet."""
    values: dict[str, Any] = dict.fromkeys(FINAL.fields)
    values["status"] = status
    return [values[name] for name in FINAL.fields]


@dataclass(frozen=True)
class JobResult:
    """One line of `summarize results`: stable public field names."""

    id: str
    status: str
    summary: str | None
    error: str | None
    model: str | None
    usage: dict[str, int] | None
    attempts: int
    metadata: dict[str, Any] = field(default_factory=dict)
    error_type: str | None = None
    cached: bool = False
    cost_usd: float | None = None
    chunks: int = 0
    #: the structured answer when the batch asked for a JSON schema (`summary` keeps its JSON text)
    data: Any = None
    #: the checks of a done answer: {"flags": [names], "copied": 0.0-1.0}; None when not checked
    checks: dict[str, Any] | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> JobResult:
        return cls(**row)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "summary": self.summary,
            "data": self.data,
            "error": self.error,
            "error_type": self.error_type,
            "model": self.model,
            "usage": self.usage,
            "cost_usd": self.cost_usd,
            "cached": self.cached,
            "chunks": self.chunks,
            "attempts": self.attempts,
            "checks": self.checks,
            "metadata": self.metadata,
        }
