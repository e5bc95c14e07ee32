"""contract/schema.py is the one layout of every record crossing between Python and Lua: records Lua writes
read back through it field by field (against a real redis-server), and no Lua or Python outside it reads a
record by position."""

from __future__ import annotations

import dataclasses
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from contract import schema, scripts
from contract.job import Status
from contract.keys import Keys
from contract.ops import KINDS, Bill, Counts, Defer, Done, Part, Run
from contract.record import Article, Final, digest, public_row, unpack
from contract.redisconn import make_redis
from contract.settings import Settings
from contract.spec import BatchSpec
from contract.store import JobStore, NewJob
from tests.redisunits import worker_call
from worker.storage import Claimed

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings.from_dsn(redis_url, key_prefix=f"s{uuid.uuid4().hex[:6]}", lease_seconds=30, jobs_per_message=5)


@pytest.fixture
def store(settings: Settings) -> JobStore:
    return JobStore(make_redis(settings, decode=False), settings)


def new_batch(store: JobStore, bid: str, *texts: str) -> tuple[int, str]:
    store.init_batch(bid, BatchSpec("m", 50), "in.jsonl")
    jobs = [NewJob(f"j{i}", Article(digest(t), f"0:{i + 1}", t)) for i, t in enumerate(texts)]
    (message,) = store.create_jobs(bid, jobs).messages
    return message


def claim(settings: Settings, message: tuple[int, str], gen: str = "", cache_fp: str = "") -> Claimed:
    step, member = message
    bid, ids = Keys.split_member(member)
    token = uuid.uuid4().hex
    return worker_call(settings, lambda w: w.claim(bid, ids, step, token, gen=gen, cache_fp=cache_fp))  # type: ignore[no-any-return]


def settle(settings: Settings, *ops: Any) -> list[int]:
    applied: list[int] = worker_call(settings, lambda w: w.settle(list(ops)))[0]
    return applied


def raw_final(store: JobStore, bid: str, job_id: str) -> bytes:
    blob = store.r.hget(store.keys.batch_out(bid), job_id)
    assert isinstance(blob, bytes), f"{job_id} has no final record"
    return blob


# ---- records Lua writes, read through the schema -------------------------------------------------------


def test_a_final_record_lua_writes_for_a_cancelled_job_reads_back_by_name(settings: Settings, store: JobStore) -> None:
    message = new_batch(store, "c1", "an article that is cancelled before it runs")
    store.control("c1", "cancel")
    assert claim(settings, message).skipped == {"j0": "cancelled"}  # claim.lua writes lua_final's record
    blob = raw_final(store, "c1", "j0")
    assert len(unpack(blob)) == len(schema.FINAL.fields)
    f = Final.unpack(blob)
    assert (f.status, f.digest, f.origin) == ("cancelled", digest("an article that is cancelled before it runs"), "0:1")
    assert (f.error, f.error_type, f.summary, f.model) == ("the batch was cancelled", "Cancelled", None, None)
    assert f.cost_usd is None and f.cached is False and f.finished_ms > 0 and f.cache_key == ""
    row = public_row("j0", blob, {})
    assert (row["status"], row["error_type"], row["cost_usd"], row["attempts"]) == ("cancelled", "Cancelled", None, 0)


def test_a_final_record_lua_writes_for_a_cached_answer_reads_back_by_name(settings: Settings, store: JobStore) -> None:
    text = "the same article, twice in one batch"
    store.init_batch("c2", BatchSpec("m", 50), "in.jsonl")
    first = store.create_jobs("c2", [NewJob("j0", Article(digest(text), "0:1", text))]).messages[0]
    leader = claim(settings, first, cache_fp="fp").jobs[0]
    assert leader.cache_key
    final = Final(
        "done", leader.article.digest, "0:1", summary="Short.", model="m-1", chunks=2, cache_key=leader.cache_key
    )
    assert settle(settings, Done(run=Run.of(leader), counts=Counts(1, 0, Bill(30, 4, 0.5)), final=final)) == [1]
    second = store.create_jobs("c2", [NewJob("j1", Article(digest(text), "0:2", text))]).messages[0]
    assert claim(settings, second, cache_fp="fp").skipped == {"j1": "cached"}  # finalize_cached writes it
    blob = raw_final(store, "c2", "j1")
    assert len(unpack(blob)) == len(schema.FINAL.fields)
    f = Final.unpack(blob)
    assert (f.status, f.origin, f.summary, f.model, f.chunks) == ("done", "0:2", "Short.", "m-1", 2)
    assert (f.cached, f.cache_key, f.cost_usd, f.prompt_tokens, f.attempts) == (True, leader.cache_key, 0.0, 0, 0)
    assert Final.unpack(raw_final(store, "c2", "j0")) == final  # Python's record reads back as written


