"""Answers for ``response_format: json_schema``: an object valid under the client's schema, filled from a text.

Pure and dependency-free so the offline server and the test fault server give the same kind of answer:
string fields named like a headline get the lead sentence, other strings the summary, arrays of strings
the best sentences, numbers the summary's word count within the schema's bounds, booleans false, enums
the value the text names most often (else one meaning "other", else the first). Every property is
filled, which is what strict mode demands. Only what OpenAI's structured outputs accept is handled
(local ``$ref``, ``anyOf``, ``enum``/``const``, bounds); ``pattern`` and ``format`` are not generated.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

JSONObject = dict[str, Any]

# A recursive schema (a tree of sections) would otherwise recurse forever; real answers stay shallow.
MAX_DEPTH = 8
DEFAULT_ARRAY_ITEMS = 3
_LEAD_NAMES = ("headline", "title", "lead")
# What an enum offers for "none of these": chosen when the text names none of the values.
_OTHER_VALUES = ("other", "unknown", "none", "n/a")


@dataclass(frozen=True, slots=True)
class FillText:
    """The texts an answer is made of."""

    summary: str
    lead: str
    sentences: tuple[str, ...]  # best first

    @classmethod
    def plain(cls, text: str) -> FillText:
        """One text for every field (what a model without sentence ranking would say)."""
        return cls(summary=text, lead=text, sentences=(text,))


def fill_schema(schema: JSONObject, text: FillText) -> Any:
    """A value valid under ``schema`` (a JSON Schema object) made of ``text``."""
    return _Filler(schema, text).value(schema, "", 0)


def json_object_answer(text: FillText) -> JSONObject:
    """The answer to ``response_format: json_object``, which promises JSON but no particular shape."""
    return {"summary": text.summary}


class _Filler:
    def __init__(self, root: JSONObject, text: FillText) -> None:
        self.root = root
        self.text = text
        self.by_type: dict[str, Callable[[JSONObject, str, int], Any]] = {
            "object": self._object,
            "array": self._array,
            "string": self._string,
            "integer": self._integer,
            "number": self._number,
            "boolean": lambda schema, name, depth: False,
            "null": lambda schema, name, depth: None,
        }

    def value(self, schema: Any, name: str, depth: int) -> Any:
        schema = self._resolve(schema)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return self._choose(enum)
        for key in ("anyOf", "oneOf", "allOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                # A nullable field is written anyOf [T, null]: prefer the option that carries content.
                chosen = next((o for o in options if _type_of(self._resolve(o)) != "null"), options[0])
                return self.value(chosen, name, depth)
        return self.by_type.get(_type_of(schema), self._string)(schema, name, depth)

    def _resolve(self, schema: Any) -> JSONObject:
        seen = 0
        while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and seen < MAX_DEPTH:
            schema = _pointer(self.root, schema["$ref"])
            seen += 1
        return schema if isinstance(schema, dict) else {}

    @cached_property
    def _word_counts(self) -> Counter[str]:
        """How often each word occurs in the text (counted once per answer, for every enum in it)."""
        return Counter(re.findall(r"[a-z0-9]+", " ".join((self.text.summary, *self.text.sentences)).lower()))

    def _choose(self, enum: list[Any]) -> Any:
        """The value the text names most often: an honest classifier for an extractive server, nothing more."""
        counts = self._word_counts

        def named(value: Any) -> int:
            return sum(counts[w] for w in re.findall(r"[a-z0-9]+", str(value).lower())) if isinstance(value, str) else 0

        best = max(enum, key=named)
        if named(best) > 0:
            return best
        return next((v for v in enum if isinstance(v, str) and v.lower() in _OTHER_VALUES), enum[0])

    def _object(self, schema: JSONObject, name: str, depth: int) -> JSONObject:
        properties = schema.get("properties")
        if not isinstance(properties, dict) or depth >= MAX_DEPTH:
            return {}
        return {key: self.value(sub, key, depth + 1) for key, sub in properties.items()}

    def _array(self, schema: JSONObject, name: str, depth: int) -> list[Any]:
        if depth >= MAX_DEPTH:
            return []
        low, high = _int_bound(schema, "minItems", 0), _int_bound(schema, "maxItems", None)
        available = len(self.text.sentences) or 1
        count = max(low or 0, min(available, DEFAULT_ARRAY_ITEMS if high is None else high))
        items = self._resolve(schema.get("items"))
        if _type_of(items) == "string" and not items.get("enum") and "const" not in items:
            sentences = self.text.sentences or (self.text.summary,)
            return [_fit_string(items, sentences[i % len(sentences)]) for i in range(count)]
        return [self.value(items, name, depth + 1) for _ in range(count)]

    def _string(self, schema: JSONObject, name: str, depth: int) -> str:
        lowered = name.lower()
        text = self.text.lead if any(word in lowered for word in _LEAD_NAMES) else self.text.summary
        return _fit_string(schema, text)

    def _integer(self, schema: JSONObject, name: str, depth: int) -> int:
        low, high = _number_bounds(schema, step=1)
        value = float(len(self.text.summary.split()))
        return int(_clamp(value, _ceil(low), None if high is None else float(int(high // 1))))

    def _number(self, schema: JSONObject, name: str, depth: int) -> float:
        low, high = _number_bounds(schema, step=0.5)
        return _clamp(float(len(self.text.summary.split())), low, high)


def _type_of(schema: JSONObject) -> str:
    declared = schema.get("type")
    if isinstance(declared, list):
        declared = next((t for t in declared if t != "null"), declared[0] if declared else None)
    if isinstance(declared, str):
        return declared
    if "properties" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return "string"


def _pointer(root: JSONObject, ref: str) -> Any:
    if not ref.startswith("#"):
        return {}  # remote references are not part of OpenAI's supported subset
    node: Any = root
    for part in ref.lstrip("#").strip("/").split("/"):
        if not part:
            continue
        key = part.replace("~1", "/").replace("~0", "~")
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _fit_string(schema: JSONObject, text: str) -> str:
    high = _int_bound(schema, "maxLength", None)
    if high is not None and len(text) > high:
        text = text[:high]
    low = _int_bound(schema, "minLength", 0) or 0
    return text.ljust(low, ".")


def _int_bound(schema: JSONObject, key: str, default: int | None) -> int | None:
    value = schema.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _number_bounds(schema: JSONObject, step: float) -> tuple[float | None, float | None]:
    """Inclusive bounds; an exclusive bound is moved inwards by ``step`` (or halfway to the other bound)."""
    low = _num(schema.get("minimum"))
    high = _num(schema.get("maximum"))
    ex_low, ex_high = _num(schema.get("exclusiveMinimum")), _num(schema.get("exclusiveMaximum"))
    if ex_low is not None:
        low = max(low, ex_low + step) if low is not None else ex_low + step
    if ex_high is not None:
        high = min(high, ex_high - step) if high is not None else ex_high - step
    if ex_low is not None and ex_high is not None and ex_low + step >= ex_high:
        low = high = (ex_low + ex_high) / 2
    return low, high


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _ceil(value: float | None) -> float | None:
    return None if value is None else float(-int(-value // 1))


def _clamp(value: float, low: float | None, high: float | None) -> float:
    if low is not None:
        value = max(value, low)
    if high is not None:
        value = min(value, high)
    return value
