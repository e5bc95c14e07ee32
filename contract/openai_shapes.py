"""OpenAI wire shapes: the JSON our servers send and our worker reads, as pure functions.

Standard library only, so the worker, the offline server and the test fault server can all import it
without paying for an HTTP stack or a summarizer. Every dict built here is what the official API
sends (fields the openai client parses into its models); parsing helpers accept what the official
client sends.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

JSONObject = dict[str, Any]

CHAT_COMPLETIONS_URL = "/v1/chat/completions"
BATCH_COMPLETION_WINDOW = "24h"
BATCH_PURPOSE = "batch"
BATCH_OUTPUT_PURPOSE = "batch_output"

CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
BATCH_CANCELLED = "batch_cancelled"
BATCH_EXPIRED = "batch_expired"
TOKEN_LIMIT_EXCEEDED = "token_limit_exceeded"

#: Batch statuses after which nothing changes any more.
TERMINAL_BATCH_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
#: The timestamp field of each batch status (``validating`` is ``created_at``).
BATCH_STATUS_TIMESTAMPS = {
    "in_progress": "in_progress_at",
    "finalizing": "finalizing_at",
    "completed": "completed_at",
    "failed": "failed_at",
    "expired": "expired_at",
    "cancelling": "cancelling_at",
    "cancelled": "cancelled_at",
}

_ARTICLE_OPEN = "<article>"
_ARTICLE_CLOSE = "</article>"
# Room our worker leaves beyond two tokens a word: formatting, a preamble, a tokenizer's surprises.
_ROOM_SLACK_TOKENS = 64
_TOKENS_PER_WORD = 2
#: Malformed lines reported per invalid batch input file; one is enough to fix, thousands only bloat.
MAX_BATCH_INPUT_ERRORS = 100


# --------------------------------------------------------------------------- ids and errors


def new_id(prefix: str) -> str:
    """An id in OpenAI's style, e.g. ``chatcmpl-3f2a…``, ``batch_…`` (pass the separator in ``prefix``)."""
    return f"{prefix}{uuid.uuid4().hex}"


def error_body(
    message: str, err_type: str = "invalid_request_error", *, code: str | None = None, param: str | None = None
) -> JSONObject:
    """The body of every non-2xx answer: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def context_length_exceeded(limit: int, prompt_tokens: int, completion_tokens: int) -> JSONObject:
    """The HTTP 400 body for a request whose prompt plus completion room exceeds the context window."""
    requested = prompt_tokens + completion_tokens
    message = (
        f"This model's maximum context length is {limit} tokens. However, you requested {requested} tokens "
        f"({prompt_tokens} in the messages, {completion_tokens} in the completion). "
        "Please reduce the length of the messages or completion."
    )
    return error_body(message, code=CONTEXT_LENGTH_EXCEEDED, param="messages")


# --------------------------------------------------------------------------- words and room


def max_tokens_for_words(words: int) -> int:
    """The ``max_tokens`` our worker asks for a summary of at most ``words`` words."""
    return _TOKENS_PER_WORD * words + _ROOM_SLACK_TOKENS


def words_for_max_tokens(max_tokens: int) -> int:
    """The inverse: how many words the offline model writes when given ``max_tokens`` of room."""
    return max(1, (max_tokens - _ROOM_SLACK_TOKENS) // _TOKENS_PER_WORD)


# --------------------------------------------------------------------------- chat completions


def usage(prompt_tokens: int, completion_tokens: int, *, reasoning_tokens: int | None = None) -> JSONObject:
    body: JSONObject = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if reasoning_tokens is not None:
        body["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    return body


@dataclass(frozen=True, slots=True)
class Answer:
    """What one choice of a chat completion says."""

    content: str | None
    finish_reason: str = "stop"
    reasoning_content: str | None = None


def chat_completion(
    answer: Answer | None,
    *,
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    completion_id: str | None = None,
    created: int | None = None,
    system_fingerprint: str | None = None,
) -> JSONObject:
    """A ``chat.completion`` object; ``answer=None`` gives an empty ``choices`` list."""
    choices: list[JSONObject] = []
    if answer is not None:
        message: JSONObject = {"role": "assistant", "content": answer.content}
        if answer.reasoning_content is not None:
            message["reasoning_content"] = answer.reasoning_content
        choices.append({"index": 0, "message": message, "logprobs": None, "finish_reason": answer.finish_reason})
    body: JSONObject = {
        "id": completion_id or new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": choices,
        "usage": usage(
            prompt_tokens,
            completion_tokens,
            reasoning_tokens=completion_tokens if answer is not None and answer.reasoning_content else None,
        ),
    }
    if system_fingerprint is not None:
        body["system_fingerprint"] = system_fingerprint
    return body


def content_text(content: Any) -> str:
    """A message's text: a plain string, or the text parts of the list-of-parts form joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type", "text") == "text"]
        return "\n".join(p for p in parts if isinstance(p, str))
    return ""


