"""The offline LLM: extractive summarizer unit tests and the real HTTP server driven by the openai client."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import openai
import pytest

from localllm.extractive import (
    MAX_RANKED_SENTENCES,
    MODEL_NAME,
    count_tokens,
    split_sentences,
    summarize_text,
    truncate_tokens,
)
from localllm.server import make_server

API_KEY = "test-key"

ARTICLE = """City council approves new park

The city council voted on Tuesday to approve a new park along the river.
The park will cover twelve acres and include walking trails, a playground and a community garden.
Council members said the park was the most requested project in the city's recent survey.
Construction of the park is expected to begin next spring and last about eighteen months.
Funding for the park comes from a state grant and the city's capital budget.
Some residents raised concerns about parking near the park during council hearings.
The mayor said the park would make the riverfront a place for every family in the city."""


def _start(server: ThreadingHTTPServer) -> Iterator[int]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    yield from _start(make_server("127.0.0.1", 0, quiet=True))


@pytest.fixture(scope="module")
def secured_port() -> Iterator[int]:
    yield from _start(make_server("127.0.0.1", 0, api_key=API_KEY, quiet=True))


def _client(port: int, api_key: str = "x") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=api_key, max_retries=0, timeout=30)


def _messages(article: str, words: int = 40) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": f"Summarize the news article in at most {words} words."},
        {"role": "user", "content": f"Summarize this:\n<article>\n{article}\n</article>"},
    ]


def _raw_post(port: int, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, object]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/v1/chat/completions", body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def _article_positions(summary: str, article: str) -> list[int]:
    """Indices of the article sentences that, joined by spaces, make up ``summary`` (fails otherwise)."""
    positions: list[int] = []
    rest = summary
    for index, sentence in enumerate(split_sentences(article)):
        if rest == sentence or rest.startswith(sentence + " "):
            positions.append(index)
            rest = rest[len(sentence) :].lstrip(" ")
    assert rest == "", f"not made of article sentences in order: {rest!r}"
    return positions


# --- summarize_text -------------------------------------------------------------------------------------


def test_summary_keeps_article_order_and_word_limit() -> None:
    summary = summarize_text(ARTICLE, 40)
    assert len(summary.split()) <= 40
    assert len(_article_positions(summary, ARTICLE)) >= 2


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


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_blank_text_raises(text: str) -> None:
    with pytest.raises(ValueError):
        summarize_text(text, 50)


def test_token_helpers() -> None:
    assert count_tokens("Hello, world! It's fine.") == 9
    assert truncate_tokens("Hello, world! It's fine.", 3) == "Hello, world"
    assert truncate_tokens("Short.", 10) == "Short."


# --- HTTP server through the openai client --------------------------------------------------------------


def test_chat_completion_summarizes_article(port: int) -> None:
    messages = _messages(ARTICLE, words=40)
    response = _client(port).chat.completions.create(model=MODEL_NAME, messages=messages)  # type: ignore[arg-type]

    assert response.object == "chat.completion"
    assert response.id.startswith("chatcmpl-")
    assert response.model == MODEL_NAME
    choice = response.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    content = choice.message.content
    assert content
    assert len(content.split()) <= 40
    assert _article_positions(content, ARTICLE)

    usage = response.usage
    assert usage is not None
    assert usage.completion_tokens == count_tokens(content)
    assert usage.prompt_tokens == count_tokens("\n".join(m["content"] for m in messages))
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_default_word_limit_without_system_message(port: int) -> None:
    response = _client(port).chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": ARTICLE}])
    content = response.choices[0].message.content
    assert content
    assert len(content.split()) <= 80


def test_max_tokens_truncates_with_length(port: int) -> None:
    response = _client(port).chat.completions.create(
        model=MODEL_NAME,
        messages=_messages(ARTICLE),  # type: ignore[arg-type]
        max_tokens=7,
    )
    choice = response.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.content
    assert count_tokens(choice.message.content) <= 7
    assert response.usage is not None
    assert response.usage.completion_tokens == count_tokens(choice.message.content)


def test_models_list(port: int) -> None:
    models = _client(port).models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]
    assert models.data[0].owned_by == "local"


def test_unknown_model_is_not_found(port: int) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        _client(port).chat.completions.create(model="gpt-4o", messages=_messages(ARTICLE))  # type: ignore[arg-type]
    assert info.value.code == "model_not_found"
    assert "gpt-4o" in info.value.message
    assert MODEL_NAME in info.value.message


def test_empty_article_is_bad_request(port: int) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        _client(port).chat.completions.create(
            model=MODEL_NAME,
            messages=_messages("   "),  # type: ignore[arg-type]
        )
    assert info.value.type == "invalid_request_error"


def test_stream_is_bad_request(port: int) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        _client(port).chat.completions.create(
            model=MODEL_NAME,
            messages=_messages(ARTICLE),  # type: ignore[arg-type]
            stream=True,
        )
    assert "stream" in info.value.message.lower()


def test_wrong_api_key_is_rejected(secured_port: int) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        _client(secured_port, api_key="wrong").models.list()
    assert info.value.code == "invalid_api_key"
    assert _client(secured_port, api_key=API_KEY).models.list().data[0].id == MODEL_NAME


def test_invalid_json_and_unknown_path(port: int) -> None:
    status, body = _raw_post(port, b"{not json", {"Content-Type": "application/json"})
    assert status == 400
    assert body["error"] == {
        "message": "Request body is not valid JSON.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    with pytest.raises(openai.NotFoundError):
        _client(port).get("/nowhere", cast_to=object)


def test_health_and_keep_alive(port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for _ in range(2):  # the second request reuses the same connection
            conn.request("GET", "/health")
            response = conn.getresponse()
            assert response.status == 200
            assert json.loads(response.read()) == {"status": "ok"}
    finally:
        conn.close()


def test_oversized_body_is_rejected(port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("POST", "/v1/chat/completions")
        conn.putheader("Content-Length", str(9 * 1024 * 1024))
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 413
        assert response.getheader("Connection") == "close"
    finally:
        conn.close()
