"""Cheap checks on every summary, against its own article: no model weights, no network, no references.

The worker runs `check()` once an answer is accepted and stores the result in the job's final record as
two small integers (FINAL `flags`, a bitmask of FLAGS, and `copied`, a percentage); a batch submitted with
`--require-checks` turns a flagged answer into an unusable one (worker/summarize.py). Flags:

- length:   more words than the batch's --max-words (plain summaries; a JSON answer has its own shape)
- numbers:  a number in the summary (digits; `3.5 million`, `$48m`, `12%`, `2,000`) whose value is not
            one the article states (its digits or number words, `two million` = `2,000,000`)
- names:    a capitalised word in the summary that the article never uses (in any case); a sentence's
            first word is taken for a name only when the next word is capitalised too
- refusal:  a refusal or boilerplate ("I can't", "As an AI", "Here is a summary") the article does not quote
- language: the summary is not in the expected language: the batch's --language, else the article's
            (py3langid, its model inside the wheel), skipped below MIN_LANGUAGE_CHARS characters

Score: `copied`, the share of the summary's word bigrams that occur in the article (an extractive
summary copies by design; 0 means every pair of words is new).

Budget: the worker spends about 2 ms of CPU on a job; these checks must stay under a tenth of that
(docs/quality.md has the microbench). Hence substring searches over one normalised copy of the article
rather than token sets, and language identification on a prefix of each text only.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

from .errors import ConfigError

#: the flags, in bit order: bit i of a record's `flags` is FLAGS[i] (never reorder; only append)
FLAGS = ("length", "numbers", "names", "refusal", "language")
BIT = {name: 1 << i for i, name in enumerate(FLAGS)}
#: below this many characters a summary's language is not judged: py3langid guesses wildly on a few words
MIN_LANGUAGE_CHARS = 40
#: how much of each text the language detector reads (its cost is ~0.4 µs a byte)
LANGUAGE_SAMPLE_CHARS = 120
#: the expected language must be this unlikely (py3langid's normalised probability) for the flag
LANGUAGE_DOUBT = 0.02
#: `copied` is stored as a whole percentage; -1 when the checks were not run (failed, older records)
NOT_CHECKED = -1

_SCALE = {"thousand": 1e3, "million": 1e6, "billion": 1e9, "trillion": 1e12, "k": 1e3, "m": 1e6, "bn": 1e9}
_WORD_NUMBERS = {
    w: float(i)
    for i, w in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
            "twenty",
        ]
    )
} | {w: float(10 * i) for i, w in enumerate(["thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"], 3)}
_WORD_NUMBERS |= {"dozen": 12.0, "hundred": 100.0}
# A number: digits with optional thousands separators and decimals, then an optional scale word, spaced
# (`3.5 million`) or attached (`$48m`, `2bn`). Not inside a longer token (`1.2.3`, `A4`).
_NUMBER = re.compile(
    r"(?<![\w.,])(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(?!\.\d)"
    r"(?:[\s-]?(thousand|million|billion|trillion)\b|(bn|m|k)\b)?",
    re.IGNORECASE,
)
_SPELLED = re.compile(
    r"\b(" + "|".join(_WORD_NUMBERS) + r")(?:[\s-]+(thousand|million|billion|trillion))?\b", re.IGNORECASE
)
# A capitalised word (Latin, Greek, Cyrillic capitals), not inside another word.
_CAPITALISED = re.compile(r"(?<![\w'’-])[A-ZÀ-ÖØ-ÞĀ-ſΑ-ΩА-Я][\w'’-]*")
#: before a sentence's first word (or a list item's, a quote's, a heading's)
_SENTENCE_END = frozenset(".!?:;\"“”‘'(\n[—–-•*#>")
_FIRST_PERSON = frozenset({"I", "I'm", "I’m", "I've", "I’ve", "I'd", "I’d", "I'll", "I’ll"})
#: refusal and boilerplate phrases, lower case, straight apostrophes (searched as substrings: one C scan each)
REFUSALS = (
    "i'm sorry", "i am sorry", "i apologize", "i apologise", "i can't", "i cannot", "i'm not able", "i'm unable",
    "i am not able", "i am unable", "i won't be able", "as an ai", "as a language model", "as an ai language model",
    "as a large language model", "i don't have access", "i do not have access", "unable to summarize",
    "unable to summarise", "cannot summarize", "cannot summarise", "can't summarize", "can't summarise",
    "here is a summary", "here's a summary", "here is the summary", "here's the summary", "here is a brief summary",
    "here's a brief summary", "here is a short summary", "here's a short summary", "here is your summary",
    "sure, here", "sure! here", "certainly! here", "certainly, here", "of course! here", "of course, here",
    "this article does not contain", "this article doesn't contain",
)  # fmt: skip
# ASCII punctuation and the common Unicode quotes and dashes become spaces: words are then found as
# " word" in one normalised byte string of the article (bytes.translate and `in` are C loops).
_TO_SPACE = bytes.maketrans(
    bytes(b for b in range(128) if not chr(b).isalnum()), b" " * sum(1 for b in range(128) if not chr(b).isalnum())
)
_UNICODE_PUNCT = tuple(c.encode() for c in "’‘“”—–…«»„·•")
#: each language's commonest words (lower case, as spaced() has them): a text using clearly more of one
#: language's than of any other's is in it, without asking py3langid (the language check's cheap path)
STOPWORDS: dict[str, frozenset[bytes]] = {
    lang: frozenset(w.encode() for w in words.split())
    for lang, words in {
        "en": "the and of to in is that for with was on are as it his her they have from by this be at which",
        "fr": "le la les des et est une du que qui dans pour pas sur au avec ce il elle sont aux ont",
        "de": "der die das und ist nicht ein eine mit von den dem zu auf sich des im für auch",
        "es": "el la los las y que en una es por con para del se su al lo como más",
        "it": "il di che è una per non della sono con gli si nel alla anche dei",
        "pt": "os de que do da em uma para com não no na dos das ao pelo",
        "nl": "het een en van is dat op te niet zijn voor met die er ook aan",
        "sv": "och att det som är på för med av inte den har till jag ett",
        "da": "og at det som er på for med af ikke den har til jeg et",
        "pl": "w na nie z się do że to jest o jak po co przez",
    }.items()
}


@dataclass(frozen=True, slots=True)
class Checks:
    """One summary's checks: `flags` a bitmask of FLAGS, `copied` a whole percentage (NOT_CHECKED: none)."""

    flags: int = 0
    copied: int = NOT_CHECKED

    @property
    def names(self) -> tuple[str, ...]:
        return names_of(self.flags)

    def public(self) -> dict[str, Any] | None:
        """The result row's `checks`: {"flags": [...], "copied": 0.42}, or None when not checked."""
        if self.copied == NOT_CHECKED:
            return None
        return {"flags": list(self.names), "copied": self.copied / 100}


