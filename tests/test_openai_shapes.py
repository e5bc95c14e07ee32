"""contract/openai_shapes.py: the wire shapes the offline server, the fault server and the worker share."""

from __future__ import annotations

import pytest
from openai.types import Batch, FileObject, Model
from openai.types.chat import ChatCompletion

from contract import openai_shapes as shapes


def test_word_room_convention_round_trips() -> None:
    assert shapes.max_tokens_for_words(80) == 224
    for words in (1, 2, 7, 60, 80, 500):
        assert shapes.words_for_max_tokens(shapes.max_tokens_for_words(words)) == words
    assert shapes.words_for_max_tokens(1) == 1  # never zero words, however little room
    assert shapes.words_for_max_tokens(2 * shapes.max_tokens_for_words(60)) == 152  # the worker's doubled retry


def test_error_and_context_length_shapes() -> None:
    assert shapes.error_body("bad", code="x") == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": "x"}
    }
    body = shapes.context_length_exceeded(16384, 16000, 1000)
    assert body["error"]["code"] == "context_length_exceeded"
    assert body["error"]["message"] == (
        "This model's maximum context length is 16384 tokens. However, you requested 17000 tokens "
        "(16000 in the messages, 1000 in the completion). Please reduce the length of the messages or completion."
    )


def test_message_parsing() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}}, {"type": "text", "text": "b"}]
    assert shapes.content_text(parts) == "a\nb"
    assert shapes.content_text("plain") == "plain"
    assert shapes.content_text(None) == ""
    msgs = [
        {"role": "system", "content": "S1"},
        {"role": "developer", "content": [{"type": "text", "text": "S2"}]},
        {"role": "user", "content": "first"},
        "junk",
        {"role": "user", "content": parts},
    ]
    assert shapes.message_texts(msgs) == ["S1", "S2", "first", "", "a\nb"]
    assert shapes.system_prompt(msgs) == "S1\nS2"
    assert shapes.system_prompt([{"role": "user", "content": "x"}]) is None
    assert shapes.last_user_text(msgs) == "a\nb"
    assert shapes.extract_article("x <article> a <article> b </article> c </article> y") == "a <article> b </article> c"
    assert shapes.extract_article("no tags here ") == "no tags here "
    assert shapes.requested_max_tokens({"max_tokens": 5, "max_completion_tokens": 9}) == 9
    assert shapes.requested_max_tokens({"max_tokens": 5}) == 5
    assert shapes.response_format_kind({}) == "text"
    assert shapes.response_format_kind({"response_format": {"type": "json_object"}}) == "json_object"
    schema = {"type": "object"}
    fmt = {"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}}
    assert shapes.response_json_schema(fmt) == schema
    assert shapes.response_json_schema({"response_format": {"type": "json_object"}}) is None


def test_shapes_parse_as_the_openai_client_models() -> None:
    completion = shapes.chat_completion(
        shapes.Answer("", "length", "thinking"), model="m", prompt_tokens=3, completion_tokens=4
    )
    parsed = ChatCompletion.model_validate(completion)
    assert parsed.choices[0].finish_reason == "length"
    assert parsed.usage is not None and parsed.usage.total_tokens == 7
    assert completion["choices"][0]["message"]["reasoning_content"] == "thinking"
    assert (
        ChatCompletion.model_validate(
            shapes.chat_completion(None, model="m", prompt_tokens=1, completion_tokens=0)
        ).choices
        == []
    )

    file = FileObject.model_validate(
        shapes.file_object("file-1", filename="a.jsonl", purpose="batch", size=3, created_at=1)
    )
    assert file.bytes == 3
    view = shapes.BatchView(
        id="batch_1",
        input_file_id="file-1",
        created_at=100,
        status="failed",
        errors=[shapes.batch_error("invalid_json_line", "bad", line=2)],
        timestamps={"failed_at": 101},
        counts=(3, 1, 2),
        metadata={"k": "v"},
    )
    batch = Batch.model_validate(shapes.batch_object(view))
    assert batch.status == "failed" and batch.failed_at == 101 and batch.expires_at == 100 + 86400
    assert batch.errors is not None and batch.errors.data is not None and batch.errors.data[0].line == 2
    assert batch.request_counts is not None and batch.request_counts.failed == 2
    model = Model.model_validate(shapes.model_object("m", owned_by="me", context_window=8))
    assert model.model_extra == {"context_length": 8, "max_model_len": 8}
    assert "context_length" not in shapes.model_object("m", owned_by="me")
    page = shapes.list_page([{"id": "a"}, {"id": "b"}], has_more=True)
    assert (page["first_id"], page["last_id"], page["has_more"]) == ("a", "b", True)


def test_batch_lines() -> None:
    line = shapes.batch_request_line("c1", {"model": "m"})
    assert line == {"custom_id": "c1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}}
    ok = shapes.batch_response_line("c1", 200, {"x": 1}, request_id="req_1", line_id="batch_req_1")
    assert ok == {
        "id": "batch_req_1",
        "custom_id": "c1",
        "error": None,
        "response": {"status_code": 200, "request_id": "req_1", "body": {"x": 1}},
    }
    gone = shapes.batch_error_line("c2", shapes.BATCH_EXPIRED, "late")
    assert gone["response"] is None and gone["error"] == {"code": "batch_expired", "message": "late"}
    requests = shapes.parse_batch_input(shapes.jsonl([line, shapes.batch_request_line("c2", {})]) + b"\n\n")
    assert [(r.line, r.custom_id) for r in requests] == [(1, "c1"), (2, "c2")]


@pytest.mark.parametrize(
    ("line", "code"),
    [
        ("{not json", "invalid_json_line"),
        ('{"method": "POST", "url": "/v1/chat/completions", "body": {}}', "missing_required_parameter"),
        ('{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}', "duplicate_custom_id"),
        ('{"custom_id": "z", "method": "POST", "url": "/v1/embeddings", "body": {}}', "invalid_url"),
        ('{"custom_id": "z", "method": "GET", "url": "/v1/chat/completions", "body": {}}', "invalid_method"),
        ('{"custom_id": "z", "method": "POST", "url": "/v1/chat/completions", "body": []}', "invalid_request"),
    ],
)
def test_batch_input_validation(line: str, code: str) -> None:
    good = '{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}'
    with pytest.raises(shapes.BatchInputError) as info:
        shapes.parse_batch_input(f"{good}\n{line}\n")
    assert [(e["code"], e["line"]) for e in info.value.errors] == [(code, 2)]


def test_empty_batch_input_is_invalid() -> None:
    with pytest.raises(shapes.BatchInputError) as info:
        shapes.parse_batch_input(b"\n")
    assert info.value.errors[0]["code"] == "empty_file"
