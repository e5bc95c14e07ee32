"""Lua scripts, loaded by name from contract/lua/, each called with named parameters.

Every script file starts with a header naming its arguments, dramatiq-style:

    -- ARGV[1] layout: key names (Keys.layout)
    -- ARGV[2] batch: batch id

`Script.args(**params)` turns named parameters into the positional list in that order, refusing a
missing or unknown name, so a caller can't drift from the script it calls (tests/test_units.py checks
every header against its caller). `_lib.lua` is prepended to every script. ARGV[1] is always the key
layout, filled in here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from .keys import Keys

LUA_DIR = Path(__file__).resolve().parent / "lua"
_ARG = re.compile(r"^-- (KEYS|ARGV)\[(\d+)\] (\w+):", re.MULTILINE)


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    #: ARGV names in order, the layout first
    argv: tuple[str, ...]

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
        raise ValueError(f"{name}.lua: scripts take key names from the layout, not KEYS")
    argv = tuple(arg for _, _, arg in found)
    if [n for _, n, _ in found] != list(range(1, len(found) + 1)) or argv[:1] != ("layout",):
        raise ValueError(f"{name}.lua: its header must name ARGV[1] layout, ARGV[2], ... in order")
    prelude = (LUA_DIR / "_lib.lua").read_text(encoding="utf-8")
    return Script(name, prelude + "\n" + body, argv)


def names() -> list[str]:
    return sorted(p.stem for p in LUA_DIR.glob("*.lua") if not p.stem.startswith("_"))