def names_of(flags: int) -> tuple[str, ...]:
    return tuple(name for name in FLAGS if flags & BIT[name])


def bits(names: Iterable[str]) -> int:
    out = 0
    for name in names:
        out |= BIT[name]
    return out


def parse_names(raw: str | Iterable[str], option: str = "--require-checks") -> tuple[str, ...]:
    """`length,numbers` (or a list of names) as the checks' names in FLAGS order; an unknown one is a
    ConfigError naming it."""
    given = [p.strip().lower() for p in (raw.split(",") if isinstance(raw, str) else raw)]
    given = [p for p in given if p]
    unknown = [p for p in given if p not in BIT]
    if unknown:
        raise ConfigError(f"{option}: unknown check {', '.join(map(repr, unknown))}: the checks are {', '.join(FLAGS)}")
    if not given:
        raise ConfigError(f"{option}: name at least one check ({', '.join(FLAGS)})")
    return tuple(name for name in FLAGS if name in given)


def plain_text(summary: str, structured: bool) -> str:
    """The text the checks read: a JSON answer's string values, joined; a plain summary as it is."""
    if not structured:
        return summary
    import json

    try:
        value = json.loads(summary)
    except ValueError:
        return summary
    out: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(value)
    return ".\n".join(out)


def check(
    article: str, summary: str, max_words: int | None, language: str | None = None, structured: bool = False
) -> Checks:
    """Every check of `summary` against `article`. `max_words` None skips the length check; `language`
    (an ISO 639-1 code) is the language the summary must be in, else the article's."""
    text = plain_text(summary, structured)
    split = _normal(article).split()
    words = b" %s " % b" ".join(split)
    said = _normal(text).split()
    flags = 0
    if max_words is not None and not structured and len(text.split()) > max_words:
        flags |= BIT["length"]
    if _invented_numbers(article, text):
        flags |= BIT["numbers"]
    # The article's language by its common words, once (the names and language checks both want it).
    guessed = None if language else _guess(words[: LANGUAGE_SAMPLE_CHARS * 4].split())
    # German capitalises every noun: there a capitalised word is no sign of a name (docs/quality.md).
    if (language or guessed) != "de" and _invented_names(words, text):
        flags |= BIT["names"]
    if _refuses(article, text):
        flags |= BIT["refusal"]
    if _wrong_language(article, text, said, language or guessed):
        flags |= BIT["language"]
    if _UNSPACED.search(text):  # words not between spaces: pairs of characters instead
        return Checks(flags, _copied(_characters(article), _characters(text)))
    return Checks(flags, _copied(split, said))


