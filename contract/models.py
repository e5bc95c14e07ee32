"""What we know of well-known models without asking: context windows, list prices and how each is called
(contract/data/models.json, dated, easy to update; SUMMARIZE_PRICES overrides the prices, a batch's
model_family how its models are called)."""

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

#: chat models take max_tokens and any temperature
CHAT = "chat"
#: reasoning models (gpt-5, o3, o4-mini) refuse max_tokens and any temperature but their default (400
#: unsupported_parameter / unsupported_value), take reasoning_effort, and spend reasoning tokens inside
#: max_completion_tokens: a room sized for the answer alone can go on thinking and end empty
REASONING = "reasoning"
FAMILIES = (CHAT, REASONING)
EFFORTS = ("minimal", "low", "medium", "high")
#: effort of a reasoning model unless the batch says otherwise (SUMMARIZE_REASONING_EFFORT): a summary needs
#: little thought, and every reasoning token is billed as output
DEFAULT_REASONING_EFFORT = "low"
#: completion tokens a reasoning model gets for its reasoning on top of the answer's room
#: (SUMMARIZE_REASONING_TOKENS); an answer cut off anyway is retried with twice the room
DEFAULT_REASONING_TOKENS = 1024


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


#: where a /v1/models entry gives its context window (vLLM's max_model_len, others' context_length...)
CONTEXT_FIELDS = ("max_model_len", "context_length", "context_window", "max_context_length", "max_input_tokens")


def listed_context(listing: Any, model: str) -> int | None:
    """The context window a server's /v1/models listing gives `model`, if it gives one (the worker's
    ContextWindows and `summarize estimate` read it alike)."""
    entries = listing.get("data", []) if isinstance(listing, dict) else []
    for entry in entries:
        if isinstance(entry, dict) and entry.get("id") == model:
            for name in CONTEXT_FIELDS:
                value = entry.get(name)
                if isinstance(value, int) and value > 0:
                    return value
    return None


def known_context(model: str) -> int | None:
    entry = _entry(model)
    return int(entry["context"]) if entry and "context" in entry else None


def known_family(model: str) -> str:
    """chat or reasoning, by the table (a model missing there is a chat model)."""
    entry = _entry(model)
    family = entry.get("family", CHAT) if entry else CHAT
    return str(family)


@dataclass(frozen=True)
class CallStyle:
    """How a request to one model is written."""

    family: str = CHAT
    #: sent as reasoning_effort (None: not sent)
    reasoning_effort: str | None = None
    #: completion tokens added to the answer's room for reasoning
    reasoning_tokens: int = 0

    @property
    def reasoning(self) -> bool:
        return self.family == REASONING

    @property
    def room_param(self) -> str:
        return "max_completion_tokens" if self.reasoning else "max_tokens"


def call_style(
    model: str, family: str | None = None, effort: str | None = None, reasoning_tokens: int | None = None
) -> CallStyle:
    """The style of `model`: its family by the table unless `family` is given; a reasoning model gets
    `effort` (or the default), the nearest one it accepts, and `reasoning_tokens` (or the default)."""
    family = family or known_family(model)
    if family != REASONING:
        return CallStyle(CHAT)
    entry = _entry(model) or {}
    accepted = [str(e) for e in entry.get("efforts", EFFORTS)]
    wanted = effort or DEFAULT_REASONING_EFFORT
    chosen = None
    if accepted:
        # o-series models have no "minimal": the closest effort they take, rather than a 400 per request.
        chosen = min(accepted, key=lambda e: (abs(EFFORTS.index(e) - EFFORTS.index(wanted)), -EFFORTS.index(e)))
    return CallStyle(REASONING, chosen, DEFAULT_REASONING_TOKENS if reasoning_tokens is None else reasoning_tokens)


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
