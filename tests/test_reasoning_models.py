"""Reasoning models (gpt-5, o3, o4-mini) called the way they need (issue 18, finding 9).

They refuse `max_tokens` and any temperature but their default with a 400, and think inside the completion
room: a room sized for the answer alone (224 tokens for 80 words) can be all reasoning and end empty.
Before, every request sent `max_tokens` and `temperature: 0`, so every article of such a batch failed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from contract.errors import ConfigError
from contract.models import DEFAULT_REASONING_TOKENS, call_style, known_family, known_price
from contract.spec import BatchSpec
from scripts.stack import Stack
from tests.conftest import isolated_group
from tests.faultserver import FaultServer
from tests.helpers import articles, http_request, write_jsonl
from worker import prompt
from worker.summarize import request

#: what the fault server spends thinking on every request: more than the answer's own room (224)
THOUGHT = 400


def sent(model: str, **spec: Any) -> dict[str, Any]:
    ask = request("An article.", BatchSpec(model, 80, **spec), prompt.WHOLE, 4000)
    body = ask.body(ask.max_tokens)
    del body["messages"]
    return body


def test_each_family_gets_its_own_parameters() -> None:
    assert sent("gpt-4o-mini") == {"model": "gpt-4o-mini", "max_tokens": 224, "temperature": 0.0}
    room = 224 + DEFAULT_REASONING_TOKENS
    for model in ("gpt-5", "gpt-5-mini-2025-08-07", "openai/gpt-5-nano", "o4-mini"):
        assert sent(model) == {"model": model, "max_completion_tokens": room, "reasoning_effort": "low"}
    assert known_family("gpt-5-chat-latest") == "chat"  # the chat-tuned gpt-5 is no reasoning model
    # o-series models have no "minimal": the nearest effort they take
    assert sent("o3", reasoning_effort="minimal")["reasoning_effort"] == "low"
    assert sent("gpt-5", reasoning_effort="minimal")["reasoning_effort"] == "minimal"
    # a per-batch override for a model the table does not know (a gateway's own name for it)
    body = sent("my-deployment", model_family="reasoning", reasoning_effort="high", reasoning_tokens=50)
    assert body == {"model": "my-deployment", "max_completion_tokens": 274, "reasoning_effort": "high"}
    assert sent("gpt-5", model_family="chat") == {"model": "gpt-5", "max_tokens": 224, "temperature": 0.0}
    assert call_style("gpt-4.1").room_param == "max_tokens"


def test_a_temperature_a_reasoning_model_cannot_take_is_refused_at_submit() -> None:
    with pytest.raises(ConfigError, match="o3 is a reasoning model, which takes only its default temperature"):
        BatchSpec("o3", 80, temperature=0.7)
    with pytest.raises(ConfigError, match="gpt-5-mini is a reasoning model"):
        BatchSpec("gpt-4o", 80, temperature=0.5, fallback_model="gpt-5-mini")
    BatchSpec("o3", 80, temperature=1.0)  # its own default: fine (and not sent)
    with pytest.raises(ConfigError, match="reasoning effort 'max' must be one of minimal, low, medium, high"):
        BatchSpec("o3", 80, reasoning_effort="max")
    with pytest.raises(ConfigError, match="model family 'o' must be one of chat, reasoning"):
        BatchSpec("o3", 80, model_family="o")


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    with FaultServer() as srv:
        yield srv


@pytest.fixture()
def reasoning(server: FaultServer) -> FaultServer:
    server.reset()
    server.configure(reasoning_models=["gpt-5-mini", "my-deployment"], reasoning_tokens=THOUGHT)
    return server


def chat(server: FaultServer, **body: Any) -> tuple[int, dict[str, Any]]:
    payload = {"messages": [{"role": "user", "content": "<article>\nThe council met on Monday.\n</article>"}], **body}
    r = http_request(
        f"{server.url}/chat/completions",
        "POST",
        json.dumps(payload).encode(),
        {"Content-Type": "application/json", "Authorization": "Bearer sk-test"},
    )
    return r.status, r.json()


def test_the_fault_server_answers_as_a_reasoning_model(reasoning: FaultServer) -> None:
    status, body = chat(reasoning, model="gpt-5-mini", max_tokens=224)
    assert status == 400 and body["error"]["code"] == "unsupported_parameter" and body["error"]["param"] == "max_tokens"
    status, body = chat(reasoning, model="gpt-5-mini", max_completion_tokens=224, temperature=0)
    assert status == 400 and body["error"]["param"] == "temperature", body
    status, body = chat(reasoning, model="fake-model", max_tokens=50, reasoning_effort="low")
    assert status == 400 and body["error"]["param"] == "reasoning_effort", body
    # The answer's room alone: all of it goes on reasoning, and the answer is empty.
    status, body = chat(reasoning, model="gpt-5-mini", max_completion_tokens=224, reasoning_effort="low")
    assert status == 200 and body["choices"][0]["finish_reason"] == "length", body
    assert body["choices"][0]["message"]["content"] == ""
    assert body["usage"]["completion_tokens"] == 224
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": 224}
    status, body = chat(reasoning, model="gpt-5-mini", max_completion_tokens=THOUGHT + 100)
    assert status == 200 and body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] > THOUGHT
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": THOUGHT}


def test_a_reasoning_model_batch_is_done_and_billed_its_reasoning(
    stack: Stack, redis_url: str, reasoning: FaultServer, tmp_path: Path
) -> None:
    group = isolated_group(stack, redis_url, reasoning.url, "gpt-5-mini")
    group.worker("reason-w1")
    bid = group.submit_and_wait(write_jsonl(tmp_path / "in.jsonl", articles("rsn", 6)))
    rows = group.results(bid)
    assert [r["status"] for r in rows] == ["done"] * 6, rows
    stats = reasoning.stats()
    assert stats["requests"] == 6 and stats["reasoning_refused"] == 0, stats
    params = stats["request_params"]
    assert params.get("max_completion_tokens") == 6 and "max_tokens" not in params and "temperature" not in params
    assert stats["reasoning_efforts"] == {"low": 6}
    price = known_price("gpt-5-mini")
    assert price is not None
    for r in rows:
        # Reasoning tokens are completion tokens: billed once, as output.
        assert r["usage"]["completion_tokens"] > THOUGHT, r
        expected = price.cost(r["usage"]["prompt_tokens"], r["usage"]["completion_tokens"])
        assert r["cost_usd"] == pytest.approx(expected), r


def test_a_batch_overrides_the_family_effort_and_reasoning_room(
    stack: Stack, redis_url: str, reasoning: FaultServer
) -> None:
    """A model the table does not know, made a reasoning one by the batch, with too little reasoning room:
    the first answer is all reasoning (cut off), the retry has twice the room and is done."""
    group = isolated_group(stack, redis_url, reasoning.url, "my-deployment")
    group.worker("reason-w2")
    client = group.client()
    try:
        batch = client.submit(
            articles("ovr", 3), model_family="reasoning", reasoning_effort="medium", reasoning_tokens=100
        )
        batch.wait(timeout=60)
        rows = list(batch.results())
    finally:
        client.close()
    assert [r.status for r in rows] == ["done"] * 3, rows
    stats = reasoning.stats()
    # 224 + 100 tokens: 400 of them thinking, the answer cut off; then 648: room enough.
    assert stats["requests"] == 6 and stats["statuses"] == {"200": 6}, stats
    assert stats["reasoning_efforts"] == {"medium": 6}
    assert "max_tokens" not in stats["request_params"] and "temperature" not in stats["request_params"]
