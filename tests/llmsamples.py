"""The article, the structured-output schemas and the sentence check shared by localllm's unit tests and
the `summarize llm-serve` process tests."""

from __future__ import annotations

from typing import Any

import pydantic

from localllm.extractive import (
    split_sentences,
)

ARTICLE = """City council approves new park

The city council voted on Tuesday to approve a new park along the river.
The park will cover twelve acres and include walking trails, a playground and a community garden.
Council members said the park was the most requested project in the city's recent survey.
Construction of the park is expected to begin next spring and last about eighteen months.
Funding for the park comes from a state grant and the city's capital budget.
Some residents raised concerns about parking near the park during council hearings.
The mayor said the park would make the riverfront a place for every family in the city."""


def article_positions(summary: str, article: str) -> list[int]:
    """Indices of the article sentences that, joined by spaces, make up ``summary`` (fails otherwise)."""
    positions: list[int] = []
    rest = summary
    for index, sentence in enumerate(split_sentences(article)):
        if rest == sentence or rest.startswith(sentence + " "):
            positions.append(index)
            rest = rest[len(sentence) :].lstrip(" ")
    assert rest == "", f"not made of article sentences in order: {rest!r}"
    return positions


class Section(pydantic.BaseModel):
    heading: str
    sentences: list[str]


class Report(pydantic.BaseModel):
    """Written the way people write models for OpenAI's structured outputs: nested, optional, enums."""

    headline: str
    summary: str
    key_points: list[str]
    word_count: int
    confidence: float
    is_opinion: bool
    tone: str = pydantic.Field(json_schema_extra={"enum": ["neutral", "positive", "negative"]})
    section: Section
    byline: str | None


SCHEMAS: list[dict[str, Any]] = [
    Report.model_json_schema(),
    {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 10},
            "abstract": {"type": "string", "minLength": 100},
            "points": {"type": "array", "items": {"type": "string"}, "minItems": 6, "maxItems": 8},
            "few": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
            "score": {"type": "integer", "minimum": 1, "maximum": 5},
            "big": {"type": "integer", "exclusiveMinimum": 100},
            "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "kind": {"const": "news"},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 1},
            "nothing": {"type": "null"},
            "either": {"anyOf": [{"type": "null"}, {"type": "integer", "maximum": 2}]},
            "typed_list": {"type": ["string", "null"]},
        },
        "required": [
            "title",
            "abstract",
            "points",
            "few",
            "score",
            "big",
            "ratio",
            "kind",
            "tags",
            "nothing",
            "either",
            "typed_list",
        ],
        "additionalProperties": False,
    },
    {"type": "array", "items": {"type": "object", "properties": {"n": {"type": "integer"}}}, "minItems": 2},
]
