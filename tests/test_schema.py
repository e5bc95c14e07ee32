"""contract/schema.py is the one layout of every record crossing between Python and Lua: records Lua writes
read back through it field by field (against a real redis-server), and no Lua or Python outside it reads a
record by position."""

from __future__ import annotations

import ast
import dataclasses
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from contract import schema, scripts
from contract.job import Status
from contract.keys import Keys
from contract.ops import KINDS, Bill, Counts, Defer, Done, Fail, Park, Part, Run
from contract.record import Article, Final, digest, pack, public_row, text, unpack
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
    assert "local F = {status=1," in prelude and "cache_key=16," in prelude
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


def _outside_the_schema() -> Iterator[Path]:
    """The product's Python modules but contract/schema.py, the one that may read records by position."""
    for top in ("contract", "worker", "producer"):
        yield from (p for p in sorted((ROOT / top).rglob("*.py")) if p.name != "schema.py")


def test_no_python_outside_the_schema_reads_a_record_by_position() -> None:
    """Best effort: the names records go by, subscripted by a number, or a record unpacked by position."""
    found = []
    for path in _outside_the_schema():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if _PY_LITERAL_INDEX.search(code) or _PY_UNPACKED.search(code):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, "read records through contract/schema.py:\n" + "\n".join(found)


# ---- script replies: built by name in Lua, read by name in Python --------------------------------------


def _ws(settings: Settings, name: str, **params: Any) -> Any:
    """The raw reply of one script, called as the worker calls it."""
    return worker_call(settings, lambda w: w.script(name, **params))


def _full(layout: schema.Layout, reply: Any) -> dict[str, Any]:
    """`reply` read through `layout`, which names every one of its fields (none left over, none missing)."""
    assert isinstance(reply, list) and len(reply) == len(layout.fields), (layout.lua, reply)
    return layout.read(reply)


def _messages(rows: Any) -> list[tuple[int, str]]:
    """Rows of MESSAGE records, by name."""
    return [(m["step"], text(m["member"])) for m in (_full(schema.MESSAGE, r) for r in rows)]


def _fields_known(store: JobStore, key: str, fields: schema.Fields) -> dict[str, Any]:
    raw: dict[bytes, bytes] = store.r.hgetall(key)  # type: ignore[assignment]
    assert raw, f"{key} was not written"
    assert {k.decode() for k in raw} <= set(fields.fields.values()), f"a {fields.lua} hash field the schema lacks"
    return fields.read(raw)


