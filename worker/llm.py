"""One chat-completions call through the openai client, with every failure mapped to our error tree.

The client never retries (max_retries=0): the retry policy in worker/retry.py is the only retry layer.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from typing import Any

import openai
from openai import OpenAI

try:  # openai-python 3.x ships its HTTP stack as httpx2; older releases use httpx
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]

from contract.errors import (
    MalformedResponse,
    PermanentLLMError,
    ProviderRejected,
    TransientLLMError,
    TruncatedSummary,
)
from contract.settings import Settings

RETRYABLE_STATUS = frozenset({408, 409, 429})
HALTING_STATUS = frozenset({401, 403, 404})


@dataclass(frozen=True)
class Completion:
    content: str
    model: str
    usage: dict[str, int]


def make_client(settings: Settings) -> OpenAI:
    """One client per process: it owns the connection pool, sized to the worker's concurrency."""
    limits = httpx.Limits(max_connections=settings.concurrency + 8, max_keepalive_connections=settings.concurrency)
    return OpenAI(
        base_url=settings.openai_base_url,
        api_key=settings.openai_api_key,
        max_retries=0,
        timeout=httpx.Timeout(settings.llm_timeout, connect=min(10.0, settings.llm_timeout)),
        http_client=openai.DefaultHttpxClient(limits=limits),
    )


def retry_after(headers: Any) -> float | None:
    """Seconds the provider asked us to wait: retry-after-ms, then retry-after (seconds or HTTP date)."""
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def complete(client: OpenAI, messages: list[dict[str, str]], model: str, max_tokens: int) -> Completion:
    """Send one request; return a usable completion or raise TransientLLMError / PermanentLLMError.

    Goes through the client's `post` (same auth, timeouts and error mapping as `chat.completions.create`)
    with a plain dict in and out: the typed-params transform and the pydantic response model cost ~2 ms
    of CPU per request, which in a GIL-bound worker is most of a job's budget.
    """
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
    try:
        response = client.post("/chat/completions", body=body, cast_to=object)
    except openai.APITimeoutError as exc:
        raise TransientLLMError(f"request timed out: {exc}") from None
    except openai.APIConnectionError as exc:
        raise TransientLLMError(f"connection failed: {exc}") from None
    except openai.APIStatusError as exc:
        raise _from_status(exc) from None
    except openai.APIResponseValidationError as exc:
        raise MalformedResponse(f"response body is not a chat completion: {exc}") from None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        # A 200 whose body is not JSON surfaces as a decode error inside the client.
        raise MalformedResponse(f"unreadable response body: {type(exc).__name__}: {exc}") from None
    return _validated(response)


def _from_status(exc: openai.APIStatusError) -> Exception:
    status = exc.status_code
    message = f"HTTP {status} from provider: {_error_message(exc)}"
    if status in RETRYABLE_STATUS or status >= 500:
        return TransientLLMError(message, status=status, retry_after=retry_after(exc.response.headers))
    if status in HALTING_STATUS:
        return ProviderRejected(message, status=status)
    return PermanentLLMError(message, status=status)


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:500]
    return str(exc.message)[:500]


def _validated(response: Any) -> Completion:
    if not isinstance(response, dict):
        raise MalformedResponse(f"response body is not a JSON object: {str(response)[:100]!r}")
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedResponse("response has no choices")
    choice = choices[0]
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str) or not content.strip():
        raise MalformedResponse("response content is empty")
    if choice.get("finish_reason") == "length":
        raise TruncatedSummary("summary was cut off at max_tokens (finish_reason=length)")
    raw_usage = response.get("usage")
    usage: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
    counts = {name: _int(usage.get(name)) for name in ("prompt_tokens", "completion_tokens", "total_tokens")}
    return Completion(content=content, model=str(response.get("model") or ""), usage=counts)


def _int(value: Any) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0
