"""Fault directives inside article text (``[[fault:500x2]]``) and the fault-free answer of an article."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from contract.openai_shapes import extract_article

__all__ = [
    "MODEL_ID",
    "BadDirective",
    "Directive",
    "article_key",
    "expected_summary",
    "extract_article",
    "parse_directives",
    "prompt_tokens",
    "select_fault",
]

MODEL_ID = "fake-model"
SUMMARY_WORDS = 12
LENGTH_FAULT_WORDS = 3
CHARS_PER_TOKEN = 4

#: Faults that answer with an HTTP error status.
ERROR_KINDS = frozenset({"400", "401", "404", "429", "500", "502", "503"})
_MARKER_RE = re.compile(r"\[\[.*?\]\]", re.DOTALL)
_FAULT_MARKER_RE = re.compile(r"\[\[fault:(.*?)\]\]", re.DOTALL)
_DIRECTIVE_RE = re.compile(
    r"(?P<kind>429|500|502|503|400|401|404|hang|trickle|reset|garbage|empty|blank|length|reasoning"
    r"|invent|foreign|long|refuse)"
    r"(?:x(?P<count>\d+))?(?::(?P<param>[0-9]+(?:\.[0-9]+)?))?"
)
_PARAM_KINDS = frozenset({"429", "hang", "trickle"})


def article_key(article: str) -> str:
    """Key of the per-article request counter (markers are part of the hashed text)."""
    return hashlib.sha256(article.encode("utf-8")).hexdigest()


def expected_summary(article: str) -> str:
    """The completion the server returns for ``article`` when no fault applies (plain-text answers)."""
    words = _MARKER_RE.sub(" ", article).split()
    return "Summary: " + " ".join(words[:SUMMARY_WORDS])


#: the quality faults (a usable 200 whose summary contract/checks.py flags): invent adds a number the article
#: lacks, foreign answers in French, long with LONG_WORDS of the article's words, refuse with a refusal
QUALITY_KINDS = frozenset({"invent", "foreign", "long", "refuse"})
INVENTED = " The plan will cost 987,654,321 dollars."
FOREIGN = (
    "Le conseil a voté mardi soir pour remplacer le vieux pont, un projet attendu depuis longtemps par les "
    "habitants du quartier et les commerçants de la ville."
)
REFUSAL = "I'm sorry, but I can't help with summarizing this article."
LONG_WORDS = 200


def quality_answer(kind: str, article: str) -> str:
    """The summary a quality fault answers with (tests/test_checks.py: each flagged by exactly its check)."""
    if kind == "invent":
        return expected_summary(article) + INVENTED
    if kind == "foreign":
        return FOREIGN
    if kind == "long":
        return "Summary: " + " ".join(_MARKER_RE.sub(" ", article).split()[:LONG_WORDS])
    return REFUSAL


def prompt_tokens(texts: Iterable[str]) -> int:
    """A request's prompt tokens the way providers estimate them to admit it: a token per 4 characters."""
    return math.ceil(sum(len(t) for t in texts) / CHARS_PER_TOKEN)


@dataclass(frozen=True, slots=True)
class Directive:
    kind: str
    count: int | None  # None = every request
    param: str | None


class BadDirective(ValueError):
    pass


def parse_directives(article: str) -> list[Directive]:
    directives: list[Directive] = []
    for body in _FAULT_MARKER_RE.findall(article):
        m = _DIRECTIVE_RE.fullmatch(body)
        # A typo in a directive must not silently turn into a passing "normal" request.
        if m is None:
            raise BadDirective(f"faultserver: malformed fault directive [[fault:{body}]]")
        kind, param = m["kind"], m["param"]
        if param is not None and kind not in _PARAM_KINDS:
            raise BadDirective(f"faultserver: [[fault:{body}]] takes no ':' parameter")
        directives.append(Directive(kind, int(m["count"]) if m["count"] else None, param))
    return directives


def select_fault(directives: list[Directive], request_number: int) -> Directive | None:
    """The directive owning the ``request_number``-th request for an article (1-based), if any."""
    remaining = request_number
    for directive in directives:
        if directive.count is None or remaining <= directive.count:
            return directive
        remaining -= directive.count
    return None