def test_every_reply_a_script_makes_reads_back_by_name(settings: Settings, store: JobStore) -> None:
    """Each script run for real, its reply read through its Layout: every field named, none left over."""
    seen: set[schema.Layout] = set()

    def read(layout: schema.Layout, reply: Any) -> dict[str, Any]:
        seen.add(layout)
        return _full(layout, reply)

    spec = BatchSpec("m", 50).to_json()
    made = read(schema.INIT_REPLY, store.run("init_batch", batch="r1", spec=spec, step=0, source="a", ttl=600))
    assert (made["created"], BatchSpec.from_json(made["spec"]), made["index"]) == (1, BatchSpec("m", 50), 0)
    again = read(schema.INIT_REPLY, store.run("init_batch", batch="r1", spec=spec, step=0, source="b", ttl=600))
    assert (again["created"], again["index"], again["gen"]) == (0, 1, made["gen"]) and made["gen"]
    gen = text(made["gen"])

    let_in = store.run("admit", submit="s1", jobs=6, max=10, step=0)
    assert len(let_in) == 1 and schema.ADMIT_REPLY.read(let_in)["admitted"] == 1  # let in: it says only that
    refused = read(schema.ADMIT_REPLY, store.run("admit", submit="s2", jobs=8, max=10, step=0))
    assert refused == {"admitted": 0, "backlog": 6, "place": 0}  # s1's room is held

    texts = [f"reply article {i}" for i in range(6)]
    jobs = [
        schema.NEW_JOB.row(id=f"j{i}", article=Article(digest(t), f"0:{i + 1}", t).pack(), metadata="", final="")
        for i, t in enumerate(texts)
    ]
    create = {"batch": "r1", "per_message": 4, "gen": gen}
    created = read(schema.CREATE_REPLY, store.run("create", admit="s1", jobs=pack(jobs), **create))
    assert [schema.CREATED.read(r) for r in created["results"]] == [{"created": 1, "digest": None, "origin": None}] * 6
    first, second = _messages(created["messages"])
    assert (first, second) == ((0, Keys.member("r1", "j0", "j1", "j2", "j3")), (0, Keys.member("r1", "j4", "j5")))
    twice = read(schema.CREATE_REPLY, store.run("create", admit="", jobs=pack(jobs[:1]), **create))
    assert [_full(schema.CREATED, r) for r in twice["results"]] == [
        {"created": 0, "digest": digest(texts[0]).encode(), "origin": b"0:1"}
    ]
    assert twice["messages"] == []

    claimed = claim(settings, first, gen=gen).jobs
    j0, j1, j2, _ = (Run.of(j) for j in claimed)
    send = {"batch": "r1", "gen": gen, "id": "j0", "usd": 0.5, "tokens": 10}
    go = read(schema.SEND_REPLY, _ws(settings, "send", token=j0.token, **send))
    assert (go["verdict"], go["detail"]) == (b"go", b"held")
    lost = read(schema.SEND_REPLY, _ws(settings, "send", token="not-its-run", **send))
    assert (lost["verdict"], lost["detail"]) == (b"lost", b"")

    control = {"batch": "r1", "budget_usd": "", "budget_tokens": ""}
    paused = read(schema.CONTROL_REPLY, store.run("control", action="pause", **control))
    assert (paused["state"], paused["reason"]) == (b"paused", b"user")
    failed = Final("failed", claimed[1].article.digest, "0:2", error="no", error_type="ProviderRejected")
    ops = [
        Park(run=j0),
        Fail(run=j1, final=failed),
        Defer(run=j2, delay_ms=0, error_type="RateLimited", error="slow", counts_as_failure=False),
    ]
    settle_args = {"per_message": 10, "cache_ttl": 0, "halt_after": 0}
    settled = read(schema.SETTLE_REPLY, _ws(settings, "settle", ops=pack([op.row() for op in ops]), **settle_args))
    assert (settled["applied"], settled["messages"]) == ([1, 1, 1], [])
    running = read(schema.CONTROL_REPLY, store.run("control", action="resume", **control))
    assert (running["state"], running["reason"]) == (b"running", b"")

    unparked = read(schema.REQUEUE_REPLY, store.run("unpark", batch="r1", per_message=10, ids=pack(["j0"])))
    assert unparked["count"] == 1 and _messages(unparked["messages"]) == [(0, Keys.member("r1", "j0"))]
    retried = read(schema.REQUEUE_REPLY, store.run("retry", batch="r1", per_message=10, ids=pack(["j1"])))
    assert retried["count"] == 1 and _messages(retried["messages"]) == [(0, Keys.member("r1", "j1"))]

    reap = {"lease_ms": 30000, "grace_ms": 60000, "gap_ms": 60000, "per_message": 10, "limit": 100}
    reaped = read(schema.REAP_REPLY, _ws(settings, "reap", empty=pack([]), **reap))
    assert (reaped["reclaimed"], reaped["due"], reaped["republished"]) == (0, 1, 0)  # j2's deferral was due
    assert _messages(reaped["messages"]) == [(0, Keys.member("r1", "j2"))]
    clock = _fields_known(store, store.keys.reaper_clock, schema.REAPER)
    assert int(clock["last"]) == int(clock["resumed"]) > 0

    # batch mode: j4 and j5 wait for a pack; a take of none sends j4 online, the next packs j5
    token = uuid.uuid4().hex
    packing = worker_call(settings, lambda w: w.claim("r1", ["j4", "j5"], 0, token, gen=gen, to_pack=True))
    assert packing.skipped == {"j4": "packing", "j5": "packing"}
    due = read(schema.PACK_DUE_REPLY, _ws(settings, "pack_due", linger_ms=0, max=10, lease_ms=1000))
    assert (due["batches"], due["packs"]) == ([b"r1"], [])
    take = {"batch": "r1", "gen": gen, "twins": pack({}), "scope": "s", "tokens": 7, "limit": 0, "usd": 0.0}
    take |= {"lease_ms": 1000, "per_message": 10}
    online = read(
        schema.PACK_TAKE_REPLY,
        _ws(settings, "pack_take", pack="pk0", jobs=pack([]), online=pack(["j4"]), fields=pack({}), **take),
    )
    assert online["verdict"] == b"none" and _messages(online["messages"]) == [(0, Keys.member("r1", "j4"))]
    journal = {schema.PACK.lines: 1, schema.PACK.bytes: 99, schema.PACK.endpoint: "http://x"}
    made_pack = read(
        schema.PACK_TAKE_REPLY,
        _ws(settings, "pack_take", pack="pk1", jobs=pack(["j5"]), online=pack([]), fields=pack(journal), **take),
    )
    assert (made_pack["verdict"], made_pack["messages"]) == (b"ok", [])
    p = _fields_known(store, store.keys.pack("pk1"), schema.PACK)
    assert (p["batch"], p["gen"], p["state"], p["jobs"], p["enq"]) == (b"r1", gen.encode(), b"new", b"1", b"7")
    assert (p["lines"], p["bytes"], p["endpoint"]) == (b"1", b"99", b"http://x")

    limits = read(schema.RATE_LIMITS_REPLY, _ws(settings, "rate_limits", worker="w1", rpm=600, tpm=9000, ttl_ms=5000))
    assert (limits["rpm"], limits["tpm"]) == (600, 9000)
    book = {"rpm": 600, "tpm": 9000, "tokens": 10, "window_ms": 61000, "rpm_burst": 1, "tpm_burst": 100}
    slot = read(schema.RATE_SLOT, _ws(settings, "rate_acquire", late_ms=200, **book))
    assert slot["wait_ms"] == 0 and slot["slot_ms"] > 0
    rate = _fields_known(store, store.keys.rate, schema.RATE)
    assert (rate["requests"], rate["tokens"], int(rate["last"])) == (b"1", b"10", slot["slot_ms"])
    assert float(rate["request_tat"]) > slot["slot_ms"] and float(rate["token_tat"]) > slot["slot_ms"]

    assert seen | {schema.MESSAGE} == set(schema.REPLIES), "a reply kind this test does not run"


