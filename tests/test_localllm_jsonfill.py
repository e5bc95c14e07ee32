"""localllm/jsonfill.py: the JSON filler's values are schema-valid and follow the text and field names."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from localllm.jsonfill import FillText, fill_schema
from tests.llmsamples import SCHEMAS, Report

TEXT = FillText(
    summary="Council approves a park by the river.",
    lead="The council voted.",
    sentences=("One.", "Two.", "Three.", "Four."),
)


@pytest.mark.parametrize("schema", SCHEMAS)
def test_filled_values_are_schema_valid(schema: dict[str, Any]) -> None:
    value = fill_schema(schema, TEXT)
    jsonschema.validate(value, schema)
    if isinstance(value, dict):
        assert set(value) == set(schema["properties"])  # every property, as strict mode requires


def test_an_enum_gets_the_value_the_text_names() -> None:
    topic = {"type": "string", "enum": ["politics", "science", "other"]}
    comet = FillText.plain("Astronomers confirmed the comet's orbit; science teachers cheered the science.")
    assert fill_schema(topic, comet) == "science"
    assert fill_schema(topic, FillText.plain("The bakery on Main Street sold out by noon.")) == "other"
    assert fill_schema({"enum": ["a", "b"]}, FillText.plain("nothing named")) == "a"


def test_filled_values_follow_field_names() -> None:
    report = Report.model_validate(fill_schema(Report.model_json_schema(), TEXT))
    assert report.headline == TEXT.lead
    assert report.summary == TEXT.summary
    assert report.key_points == ["One.", "Two.", "Three."]
    assert report.word_count == len(TEXT.summary.split())
    assert report.is_opinion is False
    assert report.tone == "neutral"
    assert report.section.sentences == ["One.", "Two.", "Three."]
