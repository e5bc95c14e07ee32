"""Splitting an article that does not fit the model's context into parts. Pure functions.

Cut on paragraph boundaries, else sentence boundaries, else between words; each part is as large as
the room allows (fewer, larger parts cost fewer calls and lose less context), and consecutive parts
share a little text so a fact cut in two is whole in one of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_PARAGRAPHS = re.compile(r"\n\s*\n")
_SENTENCES = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+")

Count = Callable[[str], int]


def split(text: str, max_tokens: int, count: Count, overlap_tokens: int = 0) -> list[str]:
    """Parts of at most `max_tokens` each (by `count`), in order, overlapping by about `overlap_tokens`."""
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    units = [u for p in _PARAGRAPHS.split(text) for u in _fit(p.strip(), max_tokens, count) if u]
    parts: list[str] = []
    current: list[str] = []
    size = 0
    for unit in units:
        n = count(unit) + 1
        if current and size + n > max_tokens:
            parts.append(_join(current))
            current = _tail(current, overlap_tokens, max_tokens - n, count)
            size = sum(count(u) + 1 for u in current)
        current.append(unit)
        size += n
    if current:
        parts.append(_join(current))
    return parts


def _fit(paragraph: str, max_tokens: int, count: Count) -> list[str]:
    """The paragraph as units no larger than `max_tokens`: itself, its sentences, or runs of words."""
    if count(paragraph) + 1 <= max_tokens:
        return [paragraph]
    out: list[str] = []
    for sentence in _SENTENCES.split(paragraph):
        if count(sentence) + 1 <= max_tokens:
            out.append(sentence)
        else:
            out += _words(sentence, max_tokens, count)
    return out


def _words(sentence: str, max_tokens: int, count: Count) -> list[str]:
    out: list[str] = []
    run: list[str] = []
    for word in sentence.split():
        if run and count(" ".join([*run, word])) + 1 > max_tokens:
            out.append(" ".join(run))
            run = []
        run.append(word)
    if run:
        out.append(" ".join(run))
    return out


def _tail(units: list[str], overlap: int, room: int, count: Count) -> list[str]:
    """The last sentences of a part, up to `overlap` tokens (and what fits beside the next unit)."""
    budget = min(overlap, room)
    tail: list[str] = []
    size = 0
    for sentence in reversed(_SENTENCES.split(units[-1]) if units else []):
        n = count(sentence) + 1
        if size + n > budget:
            break
        tail.insert(0, sentence)
        size += n
    return [" ".join(tail)] if tail else []


def _join(units: list[str]) -> str:
    return "\n\n".join(units)


def groups(summaries: list[str], max_tokens: int, count: Count) -> list[list[str]]:
    """Consecutive summaries grouped so each group's text fits `max_tokens` (for a round of combining)."""
    out: list[list[str]] = [[]]
    size = 0
    for s in summaries:
        n = count(s) + 2
        if out[-1] and size + n > max_tokens:
            out.append([])
            size = 0
        out[-1].append(s)
        size += n
    return out