def _normal(text: str) -> bytes:
    raw = text.lower().encode("utf-8")
    if not raw.isascii():
        for mark in _UNICODE_PUNCT:
            if mark in raw:
                raw = raw.replace(mark, b" ")
    return raw.translate(_TO_SPACE)


def spaced(text: str) -> bytes:
    """`text` lower-cased, punctuation dropped, its words between single spaces, a space at each end: a
    word (or words) is then found with one `in` (C), with no set of the article's words built."""
    return b" %s " % b" ".join(_normal(text).split())


# ---- numbers ------------------------------------------------------------------------------------------


def _values(text: str, article: bool) -> set[float]:
    """The values of the numbers `text` states. An article's also count without their scale (`$48 million`
    supports a summary's `48`) and in words (`two`); a summary's are read from digits (and `two million`)."""
    out: set[float] = set()
    for m in _NUMBER.finditer(text):
        whole, frac, word, short = m.groups()
        value = float(whole.replace(",", "") + ("." + frac if frac else ""))
        scale = word or short
        if scale:
            out.add(round(value * _SCALE[scale.lower()], 3))
            if article:
                out.add(value)
        else:
            out.add(value)
    for m in _SPELLED.finditer(text):
        value = _WORD_NUMBERS[m.group(1).lower()]
        if m.group(2):
            out.add(round(value * _SCALE[m.group(2).lower()], 3))
            if article:
                out.add(value)
        elif article:  # a summary's "one of the" is no claim of a number
            out.add(value)
    return out


def _stated(article: str, digits: str) -> bool:
    """`digits` (as the summary wrote them) stand on their own somewhere in the article: `48` in "$48
    million", not in "148" or "48.5"."""
    start, n = article.find(digits), len(digits)
    while start >= 0:
        before = article[start - 1] if start else " "
        after = article[start + n : start + n + 2]
        if (
            not before.isdigit()
            and before not in ".,"
            and not (after[:1].isdigit() or (after[:1] in ".," and after[1:].isdigit()))
        ):
            return True
        start = article.find(digits, start + 1)
    return False


def _invented_numbers(article: str, summary: str) -> bool:
    found = list(_NUMBER.finditer(summary))
    scaled_words = _scaled_words(summary)
    if not found and not scaled_words:
        return False
    # The common case, cheaply: every number the summary writes is written the same way in the article.
    if not scaled_words and all(_stated(article, m.group(0)) for m in found):
        return False
    said = _values(summary, article=False)
    return bool(said) and not said <= _values(article, article=True)


def _scaled_words(summary: str) -> bool:
    """Whether the summary writes a number in words with a scale ("two million"): found from the scale
    words (rare), not by running _SPELLED over every summary."""
    lower = summary.lower()
    for scale in ("million", "billion", "trillion", "thousand"):
        at = lower.find(scale)
        while at >= 0:
            before = lower[max(0, at - 24) : at].replace("-", " ").split()
            if before and before[-1] in _WORD_NUMBERS:
                return True
            at = lower.find(scale, at + 1)
    return False


