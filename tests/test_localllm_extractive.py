"""localllm/extractive.py: the offline summarizer and its token helpers."""

from __future__ import annotations

import pytest

from localllm.extractive import (
    MAX_RANKED_SENTENCES,
    count_tokens,
    lead_sentence,
    split_sentences,
    summarize_text,
    top_sentences,
    truncate_tokens,
)
from tests.llmsamples import ARTICLE, article_positions


def test_summary_keeps_article_order_and_word_limit() -> None:
    summary = summarize_text(ARTICLE, 40)
    assert len(summary.split()) <= 40
    assert len(article_positions(summary, ARTICLE)) >= 2


def test_headline_without_punctuation_is_skipped() -> None:
    summary = summarize_text(ARTICLE, 200)
    assert not summary.startswith("City council approves new park")
    assert summary.startswith("The city council voted")
    assert summarize_text("Council approves park", 10) == "Council approves park"


def test_summary_is_deterministic_and_whitespace_normalised() -> None:
    messy = ARTICLE.replace(" ", "  \t").replace("\n", " \n ")
    assert summarize_text(messy, 50) == summarize_text(ARTICLE, 50)
    assert "  " not in summarize_text(messy, 50)


def test_long_single_sentence_is_cut_with_ellipsis() -> None:
    sentence = "The committee approved the plan after a long and heated debate about costs."
    assert summarize_text(sentence, 5) == "The committee approved the plan…"
    assert summarize_text(f"  {sentence}\n", 50) == sentence


def test_best_sentence_cut_when_nothing_fits() -> None:
    summary = summarize_text(ARTICLE, 3)
    assert summary.endswith("…")
    assert len(summary.split()) == 3


def test_only_leading_sentences_are_ranked() -> None:
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    text = " ".join(f"Report {words[i % 10]} {words[i // 10 % 10]} came {i}." for i in range(MAX_RANKED_SENTENCES + 50))
    summary = summarize_text(text, 10_000)
    assert f"came {MAX_RANKED_SENTENCES - 1}." in summary
    assert f"came {MAX_RANKED_SENTENCES}." not in summary


def test_lead_and_top_sentences() -> None:
    assert lead_sentence(ARTICLE, 100) == "The city council voted on Tuesday to approve a new park along the river."
    assert lead_sentence(ARTICLE, 3) == "The city council…"
    top = top_sentences(ARTICLE, 3)
    assert len(top) == 3
    assert set(top) <= set(split_sentences(ARTICLE))
    assert len(top_sentences(ARTICLE, 100)) == 7  # the headline only competes when nothing else is left


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_blank_text_raises(text: str) -> None:
    with pytest.raises(ValueError):
        summarize_text(text, 50)


def test_token_helpers() -> None:
    assert count_tokens("Hello, world! It's fine.") == 9
    assert truncate_tokens("Hello, world! It's fine.", 3) == "Hello, world"
    assert truncate_tokens("Short.", 10) == "Short."
