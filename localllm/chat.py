"""POST /v1/chat/completions: one summary per request, in OpenAI's ``chat.completion`` shape.

The summary's length comes from ``max_tokens`` (``words_for_max_tokens``, the inverse of what our
worker asks for), never from the prompt's wording, so any system prompt works. The article is the
text between ``<article>`` tags of the last user message, or that whole message.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from contract.openai_shapes import (
    Answer,
    JSONObject,
    chat_completion,
    context_length_exceeded,
    extract_article,
    last_user_text,
    message_texts,
    requested_max_tokens,
    response_format_kind,
    response_json_schema,
    words_for_max_tokens,
)
from localllm.errors import ApiError
from localllm.extractive import MODEL_NAME, count_tokens, lead_sentence, summarize_text, top_sentences, truncate_tokens
from localllm.jsonfill import FillText, fill_schema, json_object_answer
from localllm.web import json_response, read_json

DEFAULT_MAX_WORDS = 80
DEFAULT_CONTEXT_TOKENS = 16384
# Sentences offered to array fields of a JSON answer (the schema's maxItems picks fewer).
_FILL_SENTENCES = 10


async def chat_completions(request: Request) -> Response:
    payload = await read_json(request)
    context_tokens: int = request.app.state.context_tokens
    # LexRank is CPU work: in the event loop it would stall every other connection.
    return json_response(await run_in_threadpool(complete, payload, context_tokens))


def complete(payload: Any, context_tokens: int = DEFAULT_CONTEXT_TOKENS) -> JSONObject:
    """The ``chat.completion`` answering a decoded request body; ``ApiError`` for a bad request."""
    body = _checked(payload)
    messages = body["messages"]
    max_tokens = _max_tokens(body)
    prompt_tokens = count_tokens("\n".join(message_texts(messages)))
    if prompt_tokens + (max_tokens or 0) > context_tokens:
        raise ApiError.with_body(400, context_length_exceeded(context_tokens, prompt_tokens, max_tokens or 0))
    article = _article(messages)
    words = DEFAULT_MAX_WORDS if max_tokens is None else words_for_max_tokens(max_tokens)
    try:
        content = _answer_text(body, article, words)
        # A JSON answer has several fields besides the summary: shorten them until the whole object fits
        # the room it was given, as a model writing to max_tokens would.
        while (
            max_tokens is not None
            and response_format_kind(body) != "text"
            and words > 8
            and count_tokens(content) > max_tokens
        ):
            words = words * 3 // 4
            content = _answer_text(body, article, words)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from exc
    finish_reason = "stop"
    if max_tokens is not None and count_tokens(content) > max_tokens:
        content, finish_reason = truncate_tokens(content, max_tokens), "length"
    return chat_completion(
        Answer(content, finish_reason),
        model=MODEL_NAME,
        prompt_tokens=prompt_tokens,
        completion_tokens=count_tokens(content),
    )


def _checked(payload: Any) -> JSONObject:
    if not isinstance(payload, dict):
        raise ApiError(400, "Request body must be a JSON object.")
    model = payload.get("model", MODEL_NAME)
    if model != MODEL_NAME:
        raise ApiError(
            404, f"The model {model!r} does not exist; this server only serves {MODEL_NAME!r}.", code="model_not_found"
        )
    if payload.get("stream"):
        raise ApiError(400, "Streaming is not supported by this server; send stream=false.", param="stream")
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise ApiError(400, "'messages' must be a non-empty list of message objects.", param="messages")
    return payload


def _max_tokens(body: JSONObject) -> int | None:
    value = requested_max_tokens(body)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ApiError(400, "'max_tokens' must be a positive integer.", param="max_tokens")
    return value


def _article(messages: list[JSONObject]) -> str:
    text = last_user_text(messages)
    if text is None:
        raise ApiError(400, "No user message holds an article to summarize.", param="messages")
    article = extract_article(text).strip()
    if not article:
        raise ApiError(400, "The article to summarize is empty.", param="messages")
    return article


def _answer_text(body: JSONObject, article: str, words: int) -> str:
    kind = response_format_kind(body)
    if kind == "text":
        return summarize_text(article, words)
    if kind == "json_object":
        return json.dumps(json_object_answer(_fill_text(article, words)), ensure_ascii=False)
    if kind == "json_schema":
        schema = response_json_schema(body)
        if schema is None:
            raise ApiError(400, "response_format.json_schema.schema must be an object.", param="response_format")
        return json.dumps(fill_schema(schema, _fill_text(article, words)), ensure_ascii=False)
    raise ApiError(400, f"Unsupported response_format type {kind!r}.", param="response_format")


def _fill_text(article: str, words: int) -> FillText:
    # Array fields take the best sentences that fit the same word budget.
    sentences: list[str] = []
    used = 0
    for sentence in top_sentences(article, _FILL_SENTENCES):
        n = len(sentence.split())
        if sentences and used + n > words:
            break
        sentences.append(sentence)
        used += n
    return FillText(
        summary=summarize_text(article, words),
        lead=lead_sentence(article, words),
        sentences=tuple(sentences),
    )
