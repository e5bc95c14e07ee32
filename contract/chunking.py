"""Splitting an article that does not fit the model's context into parts. Pure functions.

Cut on paragraph boundaries, else sentence boundaries, else between words (else, inside a "word" longer
than a part, between characters); each part is as large as the room allows (fewer, larger parts cost
fewer calls and lose less context), and consecutive parts share a little text so a fact cut in two is
whole in one of them.

Linear in the text: `count` is called on pieces no larger than about twice a part, a bounded number of
times per part (a galloping then halving search for the longest run of words that fits), never on a
growing prefix word by word (that was quadratic: 5.5 s of CPU per MB of unpunctuated text). Pure and
free of shared state, so the worker runs it in a thread, off its event loop. `Fit` says what fits one
request. Shared by the worker and the producer (`summarize estimate` tells how many articles would be
split, and into how many parts, the way the worker will split them).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from .prompt import Stage, build_messages, max_tokens_for
from .spec import BatchSpec

_PARAGRAPHS = re.compile(r"\n\s*\n")
_SENTENCES = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+")
#: the smallest step of the search, in characters: below it, halving costs more calls than it saves
_MIN_STEP = 16

Count = Callable[[str], int]

#: share of the context window a request may fill: estimates are estimates
CONTEXT_MARGIN = 0.95
#: tokens consecutive parts share
OVERLAP_TOKENS = 200


class Request(Protocol):
    """What `Fit.fits` looks at in a request (worker/summarize.py's Ask)."""

    @property
    def messages(self) -> list[dict[str, str]]: ...

    @property
    def max_tokens(self) -> int: ...


@dataclass(frozen=True)
class Fit:
    """What fits one request: the model's context window, and how a request's tokens are counted."""

    context: int
    count: Callable[[list[dict[str, Any]], int], int]

    def fits(self, ask: Request) -> bool:
        return self.count(ask.messages, ask.max_tokens) <= self.context * CONTEXT_MARGIN

    def room(self, spec: BatchSpec, stage: Stage, max_tokens: int) -> int:
        """Tokens left for the text of a request of this stage."""
        overhead = self.count(build_messages("", spec, stage), max_tokens)
        return int(self.context * CONTEXT_MARGIN) - overhead

    def count_text(self, text: str) -> int:
        return self.count([{"role": "user", "content": text}], 0)

    def shrunk(self, limit: int | None) -> Fit:
        """The provider said a request did not fit: plan with its number, or three quarters of ours."""
        return replace(self, context=min(limit or self.context, int(self.context * 0.75)))

    def part_room(self, spec: BatchSpec) -> int:
        """Tokens of article text one part of a split article may hold (below 100: no room for a part)."""
        answer_room = max_tokens_for(spec.max_words) + spec.style().reasoning_tokens
        return self.room(spec, Stage("part", 1, 1, final=False), answer_room)

    def parts(self, text: str, room: int) -> list[str]:
        """The parts a text that does not fit whole is split into, `room` tokens each at most."""
        return split(text, room, self.count_text, min(OVERLAP_TOKENS, room // 10))


def split(text: str, max_tokens: int, count: Count, overlap_tokens: int = 0) -> list[str]:
    """Parts of at most `max_tokens` each (by `count`), in order, overlapping by about `overlap_tokens`."""
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    # Runs cut from one long sentence leave room for the overlap, so the next part can start with it.
    run = max(1, max_tokens - overlap_tokens) if overlap_tokens * 2 < max_tokens else max_tokens
    units = [u for p in _PARAGRAPHS.split(text) for u in _fit(p.strip(), max_tokens, count, run) if u]
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


def _fit(paragraph: str, max_tokens: int, count: Count, run: int) -> list[str]:
    """The paragraph as units no larger than `max_tokens`: itself, its sentences, or runs of words (of at
    most `run` tokens)."""
    if count(paragraph) + 1 <= max_tokens:
        return [paragraph]
    out: list[str] = []
    for sentence in _SENTENCES.split(paragraph):
        if count(sentence) + 1 <= max_tokens:
            out.append(sentence)
        else:
            out += _words(sentence, run, count)
    return out


def _words(sentence: str, max_tokens: int, count: Count) -> list[str]:
    """The sentence's words, single-spaced, in runs each as long as fits in `max_tokens`."""
    flat = " ".join(sentence.split())  # 3x faster than a regex substitution on megabytes
    out: list[str] = []
    start, guess = 0, 0
    while start < len(flat):

        def fits(end: int, begin: int = start) -> bool:
            return count(flat[begin:end]) + 1 <= max_tokens

        end = _longest_fit(flat, start, guess, fits)
        out.append(flat[start:end])
        guess = end - start
        start = end + 1 if end < len(flat) and flat[end] == " " else end
    return out


def _longest_fit(flat: str, start: int, guess: int, fits: Callable[[int], bool]) -> int:
    """The end of the longest run of whole words of `flat` from `start` that `fits` (monotone in the end),
    else of the longest run of characters (one word longer than the room), at least one character."""
    top = len(flat)
    lo, hi = start, top + 1  # fits(lo) holds (nothing fits in any room); fits(hi) does not (past the end)
    # Gallop from the last part's length (parts of one text are alike) to bracket the end, then halve.
    step = max(_MIN_STEP, guess // 16)
    probe = min(top, start + max(guess, _MIN_STEP))
    if fits(probe):
        lo = probe
        while lo < top:
            probe = min(top, lo + step)
            if not fits(probe):
                hi = probe
                break
            lo, step = probe, step * 2
    else:
        hi = probe
        while hi - step > start:
            if fits(hi - step):
                lo = hi - step
                break
            hi, step = hi - step, step * 2
    if lo == top:
        return top
    lo, hi = _halve(lo, hi, fits, lambda lo, hi: flat.find(" ", lo + 1, hi) != -1)
    if lo > start and flat[lo] == " ":
        return lo
    space = flat.rfind(" ", start + 1, lo + 1)
    if space > start:
        return space
    # A single word longer than a part: cut it between characters, as long as fits.
    lo, hi = _halve(lo, hi, fits, lambda lo, hi: True)
    return max(lo, start + 1)


def _halve(lo: int, hi: int, fits: Callable[[int], bool], worth: Callable[[int, int], bool]) -> tuple[int, int]:
    """Narrow (lo fits, hi does not) while `worth` says an end strictly between them could matter."""
    while hi - lo > 1 and worth(lo, hi):
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo, hi


def _tail(units: list[str], overlap: int, room: int, count: Count) -> list[str]:
    """The last sentences of a part, up to `overlap` tokens (and what fits beside the next unit); its
    last words when not even one whole sentence does (a run of words cut from an unpunctuated text)."""
    budget = min(overlap, room)
    if budget < 2 or not units:
        return []
    tail: list[str] = []
    size = 0
    for sentence in reversed(_SENTENCES.split(units[-1])):
        n = count(sentence) + 1
        if size + n > budget:
            break
        tail.insert(0, sentence)
        size += n
    if tail:
        return [" ".join(tail)]
    words = _last_words(units[-1], budget, count)
    return [words] if words else []


def _last_words(text: str, budget: int, count: Count) -> str:
    """The longest run of whole words ending `text` that fits in `budget` tokens ('' if no word does)."""
    window = " ".join(text[-64 * budget :].split())
    if len(window) < len(text.strip()):
        window = window.partition(" ")[2]  # its first word may be cut
    reverse = window[::-1]
    end = _longest_fit(reverse, 0, 4 * budget, lambda e: count(reverse[:e][::-1]) + 1 <= budget)
    if end < len(reverse) and reverse[end] != " ":
        return ""  # only part of a word would fit
    return reverse[:end][::-1]


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
