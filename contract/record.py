"""How a job is stored in Redis, packed small: its article while unfinished, its final record after.

Measured on news articles (bench/memory.py): zstd at level 3 compresses as well as zlib (about half
the size for a 4 KB article) at a fifth of the CPU, and with a small dictionary of news English
(contract/data/news.zdict, scripts/train_zdict.py) 10-15% better again on articles it was not trained
on, more on summaries: texts and summaries are stored that way. Each blob starts with a one-byte
codec tag, so the choice can change without rewriting stored data.

The final record is a msgpack array (Lua reads and writes it with cmsgpack); its first three fields
(status, digest, origin) are what scripts look at, the rest is for `summarize results`.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import zstandard

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
_decompressor = zstandard.ZstdDecompressor(dict_data=_DICT)
_plain_decompressor = zstandard.ZstdDecompressor()


def compress(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) < _MIN_COMPRESS:
        return _RAW + raw
    packed = _compressor.compress(raw)
    return _ZSTD_DICT + packed if len(packed) < len(raw) else _RAW + raw


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


def digest(text: str) -> str:
    """What makes two articles "the same text": NFC, whitespace collapsed. 32 hex characters."""
    normal = " ".join(unicodedata.normalize("NFC", text).split())
    return hashlib.blake2b(normal.encode("utf-8"), digest_size=16).hexdigest()


# ---- the article of an unfinished job ---------------------------------------------------------------


@dataclass(frozen=True)
class Article:
    digest: str
    #: "SOURCE_INDEX:LINE", SOURCE_INDEX into the batch's sources list: where the record came from
    origin: str
    text: str

    def pack(self) -> bytes:
        return pack([self.digest, self.origin, compress(self.text)])

    @classmethod
    def unpack(cls, blob: bytes) -> Article:
        d, origin, z = unpack(blob)
        return cls(_s(d), _s(origin), decompress(z))


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

    def pack(self) -> bytes:
        return pack(
            [
                self.status,
                self.digest,
                self.origin,
                compress(self.summary) if self.summary is not None else b"",
                self.error or "",
                self.error_type or "",
                self.model or "",
                self.prompt_tokens,
                self.completion_tokens,
                self.attempts,
                self.cached,
                self.chunks,
                self.unusable,
                self.finished_ms,
                -1.0 if self.cost_usd is None else self.cost_usd,
                self.cache_key,
            ]
        )

    @classmethod
    def unpack(cls, blob: bytes) -> Final:
        f = unpack(blob)
        f += [None] * (16 - len(f))  # records of older versions carry only the first fields
        return cls(
            status=_s(f[0]),
            digest=_s(f[1]),
            origin=_s(f[2]),
            summary=decompress(f[3]) if f[3] else None,
            error=_s(f[4]) or None,
            error_type=_s(f[5]) or None,
            model=_s(f[6]) or None,
            prompt_tokens=f[7] or 0,
            completion_tokens=f[8] or 0,
            attempts=f[9] or 0,
            cached=bool(f[10]),
            chunks=f[11] or 0,
            unusable=f[12] or 0,
            finished_ms=f[13] or 0,
            cost_usd=None if f[14] is None or f[14] < 0 else float(f[14]),
            cache_key=_s(f[15]),
        )


# ---- the public row ---------------------------------------------------------------------------------


def public_row(job_id: str, blob: bytes, metadata: Any, structured: bool = False) -> dict[str, Any]:
    """The row `summarize results` prints for a finished job, straight from its packed record (the
    export path: no objects in between, tens of thousands of rows a second). `metadata` is a dict, or
    an orjson.Fragment of its stored JSON when the row is only written out again."""
    f = unpack(blob)
    if len(f) < 15:
        f += [None] * (15 - len(f))
    status = f[0].decode()
    pt, ct = f[7] or 0, f[8] or 0
    summary = decompress(f[3]) if f[3] else None
    cost = f[14]
    return {
        "id": job_id,
        "status": status,
        "summary": summary,
        "data": json.loads(summary) if structured and summary and status == DONE else None,
        "error": f[4].decode("utf-8", "replace") if f[4] else None,
        "error_type": f[5].decode() if f[5] else None,
        "model": f[6].decode("utf-8", "replace") if f[6] else None,
        "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}
        if pt or ct or status == DONE
        else None,
        "cost_usd": None if cost is None or cost < 0 else float(cost),
        "cached": bool(f[10]),
        "chunks": f[11] or 0,
        "attempts": f[9] or 0,
        "metadata": metadata,
    }


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
            "metadata": self.metadata,
        }
