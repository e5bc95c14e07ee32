"""The fast submit path (issue 21): pass 1 hashes and compresses a clean input on the way, pass 2 only stores it.

What it stores must be what the record path (pass 2 reading the input again) stores, byte for byte, and its
shortcuts (the ASCII digest, compressing a chunk in one call) must give what the general code gives.
"""

from __future__ import annotations

import hashlib
import random
import unicodedata
from pathlib import Path

import redis

from contract.keys import Keys
from contract.record import Article, compress, compress_many, digest, text
from producer import reader
from producer.submit import PREPARE_AFTER, Checker
from scripts.stack import Stack
from tests.conftest import batch_id, isolated_group
from tests.helpers import jl, write_lines


def reference_digest(text: str) -> str:
    """contract.record.digest as it was written first: NFC, whitespace collapsed by str.split."""
    normal = " ".join(unicodedata.normalize("NFC", text).split())
    return hashlib.blake2b(normal.encode("utf-8"), digest_size=16).hexdigest()


def test_ascii_digest_is_the_general_digest() -> None:
    rng = random.Random(21)
    ascii_chars = [chr(i) for i in range(128)]
    spaces = [*" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f", "a", "b", "  "]
    for _ in range(20_000):
        pool = ascii_chars if rng.random() < 0.5 else spaces
        text = "".join(rng.choice(pool) for _ in range(rng.randint(0, 40)))
        assert digest(text) == reference_digest(text), repr(text)
    for text in ("  Two  spaces\n\nand a paragraph.\t", "café au lait", "e\u0301 combining", "\u00a0nbsp\u2003em"):
        assert digest(text) == reference_digest(text)


def test_compress_many_is_compress_of_each() -> None:
    texts = ["", "short", "x" * 31, "x" * 32, "é" * 40, "q9z" * 5, "The council voted on the budget. " * 120]
    assert compress_many(texts) == [compress(t) for t in texts]
    assert compress_many([]) == []


def test_a_clean_input_is_stored_as_the_record_path_stores_it(stack: Stack, redis_url: str, tmp_path: Path) -> None:
    g = isolated_group(stack, redis_url, "http://127.0.0.1:9/v1")  # no worker: what is stored stays as stored
    # More than PREPARE_AFTER: pass 2 reads the first records from the input again and takes the rest prepared.
    n = PREPARE_AFTER + 1200
    records = [{"id": f"p{i}", "text": f"Article {i}.  The harbor plan\n\npassed. " * (1 + i % 7)} for i in range(n)]
    records[PREPARE_AFTER + 3]["url"] = "https://example.com/x"
    records[7]["url"] = "https://example.com/7"
    records += [{"text": "No id: its id comes from the text."}]
    clean = write_lines(tmp_path / "clean.jsonl", *map(jl, records))
    # The same records and one bad line last: pass 1 finds a problem, so pass 2 reads the input again.
    mixed = write_lines(tmp_path / "mixed.jsonl", *map(jl, records), b"{not json\n")
    client = g.client()
    fast, slow = batch_id(), batch_id()
    first_run = client.submit_path(str(clean), batch_id=fast).report
    assert first_run is not None and first_run.enqueued == len(records)
    report = client.submit_path(str(mixed), batch_id=slow, skip_invalid=True).report
    assert report is not None and (report.enqueued, report.invalid) == (len(records), 1)
    keys = Keys(g.settings.key_prefix, g.settings.queue)
    r = redis.Redis.from_url(redis_url)
    fast_ids = r.lrange(keys.batch_ids(fast), 0, -1)
    assert fast_ids == r.lrange(keys.batch_ids(slow), 0, -1)[:-1]  # the slow one ends with the bad line
    ids = [text(raw) for raw in fast_ids]
    fast_blobs = r.mget([keys.text(fast, i) for i in ids])
    assert None not in fast_blobs and fast_blobs == r.mget([keys.text(slow, i) for i in ids])
    assert r.hmget(keys.batch_meta(fast), ids) == r.hmget(keys.batch_meta(slow), ids)
    for k in (3, PREPARE_AFTER + 3):  # one read again in pass 2, one prepared in pass 1
        stored = r.get(keys.text(fast, f"p{k}"))
        assert isinstance(stored, bytes)
        assert Article.unpack(stored) == Article(digest(records[k]["text"]), f"0:{k + 1}", records[k]["text"])
    # Resumed with the same file: nothing new, everything already there.
    again = client.submit_path(str(clean), batch_id=fast).report
    assert again is not None
    assert (again.enqueued, again.skipped_existing) == (0, len(records))
    client.close()
    r.close()


def test_pass_1_prepares_only_a_clean_input(stack: Stack, redis_url: str, tmp_path: Path) -> None:
    g = isolated_group(stack, redis_url, "http://127.0.0.1:9/v1")
    client = g.client()
    good = [jl({"id": f"c{i}", "text": f"text {i}"}) for i in range(1100)]
    cases = {
        "clean": (good, True),
        "a bad line": ([*good, b"[1]\n"], False),
        "an id twice": ([*good, jl({"id": "c5", "text": "again"})], False),
        "a text twice without id": ([jl({"text": "same"}), jl({"text": "same"})], False),
    }
    for name, (lines, usable) in cases.items():
        path = write_lines(tmp_path / "in.jsonl", *lines)
        with reader.opened(str(path), g.settings.max_article_bytes) as source:
            checked = Checker(client.store, batch_id(), False, prepare_after=500).check(source.records(), lambda: False)
        assert (checked.prepared is not None) == usable, name
        if checked.prepared is not None:
            assert checked.prepared.start == 500
            rows = [row for chunk in checked.prepared.chunks() for row in chunk]
            assert [row[0] for row in rows] == [f"c{i}" for i in range(500, 1100)]
            assert rows[9][1:4] == (digest("text 509"), "510", {})
            checked.prepared.drop()
        # A small input prepares nothing: pass 1 only validates, so its first job is not held back.
        with reader.opened(str(path), g.settings.max_article_bytes) as source:
            assert Checker(client.store, batch_id(), False).check(source.records(), lambda: False).prepared is None
    client.close()
