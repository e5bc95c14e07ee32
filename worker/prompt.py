"""The prompt, and what is done to the model's answer before it is stored. Pure functions.

Building the prompt lives in contract/prompt.py (the producer's `summarize estimate` counts it and derives
the result cache's keys from it without importing the worker); it is re-exported here, so the worker and
its tests name it as before. Cleaning and checking the answer is this module's.
"""

from __future__ import annotations

import json
import re
from typing import Any

from contract.errors import MalformedResponse
from contract.prompt import (
    _GT,
    _LTS,
    COMBINE,
    GUARD,
    JSON_ANSWER,
    PART,
    PLAIN,
    SYSTEM,
    TASK,
    WHOLE,
    Stage,
    build_messages,
    escape_tags,
    max_tokens_for,
    response_format,
    system_prompt,
)

__all__ = [
    "COMBINE",
    "GUARD",
    "JSON_ANSWER",
    "PART",
    "PLAIN",
    "SYSTEM",
    "TASK",
    "WHOLE",
    "_GT",
    "_LTS",
    "Stage",
    "build_messages",
    "clean_summary",
    "escape_tags",
    "max_tokens_for",
    "parse_structured",
    "response_format",
    "system_prompt",
]

# C0 and C1 controls (U+009B starts terminal escape sequences too); \t and \n are kept apart.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SPACES = re.compile(r"\s+")
_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


def clean_summary(content: str, max_chars: int, keep_lines: bool = False) -> str:
    """Plain text, bounded in size: what a user can put in a CSV cell or a database. One line, unless the
    batch's own prompt asked for a shape (bullets, headline and body): then line breaks are kept."""
    text = _CONTROL.sub(" ", content.replace("\r\n", "\n").replace("\r", "\n"))
    if keep_lines:
        lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
        text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    else:
        text = _SPACES.sub(" ", text).strip()
    if len(text) > max_chars:
        text = text[: max_chars - 1].rsplit(" ", 1)[0] + "…"
    return text


def parse_structured(content: str, schema: dict[str, Any], max_chars: int) -> str:
    """The answer as compact JSON text once it is an object valid under `schema`; else MalformedResponse
    (an unusable answer: retried within SUMMARIZE_MAX_UNUSABLE, then the article fails with this error)."""
    import jsonschema

    fenced = _FENCE.match(content)
    raw = fenced.group(1) if fenced else content
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise MalformedResponse(f"the answer is not JSON: {exc}") from None
    errors = sorted(jsonschema.validators.validator_for(schema)(schema).iter_errors(value), key=str)
    if errors:
        where = "/".join(str(p) for p in errors[0].absolute_path) or "the top level"
        raise MalformedResponse(f"the answer does not match the JSON schema at {where}: {errors[0].message}")
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if len(text) > max_chars:
        raise MalformedResponse(
            f"the JSON answer is {len(text)} characters; SUMMARIZE_MAX_SUMMARY_CHARS is {max_chars}"
        )
    return text