def test_a_claim_reply_and_the_job_hash_carry_what_earlier_ops_stored(settings: Settings, store: JobStore) -> None:
    message = new_batch(store, "c3", "a long article with parts")
    first = claim(settings, message)
    (job,) = first.jobs
    assert (first.state, job.attempts, job.failing_for, job.partials) == ("running", 0, None, {})
    run, counts = Run.of(job), Counts(2, 1, Bill(10, 5, 0.25))
    part = Part(run=run, counts=counts, key="p0", summary="part zero")
    defer = Defer(run=run, delay_ms=0, error_type="RateLimited", error="slow down", counts_as_failure=True)
    assert settle(settings, part, defer) == [1, 1]

    raw: dict[bytes, bytes] = store.r.hgetall(store.keys.job("c3", "j0"))  # type: ignore[assignment]
    assert {k.decode() for k in raw} <= set(schema.JOB.fields.values()), "a job hash field the schema lacks"
    h = schema.JOB.read(raw)
    assert h["status"] == Status.DEFERRED.value.encode()
    assert (h["error_type"], h["error"], h["deferrals"]) == (b"RateLimited", b"slow down", b"1")
    assert (h["attempts"], h["unusable"], h["prompt_tokens"], h["completion_tokens"]) == (b"2", b"1", b"10", b"5")
    assert float(h["cost"]) == 0.25 and int(h["first_failure"]) > 0

    again = claim(settings, message)  # due at once (delay 0): claimed with what the ops stored
    (job,) = again.jobs
    assert (job.attempts, job.unusable, job.deferrals, job.bill) == (2, 1, 1, Bill(10, 5, 0.25))
    assert job.failing_for is not None and job.partials == {"p0": "part zero"}
    assert job.article == Article(digest("a long article with parts"), "0:1", "a long article with parts")
    assert claim(settings, message).skipped == {"j0": "busy"}  # a job not taken: only id and why


def test_the_batch_hash_has_no_field_the_schema_lacks(settings: Settings, store: JobStore) -> None:
    message = new_batch(store, "c4", "one", "two")
    jobs = claim(settings, message).jobs
    final = Final("done", jobs[0].article.digest, "0:1", summary="s")
    assert settle(settings, Done(run=Run.of(jobs[0]), counts=Counts(1, 0, Bill(3, 2, 0.1)), final=final)) == [1]
    store.control("c4", "budget", budget_usd=5.0, budget_tokens=1000)
    raw: dict[bytes, bytes] = store.r.hgetall(store.keys.batch("c4"))  # type: ignore[assignment]
    assert {k.decode() for k in raw} <= set(schema.BATCH.fields.values()), "a batch hash field the schema lacks"
    b = schema.BATCH.read(raw)
    assert (b["total"], b["done"], b["running"], b["state"]) == (b"2", b"1", b"1", b"running")
    assert (b["prompt_tokens"], b["completion_tokens"], b["calls"], float(b["cost_usd"])) == (b"3", b"2", b"1", 0.1)
    assert (float(b["budget_usd"]), int(b["budget_tokens"])) == (5.0, 1000)
    assert BatchSpec.from_json(b["spec"]) == BatchSpec("m", 50)


# ---- the layouts themselves ----------------------------------------------------------------------------


def test_the_layouts_baked_into_every_script_are_the_schemas() -> None:
    prelude = schema.lua_prelude()
    assert "local F = {status=1," in prelude and "cache_key=16}" in prelude
    assert "local O = {" in prelude and "gen=12}" in prelude and len(schema.OP.fields) == 12
    assert "local H = {status='s', token='tk'" in prelude
    for name in scripts.names():
        source = scripts.load(name).source
        assert source.startswith(prelude), name
        assert "cjson.decode(ARGV[1])" not in source.split("\n-- _lib.lua", 1)[0]  # the layouts are not decoded
    # every op kind settle.lua applies has its class, and no class names a kind settle.lua lacks
    settle_kinds = re.search(r"local kinds = \{(.*?)\}", (scripts.LUA_DIR / "settle.lua").read_text(), re.S)
    assert settle_kinds is not None
    assert set(re.findall(r"(\w+) = ", settle_kinds.group(1))) == set(KINDS)