def message_texts(messages: Any) -> list[str]:
    """The text of every message, in order ("" for anything that is not a message object)."""
    if not isinstance(messages, list):
        return []
    return [content_text(m.get("content")) if isinstance(m, dict) else "" for m in messages]


def role_text(messages: Any, roles: Iterable[str]) -> list[str]:
    """Texts of the messages whose role is one of ``roles``, in order."""
    wanted = frozenset(roles)
    if not isinstance(messages, list):
        return []
    return [content_text(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") in wanted]


def system_prompt(messages: Any) -> str | None:
    """The system (or newer "developer") instructions, joined; None when the request has none."""
    texts = role_text(messages, ("system", "developer"))
    return "\n".join(texts) if texts else None


def last_user_text(messages: Any) -> str | None:
    texts = role_text(messages, ("user",))
    return texts[-1] if texts else None


def extract_article(content: str) -> str:
    """The article inside ``<article>``…``</article>`` (stripped), else the whole content unchanged.

    The outermost pair counts, so an article quoting the tags (our worker escapes them) stays whole.
    """
    start = content.find(_ARTICLE_OPEN)
    end = content.rfind(_ARTICLE_CLOSE)
    if start == -1 or end == -1 or end < start + len(_ARTICLE_OPEN):
        return content
    return content[start + len(_ARTICLE_OPEN) : end].strip()


def requested_max_tokens(body: Mapping[str, Any]) -> Any:
    """The completion room asked for, unvalidated: ``max_completion_tokens`` wins over ``max_tokens``."""
    value = body.get("max_completion_tokens")
    return body.get("max_tokens") if value is None else value


def response_format_kind(body: Mapping[str, Any]) -> str:
    """``text`` (also when absent), ``json_object``, ``json_schema`` or whatever else the client sent."""
    fmt = body.get("response_format")
    if fmt is None:
        return "text"
    if isinstance(fmt, dict) and isinstance(fmt.get("type"), str):
        return str(fmt["type"])
    return "invalid"


def response_json_schema(body: Mapping[str, Any]) -> JSONObject | None:
    """The ``schema`` of a ``json_schema`` response format (None for other formats or a malformed one)."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return None
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    return schema if isinstance(schema, dict) else None


# --------------------------------------------------------------------------- models


def model_object(model_id: str, *, owned_by: str, created: int = 0, context_window: int | None = None) -> JSONObject:
    """An entry of GET /v1/models; the context window under vLLM's name and the one llama.cpp-style servers use."""
    model: JSONObject = {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}
    if context_window is not None:
        model["context_length"] = model["max_model_len"] = context_window
    return model


def model_list(models: list[JSONObject]) -> JSONObject:
    return {"object": "list", "data": models}


# --------------------------------------------------------------------------- files and lists


def file_object(
    file_id: str, *, filename: str, purpose: str, size: int, created_at: int, status: str = "processed"
) -> JSONObject:
    return {
        "id": file_id,
        "object": "file",
        "bytes": size,
        "created_at": created_at,
        "filename": filename,
        "purpose": purpose,
        "status": status,
        "expires_at": None,
        "status_details": None,
    }


def file_deleted(file_id: str) -> JSONObject:
    return {"id": file_id, "object": "file", "deleted": True}


def list_page(data: list[JSONObject], *, has_more: bool = False) -> JSONObject:
    """A cursor page as the openai client pages it: the next request passes ``after=last_id``."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


# --------------------------------------------------------------------------- batches


def batch_request_line(custom_id: str, body: JSONObject, *, url: str = CHAT_COMPLETIONS_URL) -> JSONObject:
    """One line of a batch input file."""
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def batch_response_line(
    custom_id: str, status_code: int, body: Any, *, request_id: str | None = None, line_id: str | None = None
) -> JSONObject:
    """An output-file line (2xx) or error-file line (a request the provider answered with an error)."""
    return {
        "id": line_id or new_id("batch_req_"),
        "custom_id": custom_id,
        "response": {"status_code": status_code, "request_id": request_id or new_id("req_"), "body": body},
        "error": None,
    }


def batch_error_line(custom_id: str, code: str, message: str, *, line_id: str | None = None) -> JSONObject:
    """An error-file line for a request that never ran (e.g. ``batch_expired``, ``batch_cancelled``)."""
    return {
        "id": line_id or new_id("batch_req_"),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }


def batch_error(code: str, message: str, *, line: int | None = None, param: str | None = None) -> JSONObject:
    """One entry of a failed batch's ``errors.data``."""
    return {"code": code, "message": message, "param": param, "line": line}


def request_counts(total: int, completed: int, failed: int) -> JSONObject:
    return {"total": total, "completed": completed, "failed": failed}


def batch_usage(input_tokens: int, output_tokens: int) -> JSONObject:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


@dataclass(slots=True)
class BatchView:
    """Everything a batch object reports; ``batch_object`` renders it."""

    id: str
    input_file_id: str
    created_at: int
    status: str = "validating"
    endpoint: str = CHAT_COMPLETIONS_URL
    completion_window: str = BATCH_COMPLETION_WINDOW
    metadata: dict[str, str] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[JSONObject] | None = None
    timestamps: dict[str, int] | None = None
    counts: tuple[int, int, int] = (0, 0, 0)  # total, completed, failed
    tokens: tuple[int, int] = (0, 0)  # input, output
    model: str | None = None


def batch_object(view: BatchView) -> JSONObject:
    stamps = view.timestamps or {}
    body: JSONObject = {
        "id": view.id,
        "object": "batch",
        "endpoint": view.endpoint,
        "errors": {"object": "list", "data": view.errors} if view.errors else None,
        "input_file_id": view.input_file_id,
        "completion_window": view.completion_window,
        "status": view.status,
        "output_file_id": view.output_file_id,
        "error_file_id": view.error_file_id,
        "created_at": view.created_at,
        "expires_at": stamps.get("expires_at", view.created_at + 24 * 3600),
        "request_counts": request_counts(*view.counts),
        "usage": batch_usage(*view.tokens),
        "metadata": view.metadata,
        "model": view.model,
    }
    for field_name in BATCH_STATUS_TIMESTAMPS.values():
        body[field_name] = stamps.get(field_name)
    return body


@dataclass(frozen=True, slots=True)
class BatchRequest:
    """A validated line of a batch input file (``line`` counts from 1, as OpenAI reports it)."""

    line: int
    custom_id: str
    body: JSONObject


class BatchInputError(ValueError):
    """An input file that does not validate; ``errors`` are ``batch_error`` entries with line numbers."""

    def __init__(self, errors: list[JSONObject]) -> None:
        super().__init__(f"{len(errors)} invalid line(s) in the batch input file")
        self.errors = errors


def parse_batch_input(content: bytes | str, *, url: str = CHAT_COMPLETIONS_URL) -> list[BatchRequest]:
    """The requests of a batch input file, or ``BatchInputError`` naming every bad line (up to a bound)."""
    text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
    requests: list[BatchRequest] = []
    errors: list[JSONObject] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue  # a trailing newline or a blank line is not a request
        try:
            request = _parse_batch_line(raw, number, url)
            if request.custom_id in seen:
                raise _LineError(
                    "duplicate_custom_id",
                    f"The custom_id {request.custom_id!r} on line {number} was already used on line "
                    f"{seen[request.custom_id]}.",
                    "custom_id",
                )
        except _LineError as exc:
            errors.append(batch_error(exc.code, exc.message, line=number, param=exc.param))
            if len(errors) >= MAX_BATCH_INPUT_ERRORS:
                break
            continue
        seen[request.custom_id] = number
        requests.append(request)
    if not errors and not requests:
        errors.append(batch_error("empty_file", "The batch input file has no requests."))
    if errors:
        raise BatchInputError(errors)
    return requests


class _LineError(Exception):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


def _parse_batch_line(raw: str, number: int, url: str) -> BatchRequest:
    try:
        line = json.loads(raw)
    except ValueError:
        raise _LineError("invalid_json_line", f"Line {number} is not valid JSON.") from None
    if not isinstance(line, dict):
        raise _LineError("invalid_request", f"Line {number} is not a JSON object.")
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise _LineError("missing_required_parameter", f"Line {number} has no custom_id.", "custom_id")
    if line.get("method") != "POST":
        raise _LineError("invalid_method", f"Line {number}: method must be POST.", "method")
    if line.get("url") != url:
        raise _LineError("invalid_url", f"Line {number}: url must be {url}, like the batch's endpoint.", "url")
    body = line.get("body")
    if not isinstance(body, dict):
        raise _LineError("invalid_request", f"Line {number}: body must be a JSON object.", "body")
    return BatchRequest(number, custom_id, body)


def jsonl(lines: Iterable[Any]) -> bytes:
    """Objects as JSON Lines, each line ending in a newline."""
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode("utf-8")
