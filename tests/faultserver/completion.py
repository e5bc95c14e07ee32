"""One chat request's answer, the same online and in a batch line: parse, pick the article's fault, answer.

The transport-level faults (``hang`` sleeps, ``reset`` drops the connection) are the caller's: online
they act on the connection; a batch line has none, so there both come back as a 500 line (a request
that died in flight).
"""

from __future__ import annotations

import json
import math
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
    usage,
)
from localllm.errors import ApiError
from localllm.jsonfill import FillText, fill_schema, json_object_answer
from tests.faultserver.directives import (
    ERROR_KINDS,
    LENGTH_FAULT_WORDS,
    MODEL_ID,
    QUALITY_KINDS,
    BadDirective,
    Directive,
    article_key,
    expected_summary,
    parse_directives,
    prompt_tokens,
    quality_answer,
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
    #: the top-level parameters sent, and the ones a reasoning model is picky about
    params: tuple[str, ...] = ()
    temperature: Any = None
    reasoning_effort: Any = None

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
        params=tuple(sorted(payload)),
        temperature=payload.get("temperature"),
        reasoning_effort=payload.get("reasoning_effort"),
    )


#: what OpenAI's reasoning models take as reasoning_effort
REASONING_EFFORTS = ("minimal", "low", "medium", "high")


def _check_reasoning_params(state: FaultState, request: ChatRequest) -> None:
    """Refuse what OpenAI refuses, with its error bodies: max_tokens or a temperature other than the default
    sent to a reasoning model, reasoning_effort sent to any other model or with an unknown value."""
    reasoning = request.model in state.config.reasoning_models
    refusal: tuple[str, str, str] | None = None
    if reasoning and "max_tokens" in request.params:
        refusal = (
            "max_tokens",
            "unsupported_parameter",
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
        )
    elif reasoning and request.temperature is not None and request.temperature != 1:
        refusal = (
            "temperature",
            "unsupported_value",
            f"Unsupported value: 'temperature' does not support {request.temperature} with this model. "
            "Only the default (1) value is supported.",
        )
    elif not reasoning and request.reasoning_effort is not None:
        refusal = (
            "reasoning_effort",
            "unsupported_parameter",
            "Unsupported parameter: 'reasoning_effort' is not supported with this model.",
        )
    elif reasoning and request.reasoning_effort is not None and request.reasoning_effort not in REASONING_EFFORTS:
        refusal = (
            "reasoning_effort",
            "invalid_value",
            f"Invalid value: {request.reasoning_effort!r}. Supported values are: 'minimal', 'low', 'medium', "
            "and 'high'.",
        )
    if refusal is not None:
        state.reasoning_refused += 1
        param, code, message = refusal
        raise ApiError(400, message, "invalid_request_error", code, param=param)


def check_request(state: FaultState, request: ChatRequest) -> None:
    """Record what reached the provider, and refuse a request beyond the context window."""
    state.note_request(request.system, request.format_kind, request.request_tokens)
    state.note_params(request.params, request.reasoning_effort)
    _check_reasoning_params(state, request)
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
    model_key = f"{request.model} {key}"
    state.by_model_article[model_key] = state.by_model_article.get(model_key, 0) + 1
    try:
        return select_fault(parse_directives(request.article), number)
    except BadDirective as exc:
        raise error(400, str(exc)) from None


def answer(state: FaultState, request: ChatRequest, fault: Directive | None) -> Outcome:
    """The answer to a request whose fault (if any) is not a transport one."""
    content = _content(request)
    if request.model in state.config.reasoning_models and (fault is None or fault.kind in ("hang", "trickle")):
        return _thought_answer(state, request, content)
    if fault is None or fault.kind in ("hang", "trickle"):
        return Outcome(200, _completion(state, request, Answer(content)), OK)
    if fault.kind in ERROR_KINDS:
        return _error_outcome(fault)
    if fault.kind == "garbage":
        return Outcome(200, b"<html>not json", 200)
    if fault.kind in QUALITY_KINDS:
        return Outcome(200, _completion(state, request, Answer(quality_answer(fault.kind, request.article))), OK)
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


def _thought_answer(state: FaultState, request: ChatRequest, content: str) -> Outcome:
    """A reasoning model's answer: `reasoning_tokens` of the room go on thinking first (billed as completion
    tokens, reported in completion_tokens_details), the answer gets what is left, cut off (finish_reason
    length; empty if nothing is left) when that is too little. A token a word, as for every answer here."""
    room = request.max_tokens
    thought = state.config.reasoning_tokens if room == 0 else min(state.config.reasoning_tokens, room)
    words = content.split()
    left = len(words) if room == 0 else room - thought
    cut = len(words) > left
    said = " ".join(words[:left]) if cut else content
    body = _completion(state, request, Answer(said, "length" if cut else "stop"))
    body["usage"] = usage(request.prompt_tokens, thought + len(said.split()), reasoning_tokens=thought)
    return Outcome(200, body, 200 if cut else OK)


def _completion(state: FaultState, request: ChatRequest, choice: Answer | None, content: str = "") -> JSONObject:
    said = (choice.content or "") if choice is not None else content
    completion_tokens = len(said.split())
    if choice is not None and choice.reasoning_content is not None:
        # The room went on thinking: all of max_tokens is spent, none of it on the answer.
        completion_tokens = request.max_tokens or len(choice.reasoning_content.split())
    per = state.config.billed_bytes_per_token
    billed = math.ceil(sum(len(t.encode("utf-8")) for t in request.texts) / per) if per else request.prompt_tokens
    return chat_completion(
        choice,
        model=request.model,
        prompt_tokens=billed,
        completion_tokens=completion_tokens,
        completion_id=state.next_completion_id(),
        system_fingerprint="faultserver",
    )