# ---- names --------------------------------------------------------------------------------------------


def _invented_names(words: bytes, summary: str) -> bool:
    for m in _CAPITALISED.finditer(summary):
        w = m.group(0)
        if w in _FIRST_PERSON:
            continue
        i = m.start() - 1
        while i >= 0 and summary[i] == " ":
            i -= 1
        if i < 0 or summary[i] in _SENTENCE_END:
            # A sentence's first word is capitalised whatever it is: a name only if the next one is too.
            nxt = m.end() + 1
            if summary[m.end() : nxt] != " " or not summary[nxt : nxt + 1].isupper():
                continue
        key = w.rstrip("'’-")
        for suffix in ("'s", "’s"):
            key = key.removesuffix(suffix)
        found = key.lower().encode() if key.isalpha() and key.isascii() else b" ".join(_normal(key).split())
        if b" %s " % found not in words:
            return True
    return False


# ---- refusals -----------------------------------------------------------------------------------------


def _refuses(article: str, summary: str) -> bool:
    said = summary.lower().replace("’", "'")
    if "i" not in said:  # every phrase has one: most summaries are done here
        return False
    lower = article.lower()
    return any(phrase in said and phrase not in lower.replace("’", "'") for phrase in REFUSALS)


# ---- language -----------------------------------------------------------------------------------------


@cache
def _identifier() -> Any:
    """py3langid's identifier with normalised probabilities, loaded once per process (half a second)."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def languages() -> frozenset[str]:
    """The ISO 639-1 codes the language check knows."""
    return frozenset(_identifier().nb_classes)


def warm() -> None:
    """Load the language model now (a worker does at start, not in its first job)."""
    _identifier()


def language_of(text: str) -> str:
    """The ISO 639-1 code py3langid gives the start of `text`."""
    lang: str = _identifier().classify(text[:LANGUAGE_SAMPLE_CHARS])[0]
    return lang


def _guess(words: Iterable[bytes]) -> str | None:
    """The language whose common words `words` use clearly most (STOPWORDS), or None when none does."""
    seen = set(words)
    hits = sorted(((len(seen & common), lang) for lang, common in STOPWORDS.items()), reverse=True)
    (top, lang), (second, _) = hits[0], hits[1]
    return lang if top >= 4 and top >= 2 * second else None


def _wrong_language(article: str, summary: str, said: list[bytes], language: str | None) -> bool:
    """`language`: the expected one (--language, or the article's by its common words), else None."""
    if len(summary) < MIN_LANGUAGE_CHARS:
        return False
    expected = language or language_of(article)
    common = STOPWORDS.get(expected)
    if common is not None:
        # The cheap way first: a summary that uses the expected language's common words, and clearly more
        # of them than another's, is in it. Only the rest goes to py3langid (~0.4 us a byte).
        seen = set(said)
        mine = len(seen & common)
        if mine >= 3 and all(mine > 2 * len(seen & other) for lang, other in STOPWORDS.items() if lang != expected):
            return False
    ident = _identifier()
    sample = summary[:LANGUAGE_SAMPLE_CHARS]
    got, _ = ident.classify(sample)
    if got == expected:
        return False
    # Not the top guess: flagged only if the expected language is unlikely too (names and numbers can
    # tip a short English text towards another language's top score).
    probs = dict(ident.rank(sample))
    return float(probs.get(expected, 0.0)) < LANGUAGE_DOUBT


# ---- copying ------------------------------------------------------------------------------------------


#: scripts written without spaces between words (kana, CJK ideographs, Thai, Lao, Myanmar, Khmer)
_UNSPACED = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff]")


def _characters(text: str) -> list[str]:
    """`text`'s letters and digits, lower case, in order: the units of `copied` for a script without spaces."""
    return [c for c in text.lower() if c.isalnum()]


def _copied(article: list[bytes] | list[str], said: list[bytes] | list[str]) -> int:
    """Whole percent of the summary's distinct word bigrams that occur in the article (both as lists of
    normalised words): one pass over the article's pairs against the summary's few."""
    pairs = set(itertools.pairwise(said))
    if not pairs:
        return 0
    return round(100 * len(pairs.intersection(itertools.pairwise(article))) / len(pairs))
