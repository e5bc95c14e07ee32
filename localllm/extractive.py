"""Extractive news summarizer (sumy LexRank + nupunkt): the model behind the offline LLM server."""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Sequence
from typing import Any

MODEL_NAME = "sumy-lexrank"
LANGUAGE = "english"
ELLIPSIS = "…"
MAX_RANKED_SENTENCES = 200

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
# Letters/digits only, keeping in-word apostrophes, so "don't" stays one term for LexRank.
_WORD_RE = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
# Blank lines separate paragraphs (and headlines, which often lack a final period).
_PARAGRAPH_RE = re.compile(r"\n\s*\n")
_ENDS_SENTENCE_RE = re.compile(r"[.!?…][\"'”’)\]]*$")

_lock = threading.Lock()
_summarizer: Any = None


def count_tokens(text: str) -> int:
    """Number of tokens in ``text`` according to this model's own tokenizer."""
    return len(_TOKEN_RE.findall(text))


def truncate_tokens(text: str, max_tokens: int) -> str:
    """The longest prefix of ``text`` holding at most ``max_tokens`` tokens."""
    if max_tokens <= 0:
        return ""
    for index, match in enumerate(_TOKEN_RE.finditer(text), start=1):
        if index == max_tokens:
            # A token ends where the regex stops matching, so the prefix re-tokenizes identically.
            return text[: match.end()]
    return text


def summarize_text(text: str, max_words: int) -> str:
    """Pick the best LexRank sentences fitting in ``max_words`` words, kept in article order."""
    if max_words < 1:
        raise ValueError(f"max_words must be at least 1, got {max_words}")
    sentences = candidate_sentences(text)
    ranked = _rank(sentences)
    chosen: list[int] = []
    used = 0
    for index in ranked:
        words = len(sentences[index].split())
        if used + words <= max_words:
            chosen.append(index)
            used += words
    if not chosen:
        return _cut_words(sentences[ranked[0]], max_words)
    return " ".join(sentences[index] for index in sorted(chosen))


def top_sentences(text: str, count: int) -> list[str]:
    """The ``count`` best-ranked sentences, best first (fewer if the article is shorter)."""
    sentences = candidate_sentences(text)
    return [sentences[index] for index in _rank(sentences)[: max(count, 0)]]


def lead_sentence(text: str, max_words: int) -> str:
    """The article's first real sentence (a news lead), cut to ``max_words`` words."""
    return _cut_words(candidate_sentences(text)[0], max(max_words, 1))


def candidate_sentences(text: str) -> list[str]:
    """The sentences a summary is made of; ValueError when there are none."""
    sentences = split_sentences(text)
    if not sentences:
        raise ValueError("text to summarize is empty")
    # Headlines, datelines and bylines carry no final punctuation and would run into the next
    # sentence once joined, so they only compete when nothing else is left.
    sentences = [s for s in sentences if _ENDS_SENTENCE_RE.search(s)] or sentences
    # LexRank is quadratic in pure Python (2,000 sentences take about a minute); a news
    # article's substance is in its first few hundred sentences anyway.
    return sentences[:MAX_RANKED_SENTENCES]


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` with whitespace normalised to single spaces."""
    import nupunkt

    sentences: list[str] = []
    for paragraph in _PARAGRAPH_RE.split(text):
        normalised = " ".join(paragraph.split())
        if not normalised:
            continue
        for sentence in nupunkt.sent_tokenize(normalised):
            cleaned = " ".join(str(sentence).split())
            if cleaned:
                sentences.append(cleaned)
    return sentences


def warm_up() -> None:
    """Pay the slow sumy/nupunkt imports and model loading now instead of on the first request."""
    _get_summarizer()


def _cut_words(sentence: str, max_words: int) -> str:
    words = sentence.split()
    if len(words) <= max_words:
        return sentence
    return " ".join(words[:max_words]) + ELLIPSIS


def _rank(sentences: Sequence[str]) -> list[int]:
    """Indices into ``sentences``, best LexRank score first (ties keep article order)."""
    if len(sentences) == 1:
        return [0]
    import numpy
    from sumy.models.dom import ObjectDocumentModel, Paragraph, Sentence

    summarizer = _get_summarizer()
    tokenizer = _WordTokenizer()
    document = ObjectDocumentModel([Paragraph([Sentence(s, tokenizer) for s in sentences])])

    ranked: list[int] = []
    degenerate = False

    def keep_all(infos: Sequence[Any]) -> Sequence[Any]:
        nonlocal degenerate
        # sumy hands a callable count the sentences sorted best-first; it is the only public
        # way to see the full ranking rather than a top-N re-sorted into document order.
        ranked.extend(int(info.order) for info in infos)
        degenerate = any(math.isnan(info.rating) for info in infos)
        return infos

    # With no shared informative terms (e.g. two sentences, where every idf is <= 0) the
    # similarity matrix is all zeros and the power method divides 0 by 0.
    with numpy.errstate(invalid="ignore", divide="ignore"):
        summarizer(document, keep_all)
    if degenerate:
        return list(range(len(sentences)))  # a news article's lead is the best fallback
    return ranked


def _get_summarizer() -> Any:
    global _summarizer
    # Importing sumy costs ~2 s, so it happens on first use, once, even under concurrent requests.
    with _lock:
        if _summarizer is None:
            import nupunkt
            from sumy.nlp.stemmers import Stemmer
            from sumy.summarizers.lex_rank import LexRankSummarizer
            from sumy.utils import get_stop_words

            nupunkt.sent_tokenize("Load the model.")  # so warm_up() also covers the punkt model load
            summarizer = LexRankSummarizer(Stemmer(LANGUAGE))
            summarizer.stop_words = get_stop_words(LANGUAGE)
            _summarizer = summarizer
        return _summarizer


class _WordTokenizer:
    """Word tokenizer for sumy that needs no NLTK data downloads."""

    language = LANGUAGE

    def to_words(self, sentence: str) -> tuple[str, ...]:
        return tuple(_WORD_RE.findall(sentence))
