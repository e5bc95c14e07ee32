"""A batch's spec: everything that shapes its answers, stored once with the batch and never per job."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from .errors import ConfigError
from .keys import PRIORITIES
from .models import Price

#: a custom prompt longer than this is more likely a file given by mistake (an article?) than instructions
MAX_PROMPT_CHARS = 20_000


@dataclass(frozen=True)
class BatchSpec:
    model: str
    max_words: int
    #: kombu priority of the batch's messages: high, normal or low
    priority: str = "normal"
    #: the task instructions replacing the built-in ones; `{max_words}` may appear in them
    prompt: str | None = None
    temperature: float = 0.0
    #: JSON Schema the answer must follow (sent as response_format json_schema, strict)
    json_schema: dict[str, Any] | None = None
    #: model used when the primary answers 404 or fails an article for good
    fallback_model: str | None = None
    #: no answer from the cache, none stored in it, no waiting for identical articles: fresh calls
    no_cache: bool = False
    #: USD per million tokens, [input, output], of the batch's models, as known at submit (a model
    #: missing here has an unknown price: its cost is null, never 0)
    prices: dict[str, list[float]] | None = None
    #: online (a request per job) or batch (the provider's Batch API: half the price, within 24 h)
    mode: str = "online"

    def __post_init__(self) -> None:
        if self.max_words < 1:
            raise ConfigError(f"max words must be at least 1, got {self.max_words}")
        if self.priority not in PRIORITIES:
            raise ConfigError(f"priority {self.priority!r} must be one of {', '.join(PRIORITIES)}")
        if not 0 <= self.temperature <= 2:
            raise ConfigError(f"temperature {self.temperature} must be between 0 and 2")
        if self.prompt is not None and not self.prompt.strip():
            raise ConfigError("the prompt is empty")
        if self.prompt is not None and len(self.prompt) > MAX_PROMPT_CHARS:
            raise ConfigError(f"the prompt is {len(self.prompt)} characters; at most {MAX_PROMPT_CHARS} are taken")
        if self.json_schema is not None:
            check_schema(self.json_schema)
        if self.mode not in ("online", "batch"):
            raise ConfigError(f"mode {self.mode!r} must be online or batch")

    @property
    def step(self) -> int:
        return PRIORITIES[self.priority]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str | bytes) -> BatchSpec:
        data: dict[str, Any] = json.loads(raw)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def price(self, model: str) -> Price | None:
        found = (self.prices or {}).get(model)
        return Price(float(found[0]), float(found[1])) if found else None

    def differences(self, other: BatchSpec) -> list[str]:
        """What differs, as 'name: stored -> asked' lines, for the error of a resume with another spec."""
        mine, theirs = asdict(self), asdict(other)
        return [
            f"{name}: {_short(mine[name])} -> {_short(theirs[name])}" for name in mine if mine[name] != theirs[name]
        ]

    def shown(self) -> dict[str, Any]:
        """The spec as `summarize status` shows it: long values cut."""
        return {
            k: (_short(v) if k in ("prompt", "json_schema") and v is not None else v) for k, v in asdict(self).items()
        }


def check_schema(schema: Any) -> None:
    """Raise ConfigError when `schema` is not a JSON Schema an answer can be checked against."""
    import jsonschema  # only when a batch has a schema: it costs its import time

    if not isinstance(schema, dict):
        raise ConfigError(f"the JSON schema must be an object, got {type(schema).__name__}")
    if schema.get("type", "object") != "object":
        raise ConfigError('the JSON schema must describe an object ("type": "object"), as response_format requires')
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "the top level"
        raise ConfigError(f"the JSON schema is invalid at {where}: {exc.message}") from None


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."
