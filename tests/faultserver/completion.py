"""One chat request's answer, the same online and in a batch line: parse, pick the article's fault, answer.

The transport-level faults (``hang`` sleeps, ``reset`` drops the connection) are the caller's: online
they act on the connection; a batch line has none, so there both come back as a 500 line (a request
that died in flight).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from contract.openai_shapes import (
    Answer,
    JSONObject,
    chat_completion,
    context_length_exceeded,
    error_body,
    extract_article,
    last_user_text,
    message_texts,
    requested_max_tokens,
    response_format_kind,
    response_json_schema,
    system_prompt,
)
from localllm.errors import ApiError
from localllm.jsonfill import FillText, fill_schema, json_object_answer
from tests.faultserver.directives import (
    ERROR_KINDS,
    LENGTH_FAULT_WORDS,
    MODEL_ID,
    BadDirective,
    Directive,
    article_key,
    expected_summary,
    parse_directives,
    prompt_tokens,
    select_fault,
)
from tests.faultserver.state import FaultState

DEFAULT_RETRY_AFTER = "1"
#: Label of a normal, fault-free answer, so injected-but-200 bodies (garbage, empty, ...) are not "ok".
OK = "ok"
REASONING_TEXT = "Let me think about what this article says and which facts matter most before I answer"

# (type, code) of each injected error status, as the real API labels them.
_ERROR_LABELS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("rate_limit_exceeded", "rate_limit_exceeded"),
}


def error(status: int, message: str, headers: dict[str, str] | None = None) -> ApiError:
    """An error in the label the real API gives ``status``."""
    err_type, code = _ERROR_LABELS.get(status, ("server_error" if status >= 500 else "api_error", None))
    return ApiError(status, message, err_type, code, headers=headers)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    texts: list[str]
    article: str
    system: str | None
    max_tokens: int  # 0 when the request sets none
    format_kind: str
    schema: JSONObject | None

    @property
    def prompt_tokens(self) -> int:
        return prompt_tokens(self.texts)

    @property
    def request_tokens(self) -> int:
        return self.prompt_tokens + self.max_tokens


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to send: ``body`` is JSON (or ``bytes`` sent as-is); ``label`` is the status recorded in stats."""

    status: int
    body: Any
    label: int | str
    headers: dict[str, str] | None = None


def parse_chat(payload: Any) -> ChatRequest:
    if not isinstance(payload, dict):
        raise error(400, "faultserver: request body must be a JSON object")
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise error(400, "faultserver: 'messages' must be a non-empty list")
    if payload.get("stream"):
        raise error(400, "faultserver: streaming is not supported")
    room = requested_max_tokens(payload)
    return ChatRequest(
        model=str(payload.get("model", MODEL_ID)),
        texts=message_texts(messages),
        article=extract_article(last_user_text(messages) or ""),
        system=system_prompt(messages),
        max_tokens=room if isinstance(room, int) and not isinstance(room, bool) and room > 0 else 0,
        format_kind=response_format_kind(payload),
        schema=response_json_schema(payload),
    )


def check_request(state: FaultState, request: ChatRequest) -> None:
    """Record what reached the provider, and refuse a request beyond the context window."""
    state.note_request(request.system, request.format_kind, request.request_tokens)
    if request.model in state.config.missing_models:
        raise error(404, f"The model `{request.model}` does not exist or you do not have access to it.")
    limit = state.config.context_tokens
    if limit and request.request_tokens > limit:
        state.context_refused += 1
        raise ApiError.with_body(400, context_length_exceeded(limit, request.prompt_tokens, request.max_tokens))


def choose_fault(state: FaultState, request: ChatRequest) -> Directive | None:
    """Count this request against its article and pick the fault owning it."""
    key = article_key(request.article)
    number = state.by_article.get(key, 0) + 1
    state.by_article[key] = number
    try:
        return select_fault(parse_directives(request.article), number)
    except BadDirective as exc:
        raise error(400, str(exc)) from None


def answer(state: FaultState, request: ChatRequest, fault: Directive | None) -> Outcome:
    """The answer to a request whose fault (if any) is not a transport one."""
    content = _content(request)
    if fault is None or fault.kind in ("hang", "trickle"):
        return Outcome(200, _completion(state, request, Answer(content)), OK)
    if fault.kind in ERROR_KINDS:
        return _error_outcome(fault)
    if fault.kind == "garbage":
        return Outcome(200, b"<html>not json", 200)
    choice = {
        "empty": None,
        "blank": Answer(""),
        "length": Answer(" ".join(content.split()[:LENGTH_FAULT_WORDS]), "length"),
        "reasoning": Answer("", "length", REASONING_TEXT),
    }
    if fault.kind not in choice:
        raise AssertionError(f"unhandled fault kind {fault.kind}")  # the directive regex lists every kind
    return Outcome(200, _completion(state, request, choice[fault.kind], content), 200)


def batch_answer(state: FaultState, payload: JSONObject) -> tuple[int, Any]:
    """A batch line's (status, body): the online path without a connection to hang or drop."""
    request = parse_chat(payload)
    check_request(state, request)
    fault = choose_fault(state, request)
    if fault is not None and fault.kind in {"hang", "trickle", "reset"}:
        outcome = Outcome(500, error_body(f"faultserver: injected {fault.kind} in a batch", "server_error"), 500)
    else:
        outcome = answer(state, request, fault)
    body = outcome.body.decode("utf-8", "replace") if isinstance(outcome.body, bytes) else outcome.body
    return outcome.status, body


def _error_outcome(fault: Directive) -> Outcome:
    status = int(fault.kind)
    headers = {"Retry-After": fault.param or DEFAULT_RETRY_AFTER} if status == 429 else None
    exc = error(status, f"faultserver: injected {fault.kind}", headers)
    return Outcome(status, exc.body(), status, headers)


def _content(request: ChatRequest) -> str:
    summary = expected_summary(request.article)
    if request.format_kind == "json_schema" and request.schema is not None:
        return json.dumps(fill_schema(request.schema, FillText.plain(summary)))
    if request.format_kind in {"json_object", "json_schema"}:
        return json.dumps(json_object_answer(FillText.plain(summary)))
    return summary


def _completion(state: FaultState, request: ChatRequest, choice: Answer | None, content: str = "") -> JSONObject:
    said = (choice.content or "") if choice is not None else content
    completion_tokens = len(said.split())
    if choice is not None and choice.reasoning_content is not None:
        # The room went on thinking: all of max_tokens is spent, none of it on the answer.
        completion_tokens = request.max_tokens or len(choice.reasoning_content.split())
    return chat_completion(
        choice,
        model=request.model,
        prompt_tokens=request.prompt_tokens,
        completion_tokens=completion_tokens,
        completion_id=state.next_completion_id(),
        system_fingerprint="faultserver",
    )
