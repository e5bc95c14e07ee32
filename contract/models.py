"""What we know of well-known models without asking: context windows and list prices (contract/data/models.json,
dated, easy to update; SUMMARIZE_PRICES overrides the prices)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from .errors import ConfigError

DATA = Path(__file__).resolve().parent / "data" / "models.json"
#: the context window assumed for a model nobody told us about: small enough for most served models
DEFAULT_CONTEXT = 8192


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1_000_000


@cache
def _table() -> dict[str, dict[str, Any]]:
    models: dict[str, dict[str, Any]] = json.loads(DATA.read_text(encoding="utf-8"))["models"]
    return models


def _entry(model: str) -> dict[str, Any] | None:
    """The table's entry for `model`, also for a dated or provider-prefixed name (gpt-4o-2024-08-06, openai/gpt-4o)."""
    table = _table()
    name = model.split("/", 1)[1] if "/" in model and model not in table else model
    best = max(
        (k for k in table if name == k or name.startswith(k + "-") or name.startswith(k + ":")), key=len, default=None
    )
    return table[best] if best is not None else None


def known_context(model: str) -> int | None:
    entry = _entry(model)
    return int(entry["context"]) if entry and "context" in entry else None


def known_price(model: str) -> Price | None:
    entry = _entry(model)
    if entry is None or "input" not in entry:
        return None
    return Price(float(entry["input"]), float(entry["output"]))


def load_prices(path: str) -> dict[str, Price]:
    """SUMMARIZE_PRICES: a JSON file {model: {"input": x, "output": y}} (USD per million tokens)."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        return {str(m): Price(float(p["input"]), float(p["output"])) for m, p in raw.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f'SUMMARIZE_PRICES={path!r}: expected a JSON file of {{model: {{"input": x, "output": y}}}}: {exc}'
        ) from None
