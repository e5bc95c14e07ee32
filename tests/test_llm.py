"""worker/llm.py: provider errors mapped to transient or permanent, Retry-After, unusable answers."""

from __future__ import annotations

import time
from typing import Any

import httpx2 as httpx
import openai
import pytest

from contract.errors import (
    MalformedResponse,
    PermanentLLMError,
    ProviderRejected,
    TransientLLMError,
)
from worker import llm


def status_error(status: int, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    req = httpx.Request("POST", "http://x/v1/chat/completions")
    resp = httpx.Response(status, headers=headers or {}, json={"error": {"message": f"m{status}"}}, request=req)
    return openai.APIStatusError(f"m{status}", response=resp, body={"error": {"message": f"m{status}"}})


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_retryable_statuses_are_transient(status: int) -> None:
    err = llm.from_status(status_error(status, {"retry-after": "3"}))
    assert isinstance(err, TransientLLMError) and err.retry_after == 3.0 and err.status == status


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, PermanentLLMError),
        (422, PermanentLLMError),
        (401, ProviderRejected),
        (403, ProviderRejected),
        (404, ProviderRejected),
    ],
)
def test_other_4xx_fail_fast(status: int, kind: type[Exception]) -> None:
    err = llm.from_status(status_error(status))
    assert type(err) is kind and f"m{status}" in str(err)


def test_retry_after_forms() -> None:
    assert llm.retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert llm.retry_after({"retry-after": "2"}) == 2.0
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= (llm.retry_after({"retry-after": future}) or 0) <= 31
    assert llm.retry_after({"retry-after": "soon"}) is None and llm.retry_after({}) is None


def test_completion_validation_rejects_unusable_answers_and_keeps_their_usage() -> None:
    def resp(content: str | None, finish: str = "stop", choices: bool = True) -> Any:
        choice = {"message": {"role": "assistant", "content": content}, "finish_reason": finish}
        return {
            "choices": [choice] if choices else [],
            "model": "m",
            "usage": {"prompt_tokens": 11, "completion_tokens": 7},
        }

    with pytest.raises(MalformedResponse, match="no choices"):
        llm.validated(resp("x", choices=False))
    with pytest.raises(MalformedResponse, match="empty") as empty:
        llm.validated(resp("   "))
    assert (empty.value.prompt_tokens, empty.value.completion_tokens) == (11, 7)  # billed all the same
    with pytest.raises(MalformedResponse, match="length"):
        llm.validated(resp("cut", "length"))
    with pytest.raises(MalformedResponse, match="length"):  # a reasoning model that spent the room thinking
        llm.validated(resp(None, "length"))
    assert llm.validated(resp("ok")).content == "ok"
    with pytest.raises(MalformedResponse, match="not a JSON object"):
        llm.validated("<html>")
