"""Lua scripts, loaded by name from contract/lua/, each called with named parameters.

Every script file starts with a header naming its arguments, dramatiq-style:

    -- ARGV[1] layout: key names (Keys.layout)
    -- ARGV[2] batch: batch id

`Script.call(keys, **params)` turns named parameters into the positional list in that order, refusing a
missing or unknown name, so a caller can't drift from the script it calls (tests/test_scripts.py checks
every header against its caller), and declares in KEYS every key the call touches: the deployment's keys
the script (with the `_lib.lua` helpers it calls) names, and the keys of the batches, jobs, packs, scopes
and cache weeks its parameters name. ARGV[1] is filled in here: the layout and which KEYS entry is which.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from . import schema
from .keys import GLOBALS, Declared, Keys
from .record import unpack

LUA_DIR = Path(__file__).resolve().parent / "lua"
_ARG = re.compile(r"^-- (KEYS|ARGV)\[(\d+)\] (\w+):", re.MULTILINE)


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    #: ARGV names in order, the layout first
    argv: tuple[str, ...]
    #: what the script (and the _lib.lua helpers it calls) names of the layout (`L.x`) and the index (`I.x`)
    uses: frozenset[str] = frozenset()

    def call(self, keys: Keys, strict: bool = False, **params: Any) -> tuple[list[str], list[Any]]:
        """(KEYS, ARGV) of a call. strict: a key the script reaches by a pointer (not declared) is an error."""
        argv = self.args(keys, **params)
        declared = keys.declare()
        for name in sorted(self.uses & GLOBALS.keys()):
            declared.glob(name)
        if "orphans" in self.uses:
            declared.orphans()
        _declare_params(declared, params)
        index = json.dumps(declared.index, separators=(",", ":"))
        flag = ',"strict":true' if strict else ""
        argv[0] = f'{{"s":{argv[0]},"i":{index}{flag}}}'
        return declared.names, argv

    def args(self, keys: Keys, **params: Any) -> list[Any]:
        given, wanted = set(params), set(self.argv[1:])
        if given != wanted:
            raise TypeError(
                f"{self.name}.lua takes {sorted(wanted)}; got {sorted(given)} "
                f"(missing {sorted(wanted - given)}, unknown {sorted(given - wanted)})"
            )
        return [_layout_json(keys), *(params[name] for name in self.argv[1:])]


@cache
def _layout_json(keys: Keys) -> str:
    return json.dumps(keys.layout, separators=(",", ":"))


@cache
def load(name: str) -> Script:
    """The script `contract/lua/NAME.lua` with the shared prelude, and the ARGV names of its header."""
    body = (LUA_DIR / f"{name}.lua").read_text(encoding="utf-8")
    found = [(kind, int(n), arg) for kind, n, arg in _ARG.findall(body)]
    if any(kind == "KEYS" for kind, _, _ in found):
        raise ValueError(f"{name}.lua: KEYS are declared by Script.call from the parameters, not named in the header")
    argv = tuple(arg for _, _, arg in found)
    if [n for _, n, _ in found] != list(range(1, len(found) + 1)) or argv[:1] != ("layout",):
        raise ValueError(f"{name}.lua: its header must name ARGV[1] layout, ARGV[2], ... in order")
    prelude = (LUA_DIR / "_lib.lua").read_text(encoding="utf-8")
    return Script(name, schema.lua_prelude() + prelude + "\n" + body, argv, _uses(body))


def names() -> list[str]:
    return sorted(p.stem for p in LUA_DIR.glob("*.lua") if not p.stem.startswith("_"))


_FUNCTION = re.compile(r"^local function (\w+)\(", re.MULTILINE)
_NAMED = re.compile(r"\b[LI]\.(\w+)")
_CALLED = re.compile(r"\b(\w+)\(")


@cache
def _lib_functions() -> dict[str, str]:
    """_lib.lua's functions by name, each with its text (up to the next one)."""
    lib = (LUA_DIR / "_lib.lua").read_text(encoding="utf-8")
    starts = [(m.start(), m.group(1)) for m in _FUNCTION.finditer(lib)]
    ends = [at for at, _ in starts[1:]] + [len(lib)]
    return {name: lib[at:end] for (at, name), end in zip(starts, ends, strict=True)}


def _uses(body: str) -> frozenset[str]:
    """What of the layout and the index a script names, itself or through the helpers it calls."""
    lib = _lib_functions()
    seen: set[str] = set()
    todo = [body]
    names: set[str] = set()
    while todo:
        text_ = todo.pop()
        names.update(_NAMED.findall(text_))
        for fn in _CALLED.findall(text_):
            if fn in lib and fn not in seen:
                seen.add(fn)
                todo.append(lib[fn])
    return frozenset(names)


def _ids(raw: Any) -> list[str]:
    items = unpack(bytes(raw)) if isinstance(raw, bytes | bytearray) else raw
    out = []
    for item in items or ():
        # create's jobs are rows (schema.NEW_JOB), the other lists plain ids
        value = schema.NEW_JOB.read(item)["id"] if isinstance(item, list | tuple) else item
        out.append(value.decode() if isinstance(value, bytes) else str(value))
    return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _declare_params(declared: Declared, params: dict[str, Any]) -> None:
    """The keys a call's parameters name: its batch and jobs (`batch`, `id`, `ids`, `jobs`, `online`, `twins`,
    `message`), the batches and jobs of settle's `ops` and renew's `held`, a `pack`, a `scope`, and the cache
    weeks a `cache_ttl` reaches."""
    if params.get("batch"):
        _declare_batch(declared, params["batch"], params)
    if params.get("message"):
        batch_id, job_ids = Keys.split_member(params["message"])
        for job_id in job_ids:
            declared.job(batch_id, job_id)
    # settle's ops (schema.OP) and renew's held jobs (schema.HELD) name a batch, a job and its cache key: the
    # flight the job leads (its hash's `fk`), so that flight and its waiters are declared too.
    for name, layout in (("ops", schema.OP), ("held", schema.HELD)):
        for row in unpack(params[name]) if params.get(name) else ():
            _declare_row(declared, layout.read(row))
    if params.get("pack"):
        declared.pack(params["pack"])
    if params.get("scope"):
        declared.enqueued(params["scope"])
    if params.get("cache_ttl"):
        declared.weeks(time.time(), float(params["cache_ttl"]))


def _declare_batch(declared: Declared, batch: str, params: dict[str, Any]) -> None:
    declared.batch(batch)
    if "id" in params:
        declared.job(batch, params["id"])
    for name in ("ids", "jobs", "online"):
        for job_id in _ids(params[name]) if params.get(name) else ():
            declared.job(batch, job_id)
    if params.get("twins"):
        for twin, leader in unpack(params["twins"]).items():
            declared.job(batch, _text(twin))
            declared.job(batch, _text(leader))


def _declare_row(declared: Declared, row: dict[str, Any]) -> None:
    batch, job_id, cache_key = row["batch"], row["id"], row["cache_key"]
    if batch and job_id:
        declared.job(_text(batch), _text(job_id))
    elif batch:
        declared.batch(_text(batch))  # a pack's spend op names no job
    if cache_key:
        declared.flight(_text(cache_key))