def test_the_final_record_class_has_the_schemas_fields_in_its_order() -> None:
    assert tuple(f.name for f in dataclasses.fields(Final)) == schema.FINAL.fields
    assert tuple(schema.FINAL_EMPTY) == schema.FINAL.fields


def test_rows_refuse_a_missing_or_unknown_field_and_read_older_records_short() -> None:
    with pytest.raises(TypeError, match="missing"):
        schema.HELD.row(batch="b", id="j", token="t")
    with pytest.raises(TypeError, match="unknown"):
        schema.HELD.row(batch="b", id="j", token="t", cache_key="", extra=1)
    assert schema.FINAL.read([b"done", b"d", b"0:1"])["cache_key"] is None  # an older, shorter record
    assert Final.unpack(Final("done").pack()) == Final("done")


def test_every_status_the_lua_writes_is_a_status() -> None:
    written: set[str] = set()
    for path in scripts.LUA_DIR.glob("*.lua"):
        lua = path.read_text(encoding="utf-8")
        written |= set(re.findall(r"(?:'s'|H\.status), '(\w+)'", lua))
        written |= set(re.findall(r"(?:move|to_packing)\([^)]*'(\w+)'\)", lua))
        written |= set(re.findall(r"finalize\([^,]+, [^,]+, [^,]+, '(\w+)'", lua))
    assert written, "the patterns found nothing: they no longer match the scripts"
    assert written <= {s.value for s in Status}, written - {s.value for s in Status}


# ---- nobody else reads a record by position ---------------------------------------------------------

#: a name indexed by a literal number: `f[7]`, `rec[3]`, `op[12]`, `x)[1]`; KEYS[n] and ARGV[n] are how
#: a script takes its parameters
_LUA_LITERAL_INDEX = re.compile(r"(?:\b(?!KEYS\b|ARGV\b)[A-Za-z_]\w*|\))\s*\[\s*-?\d+\s*\]")


def _lua_code(text: str) -> str:
    """The script without its comments and string literals (a comment may well say `f[7]`)."""
    text = re.sub(r"--\[\[.*?\]\]", "", text, flags=re.S)
    text = re.sub(r"'(?:\\.|[^'\\])*'|\"(?:\\.|[^\"\\])*\"", "''", text)
    return re.sub(r"--[^\n]*", "", text)


def test_no_lua_script_indexes_a_record_by_a_literal_number() -> None:
    found = []
    for path in sorted(scripts.LUA_DIR.glob("*.lua")):
        for n, line in enumerate(_lua_code(path.read_text(encoding="utf-8")).splitlines(), 1):
            if _LUA_LITERAL_INDEX.search(line):
                found.append(f"{path.name}:{n}: {line.strip()}")
    assert not found, "index records by name (contract/schema.py):\n" + "\n".join(found)


#: names that hold a record crossing the boundary, as the Python side calls them
_RECORD_NAMES = r"f|rec|record|row|rows|op|ops|extra|final|finals|reply|replies|h|cur|article|claimed|job|counts|held"
_PY_LITERAL_INDEX = re.compile(rf"\b(?:{_RECORD_NAMES})\[-?\d+\]")
#: `a, b, c = unpack(blob)` or `x, y, *rest = (... for v in h)`: a record taken apart by position
_PY_UNPACKED = re.compile(r"^\s*\w+\s*,[\w\s,*]*=\s*(?:unpack\(|\(.*\bfor\b)")


def test_no_python_outside_the_schema_reads_a_record_by_position() -> None:
    """Best effort: the names records go by, subscripted by a number, or a record unpacked by position."""
    found = []
    for top in ("contract", "worker", "producer"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if path.name == "schema.py":
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                code = line.split("#", 1)[0]
                if _PY_LITERAL_INDEX.search(code) or _PY_UNPACKED.search(code):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, "read records through contract/schema.py:\n" + "\n".join(found)
