"""One chat-completions request through the openai client, with every failure mapped to our error tree.

The client never retries (max_retries=0): the retry policy in worker/retry.py is the only retry layer.
It is the async client over aiohttp (openai-python's DefaultAioHttpClient): one event loop serves every
request of the process, at about a third of the CPU per request of the threaded httpx client.
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx2 as httpx
import openai
from openai import AsyncOpenAI

from contract.errors import (
    ContextExceeded,
    MalformedResponse,
    PermanentLLMError,
    ProviderRejected,
    TransientLLMError,
    TruncatedSummary,
)
from contract.openai_shapes import CONTEXT_LENGTH_EXCEEDED
from contract.settings import ProviderSettings

RETRYABLE_STATUS = frozenset({408, 409, 429})
_CONTEXT_LIMIT = re.compile(r"maximum context length is (\d+)")
HALTING_STATUS = frozenset({401, 403, 404})


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @classmethod
    def of(cls, body: Any) -> Usage:
        raw = body.get("usage") if isinstance(body, dict) else None
        if not isinstance(raw, dict):
            return cls()
        return cls(_int(raw.get("prompt_tokens")), _int(raw.get("completion_tokens")))

    @property
    def pair(self) -> tuple[int, int]:
        return self.prompt_tokens, self.completion_tokens


@dataclass(frozen=True)
class Completion:
    content: str
    model: str
    usage: Usage = field(default_factory=Usage)


def make_client(settings: ProviderSettings, concurrency: int) -> AsyncOpenAI:
    """One client per process, made on its event loop: it owns the connection pool (a connection for each
    request in flight, and a few spare)."""
    limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency)
    return AsyncOpenAI(
        base_url=settings.openai_base_url,
        api_key=settings.openai_api_key,
        max_retries=0,
        timeout=httpx.Timeout(settings.llm_timeout, connect=min(10.0, settings.llm_timeout)),
        http_client=openai.DefaultAioHttpClient(limits=limits),
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


async def complete(client: AsyncOpenAI, body: dict[str, Any], deadline: float) -> Completion:
    """Send one request; return a usable completion or raise TransientLLMError / PermanentLLMError.

    Goes through the client's `post` (same auth, timeouts and error mapping as `chat.completions.create`)
    with a plain dict in and out: the typed-params transform and the pydantic response model cost ~2 ms
    of CPU per request. `deadline` bounds the whole request: a server trickling bytes can't hold it.
    """
    try:
        async with asyncio.timeout(deadline):
            response = await client.post("/chat/completions", body=body, cast_to=object)
    except TimeoutError:
        raise TransientLLMError(
            f"request took longer than {deadline:.0f}s (SUMMARIZE_LLM_TIMEOUT)", maybe_billed=True
        ) from None
    except (openai.APITimeoutError, openai.APIConnectionError) as exc:
        raise _network_error(exc) from None
    except openai.APIStatusError as exc:
        raise from_status(exc) from None
    except openai.APIResponseValidationError as exc:
        raise MalformedResponse(f"response body is not a chat completion: {exc}") from None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        # A 200 whose body is not JSON surfaces as a decode error inside the client.
        raise MalformedResponse(f"unreadable response body: {type(exc).__name__}: {exc}") from None
    return validated(response)


def _network_error(exc: Exception) -> TransientLLMError:
    """aiohttp's refused or reset connections reach us as timeouts; name what really happened."""
    root: BaseException = exc
    while root.__cause__ is not None or (root.__context__ is not None and not root.__suppress_context__):
        root = root.__cause__ or root.__context__  # type: ignore[assignment]
    if isinstance(root, OSError | aiohttp.ClientConnectionError) and not isinstance(root, TimeoutError):
        return TransientLLMError(f"connection failed: {root}")
    return TransientLLMError(f"request timed out: {exc}", maybe_billed=True)


def from_status(exc: openai.APIStatusError) -> Exception:
    status = exc.status_code
    message = f"HTTP {status} from provider: {_error_message(exc)}"
    if status in RETRYABLE_STATUS or status >= 500:
        return TransientLLMError(message, status=status, retry_after=retry_after(exc.response.headers))
    if status in HALTING_STATUS:
        return ProviderRejected(message, status=status)
    if _error_code(exc) == CONTEXT_LENGTH_EXCEEDED:
        found = _CONTEXT_LIMIT.search(message)
        return ContextExceeded(message, int(found.group(1)) if found else None)
    return PermanentLLMError(message, status=status)


def _error_code(exc: openai.APIStatusError) -> str | None:
    body = exc.body
    inner = body.get("error", body) if isinstance(body, dict) else None
    return str(inner.get("code")) if isinstance(inner, dict) and inner.get("code") else None


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:500]
    return str(exc.message)[:500]


def validated(response: Any) -> Completion:
    if not isinstance(response, dict):
        raise MalformedResponse(f"response body is not a JSON object: {str(response)[:100]!r}")
    usage = Usage.of(response)
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedResponse("response has no choices", *usage.pair)
    choice = choices[0]
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if choice.get("finish_reason") == "length":
        # Reasoning models may spend max_tokens thinking (reasoning_content) and leave content empty.
        raise TruncatedSummary("the answer was cut off at max_tokens (finish_reason=length)", *usage.pair)
    if not isinstance(content, str) or not content.strip():
        raise MalformedResponse("response content is empty", *usage.pair)
    return Completion(content=content, model=str(response.get("model") or ""), usage=usage)


def _int(value: Any) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0
