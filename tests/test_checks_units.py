"""contract/checks.py, the checks on every summary, and producer/evaluate.py, called directly: each flag's
catches and misses, the numbers' normalisation, sentence-initial words, the language threshold, the stored
form, the offline server's and the fault server's answers over the sample articles, and the CPU a job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from contract import checks, schema
from contract.checks import FLAGS, Checks, check
from contract.errors import ConfigError
from contract.record import Final, pack, public_row, unpack
from contract.spec import BatchSpec
from localllm.extractive import summarize_text
from producer import evaluate
from tests.faultserver.directives import QUALITY_KINDS, expected_summary, quality_answer

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = [json.loads(line) for line in (ROOT / "samples" / "articles.jsonl").read_text().splitlines()]
ARTICLE = (
    "The Port Calder city council voted 6-3 on Tuesday to replace the 71-year-old Harbor Street Bridge, approving "
    "a $48 million plan. About 3.5 million dollars will come from the state, and traffic fell 12% last year. "
    'Council member Delia Okonkwo-Reyes said two years of debate were over. "I can\'t wait," said one resident.'
)


def flags(
    summary: str, max_words: int | None = 60, language: str | None = None, article: str = ARTICLE
) -> tuple[str, ...]:
    return check(article, summary, max_words, language).names


def test_a_faithful_summary_raises_no_flag() -> None:
    assert (
        flags("The Port Calder council voted 6-3 to replace the Harbor Street Bridge under a $48 million plan.") == ()
    )


@pytest.mark.parametrize(
    "summary",
    [
        "The council approved a plan worth 48,000,000 dollars.",  # $48 million
        "About $3,500,000 comes from the state.",  # 3.5 million
        "Traffic fell 12 percent last year.",  # 12%
        "The bridge is 71 years old and the vote was 6 to 3.",
        "After 2 years of debate the council voted.",  # two years
        "The council approved a $48m plan.",
    ],
)
def test_numbers_are_compared_by_value_whatever_their_form(summary: str) -> None:
    assert "numbers" not in flags(summary)


@pytest.mark.parametrize(
    "summary",
    [
        "The council approved a $52 million plan.",
        "The vote was 7-2.",
        "About 4.5 million dollars will come from the state.",
        "Traffic fell 15% last year.",
        "The plan costs two billion dollars.",
    ],
)
def test_a_number_the_article_does_not_state_is_flagged(summary: str) -> None:
    assert flags(summary) == ("numbers",)


def test_names_absent_from_the_article_are_flagged_and_sentence_starts_are_not() -> None:
    assert flags("Mayor John Smith backed the plan.") == ("names",)
    assert flags("Okonkwo-Reyes's council replaced the bridge.") == ()  # possessive, hyphenated, in the article
    assert flags("Residents welcomed the vote. Officials agreed.") == ()  # sentence-initial common words
    assert flags("Summary: the council voted to replace the bridge.") == ()
    assert flags("Gerald Finch said the council voted.") == ("names",)  # a sentence-initial two-word name
    assert flags("The council voted; Delia Okonkwo-Reyes said so.") == ()


def test_refusals_and_boilerplate_are_flagged_unless_the_article_quotes_them() -> None:
    assert flags("I'm sorry, but I cannot summarize this article.") == ("refusal",)
    assert "refusal" in flags("As an AI language model, I am unable to help.")
    assert flags("Here is a summary: the council voted to replace the bridge.") == ("refusal",)
    assert flags('A resident said "I can\'t wait" for the new bridge.') == ()  # the article says it


def test_the_length_flag_counts_words_against_the_limit() -> None:
    summary = "The council voted to replace the bridge."
    assert flags(summary, max_words=7) == ()
    assert flags(summary, max_words=6) == ("length",)
    assert flags(summary, max_words=None) == ()


def test_the_language_is_the_articles_or_the_batchs_and_short_texts_are_not_judged() -> None:
    french = "Le conseil municipal a voté mardi soir pour remplacer le vieux pont, un projet attendu depuis longtemps."
    assert flags(french) == ("language",)
    assert flags(french, language="fr") == ()
    english = "The council voted on Tuesday night to replace the old bridge with a new one."
    assert flags(english, language="fr") == ("language",)
    assert len("Le pont sera remplacé.") < checks.MIN_LANGUAGE_CHARS
    assert flags("Le pont sera remplacé.") == ()  # too short to judge


def test_copied_is_the_share_of_bigrams_from_the_article() -> None:
    assert check(ARTICLE, "The Port Calder city council voted 6-3 on Tuesday", 60).copied == 100
    assert check(ARTICLE, "Wholly unrelated prose appears here", 60).copied == 0
    half = check(ARTICLE, "the city council voted swiftly against everything", 60).copied
    assert 0 < half < 100


def test_a_json_answer_is_checked_on_its_strings_and_not_for_length() -> None:
    answer = json.dumps({"headline": "Bridge vote", "bullets": ["The council voted 6-3.", "It cost $52 million."]})
    assert check(ARTICLE, answer, 3, structured=True).names == ("numbers",)


def test_check_names_are_parsed_in_flag_order_and_an_unknown_one_is_named() -> None:
    assert checks.parse_names("numbers, length") == ("length", "numbers")
    with pytest.raises(ConfigError, match="unknown check 'lenght'"):
        checks.parse_names("lenght,numbers")
    with pytest.raises(ConfigError, match="unknown check 'spelling'"):
        BatchSpec("m", 50, require_checks=["spelling"])
    spec = BatchSpec("m", 50, require_checks=["names", "length"], language="fr")
    assert spec.require_checks == ["length", "names"] and BatchSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ConfigError, match="ISO 639-1"):
        BatchSpec("m", 50, language="French")


def test_the_stored_form_is_two_small_integers_and_the_row_carries_names() -> None:
    found = Checks(checks.bits(["numbers", "language"]), 42)
    assert schema.FLAG_BITS.fields == FLAGS and schema.FINAL.fields[-2:] == ("flags", "copied")
    final = Final("done", "d", "0:1", summary="s", flags=found.flags, copied=found.copied)
    assert Final.unpack(final.pack()) == final and Final.flags_of(final.pack()) == found.flags
    assert len(final.pack()) - len(pack(unpack(final.pack())[:-2])) == 2  # a byte each: the cap is 450 B
    assert public_row("j", final.pack(), {})["checks"] == {"flags": ["numbers", "language"], "copied": 0.42}
    assert public_row("j", Final("failed", error="x").pack(), {})["checks"] is None  # not checked


def test_the_offline_servers_summaries_of_the_sample_articles_raise_no_flag() -> None:
    for max_words in (20, 40, 80, 150):
        for a in SAMPLES:
            summary = summarize_text(a["text"], max_words)
            assert check(a["text"], summary, max_words).flags == 0, (a["id"], max_words, summary)


def test_the_fault_servers_quality_faults_are_each_flagged_by_exactly_their_check() -> None:
    want = {"invent": ("numbers",), "foreign": ("language",), "long": ("length",), "refuse": ("refusal",)}
    assert set(want) == QUALITY_KINDS
    for a in SAMPLES:
        assert check(a["text"], expected_summary(a["text"]), 60).flags == 0, a["id"]
        for kind, names in want.items():
            assert check(a["text"], quality_answer(kind, a["text"]), 60).names == names, (a["id"], kind)


def test_eval_scores_rows_against_references_and_counts_the_flags(tmp_path: Path) -> None:
    refs = tmp_path / "refs.jsonl"
    refs.write_text(
        '{"id": "a", "reference": "The council voted to replace the bridge."}\n{"id": "z", "reference": "x"}\n'
    )
    rows: list[dict[str, Any]] = [
        {"id": "a", "status": "done", "summary": "The council voted to replace the bridge.",
         "checks": {"flags": [], "copied": 1.0}},
        {"id": "b", "status": "done", "summary": "I'm sorry, I can't.",
         "checks": {"flags": ["refusal"], "copied": 0.0}},
        {"id": "c", "status": "failed", "summary": None, "checks": None},
    ]  # fmt: skip
    report = evaluate.evaluate("B", rows, evaluate.read_references(str(refs)))
    assert report["rouge"] == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0} and report["scored"] == 1
    assert (report["done"], report["flagged"], report["flags"]["refusal"], report["flag_rates"]["refusal"]) == (
        2,
        1,
        1,
        0.5,
    )
    assert report["references_without_row"] == 1 and report["copied_mean"] == 0.5
    assert sum(report["lengths"]["counts"]) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "reference": "ok"}\n{"id": "b"}\n')
    with pytest.raises(ConfigError, match="line 2"):
        evaluate.read_references(str(bad))


def test_the_histogram_covers_every_length() -> None:
    h = evaluate.histogram([5, 7, 7, 30, 31, 60])
    assert sum(h["counts"]) == 6 and h["edges"][0] == 5 and h["edges"][-1] > 60 and h["max"] == 60
    assert evaluate.histogram([12])["counts"] == [1]
