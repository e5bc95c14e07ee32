"""contract/scripts.py: every Lua script's header matches its callers' parameters."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from contract import scripts
from contract.keys import Keys

ROOT = Path(__file__).resolve().parent.parent


def _script_calls() -> list[tuple[str, str, set[str]]]:
    """(file, script name, keyword names) of every `.run("name", ...)` / `.script("name", ...)` call."""
    found = []
    for path in [*ROOT.glob("contract/*.py"), *ROOT.glob("worker/**/*.py"), *ROOT.glob("producer/*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("run", "script")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                found.append((path.name, node.args[0].value, {k.arg for k in node.keywords if k.arg}))
    return found


def test_every_script_header_matches_its_callers() -> None:
    calls = _script_calls()
    called = {name for _, name, _ in calls}
    assert called == set(scripts.names()), "a script nobody calls, or a call of a script that doesn't exist"
    for file, name, params in calls:
        assert params == set(scripts.load(name).argv[1:]), f"{file} calls {name}.lua with {sorted(params)}"


def test_scripts_refuse_wrong_parameter_names() -> None:
    with pytest.raises(TypeError, match=r"missing.*unknown"):
        scripts.load("claim").args(Keys(), batch="b", step=0, message="m", token="t", lease=5)