def test_no_lua_script_returns_or_appends_a_positional_table() -> None:
    """A reply is a record of contract/schema.py, built by name (`record(SR, {applied = ...})`); a bare
    `return {a, b}`, or a row `out[#out + 1] = {step, m}` (any table constructor with values, returned or
    stored in a list), is positional and refused."""
    bare = re.compile(r"(?:\breturn|\]\s*=)\s*\{\s*[^\s}]")
    found = []
    for path in sorted(scripts.LUA_DIR.glob("*.lua")):
        for n, line in enumerate(_lua_code(path.read_text(encoding="utf-8")).splitlines(), 1):
            if bare.search(line):
                found.append(f"{path.name}:{n}: {line.strip()}")
    assert not found, "build replies with record(LAYOUT, {...}) (contract/schema.py):\n" + "\n".join(found)


def _is_script_call(node: ast.AST) -> bool:
    """`self.run("x", ...)`, `await self.script("x", ...)` or the `requeue(...)` _requeue hands one."""
    if isinstance(node, ast.Await):
        node = node.value
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    return (isinstance(f, ast.Attribute) and f.attr in ("run", "script")) or (
        isinstance(f, ast.Name) and f.id == "requeue"
    )


def test_no_python_outside_the_schema_unpacks_a_script_reply_by_position() -> None:
    found = []
    for path in _outside_the_schema():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None and _is_script_call(node.value):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Tuple | ast.List | ast.Starred) for t in targets):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            if isinstance(node, ast.Subscript) and _is_script_call(node.value):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")  # `self.run(...)[1]`
    assert not found, "read script replies through their contract/schema.py Layout:\n" + "\n".join(found)


#: a string literal as the field of a hash that has a Fields table (job, batch, pack, rate, reaper, stats)
_LUA_LITERAL_FIELD = re.compile(
    r"(?:redis\.call\('H\w+',\s*|hmget\()"
    r"(?:bk|jk|key|pkey_|bkey\([^()]*\)|jkey\([^()]*\)|pack_key\(pk\)|L\.(?:rate|reaper|stats))\s*,\s*'"
)


def test_no_lua_script_names_a_hash_field_by_a_literal() -> None:
    found = []
    for path in sorted(scripts.LUA_DIR.glob("*.lua")):
        text_ = re.sub(r"--[^\n]*", "", path.read_text(encoding="utf-8"))
        for n, line in enumerate(text_.splitlines(), 1):
            if _LUA_LITERAL_FIELD.search(line):
                found.append(f"{path.name}:{n}: {line.strip()}")
    assert not found, "name hash fields through contract/schema.py's Fields (H, B, PK, RT, RH, ST):\n" + "\n".join(
        found
    )
