"""A batch's spec: everything that shapes its answers, stored once with the batch and never per job."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from .errors import ConfigError
from .keys import PRIORITIES
from .models import EFFORTS, FAMILIES, CallStyle, Price, call_style

#: a custom prompt longer than this is more likely a file given by mistake (an article?) than instructions
MAX_PROMPT_CHARS = 20_000
#: in a custom prompt, `{max_words}` is the one placeholder and `{{name}}` a literal `{name}`; any other
#: brace (a JSON example) is sent as it is
_PLACEHOLDER = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
PLACEHOLDERS = ("max_words",)


def unknown_placeholders(prompt: str) -> list[str]:
    """`{name}`s of a prompt that are no placeholder (a typo like `{max_word}` would reach the model as is)."""
    found = (m.group(2) for m in _PLACEHOLDER.finditer(prompt) if m.group(2) is not None)
    return list(dict.fromkeys(name for name in found if name not in PLACEHOLDERS))


def render_prompt(prompt: str, max_words: int) -> str:
    """The prompt as sent: `{max_words}` filled in, `{{name}}` made `{name}`. An unknown `{name}` (only in a
    batch stored before submit refused them) is left as it is."""

    def fill(m: re.Match[str]) -> str:
        if m.group(1) is not None:
            return "{" + m.group(1) + "}"
        return str(max_words) if m.group(2) == "max_words" else m.group(0)

    return _PLACEHOLDER.sub(fill, prompt)


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
    #: batch mode: where a pack's jobs go when the Batch API refuses it for good (no Batch API, a gateway
    #: without its credentials): None halts the batch (`summarize retry` after the fix), "online" runs them online
    fallback_mode: str | None = None
    #: how the batch's models are called: chat or reasoning (None: by the model table; see contract/models.py)
    model_family: str | None = None
    #: a reasoning model's reasoning_effort (None: SUMMARIZE_REASONING_EFFORT's default, low)
    reasoning_effort: str | None = None
    #: completion tokens a reasoning model gets for reasoning on top of the answer (None: the default)
    reasoning_tokens: int | None = None
    #: checks (contract/checks.py FLAGS) whose flag makes an answer unusable: asked again, then failed
    require_checks: list[str] | None = None
    #: the language (ISO 639-1) the summaries must be in, when the prompt asks for another than the
    #: article's (None: the article's); read by the `language` check only
    language: str | None = None

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
        if self.fallback_mode not in (None, "online"):
            raise ConfigError(f"fallback mode {self.fallback_mode!r} must be online (or left out)")
        if self.fallback_mode is not None and self.mode != "batch":
            raise ConfigError("a fallback mode is for batch mode (--mode batch)")
        self._check_style()
        self._check_checks()

    def _check_checks(self) -> None:
        from .checks import parse_names

        if self.require_checks is not None:
            # stored in FLAGS order, so the same checks given in another order are the same spec
            object.__setattr__(self, "require_checks", list(parse_names(self.require_checks)))
        if self.language is not None and not re.fullmatch(r"[a-z]{2,3}", self.language):
            raise ConfigError(f"language {self.language!r} must be an ISO 639-1 code such as en, fr, de")

    def _check_style(self) -> None:
        if self.model_family is not None and self.model_family not in FAMILIES:
            raise ConfigError(f"model family {self.model_family!r} must be one of {', '.join(FAMILIES)}")
        if self.reasoning_effort is not None and self.reasoning_effort not in EFFORTS:
            raise ConfigError(f"reasoning effort {self.reasoning_effort!r} must be one of {', '.join(EFFORTS)}")
        if self.reasoning_tokens is not None and (isinstance(self.reasoning_tokens, bool) or self.reasoning_tokens < 0):
            raise ConfigError(f"reasoning tokens must be a whole number >= 0, got {self.reasoning_tokens!r}")
        # 0 is our default (not sent to a reasoning model), 1 the model's own: anything else can't be honoured.
        for model in filter(None, (self.model, self.fallback_model)):
            if self.temperature not in (0, 1) and self.style(model).reasoning:
                raise ConfigError(
                    f"temperature {self.temperature:g}: {model} is a reasoning model, which takes only its default "
                    "temperature; leave the temperature out (or set the model family to chat if it is not one)"
                )

    def style(self, model: str | None = None) -> CallStyle:
        """How requests to `model` (the batch's own by default) are written."""
        return call_style(model or self.model, self.model_family, self.reasoning_effort, self.reasoning_tokens)

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
