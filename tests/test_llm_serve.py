"""`summarize llm-serve` as a real process on a loopback port driven by the openai client: chat completions,
structured outputs, errors, the Files and Batch APIs, its log and its signals."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

from contract import openai_shapes as shapes
from localllm.extractive import (
    MODEL_NAME,
    count_tokens,
    lead_sentence,
    summarize_text,
    top_sentences,
)
from tests.faultserver.batch_client import create_batch, result_lines, upload_batch_input, wait_for_batch
from tests.helpers import http_request
from tests.llmsamples import ARTICLE, SCHEMAS, Report, article_positions

pytestmark = pytest.mark.timeout(60)

BIN = Path(sys.executable).parent

ROOT = Path(__file__).resolve().parent.parent

API_KEY = "test-key-not-a-secret"

CONTEXT_TOKENS = 3000

BATCH_DELAY = 0.4


@dataclass
class LLMServe:
    proc: subprocess.Popen[bytes]
    log: Path
    port: int

    @property
    def url(self) -> str:
        return self.at("/v1")

    def at(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def client(self, api_key: str = "x") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=api_key, max_retries=0, timeout=30)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, float]:
        """Send ``sig``; the exit code and the seconds it took to exit."""
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        return code, time.monotonic() - started


def start_llm_serve(tmp: Path, *args: str, api_key: str | None = None, wrapper: tuple[str, ...] = ()) -> LLMServe:
    """`summarize llm-serve --port 0 ...` (under ``wrapper``, if any); the port is read from its 'listening on' line."""
    env = {k: v for k, v in os.environ.items() if k != "LLM_SERVE_API_KEY"}
    env["PYTHONPATH"] = str(ROOT)
    if api_key:
        env["LLM_SERVE_API_KEY"] = api_key
    log = tmp / f"llm-serve-{time.monotonic_ns()}.log"
    argv = [*wrapper, str(BIN / "summarize"), "llm-serve", "--host", "127.0.0.1", "--port", "0", *args]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        found = re.search(r"listening on http://127\.0\.0\.1:(\d+)/v1", log.read_text(errors="replace"))
        if found:
            return LLMServe(proc, log, int(found.group(1)))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"llm-serve did not start:\n{log.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LLMServe]:
    srv = start_llm_serve(
        tmp_path_factory.mktemp("llm"), "--context-tokens", str(CONTEXT_TOKENS), "--batch-delay", str(BATCH_DELAY)
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LLMServe]:
    srv = start_llm_serve(tmp_path_factory.mktemp("llm-key"), api_key=API_KEY)
    yield srv
    srv.stop()


@pytest.fixture
def client(server: LLMServe) -> openai.OpenAI:
    return server.client()


SYSTEM = "Summarize the news article."


def user_prompt(article: str) -> str:
    return f"Summarize this:\n<article>\n{article}\n</article>"


def messages(article: str, system: str | None = SYSTEM) -> list[ChatCompletionMessageParam]:
    msgs: list[ChatCompletionMessageParam] = [{"role": "system", "content": system}] if system is not None else []
    return [*msgs, {"role": "user", "content": user_prompt(article)}]


def ask(client: openai.OpenAI, article: str = ARTICLE, **kwargs: Any) -> ChatCompletion:
    kwargs.setdefault("messages", messages(article))
    response: ChatCompletion = client.chat.completions.create(model=MODEL_NAME, **kwargs)
    return response


def test_chat_completion_summarizes_article(client: openai.OpenAI) -> None:
    msgs = messages(ARTICLE)
    response = ask(client, messages=msgs, max_tokens=shapes.max_tokens_for_words(40))

    assert response.object == "chat.completion"
    assert response.id.startswith("chatcmpl-")
    assert response.model == MODEL_NAME
    choice = response.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    content = choice.message.content
    assert content == summarize_text(ARTICLE, 40)
    assert article_positions(content, ARTICLE)

    usage = response.usage
    assert usage is not None
    assert usage.completion_tokens == count_tokens(content)
    assert usage.prompt_tokens == count_tokens(f"{SYSTEM}\n{user_prompt(ARTICLE)}")  # the messages' contents, joined
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_word_limit_comes_from_max_tokens_whatever_the_prompt(client: openai.OpenAI) -> None:
    custom = "Tu es un rédacteur. Résume l'article en trois phrases au plus, sans préambule."
    for words in (12, 25, 60):
        content = ask(client, messages=messages(ARTICLE, custom), max_tokens=shapes.max_tokens_for_words(words))
        text = content.choices[0].message.content
        assert text == summarize_text(ARTICLE, words)
    # The prompt's own wording ("at most 10 words") no longer decides anything.
    said = ask(client, messages=messages(ARTICLE, "Summarize in at most 10 words."), max_tokens=200)
    assert said.choices[0].message.content == summarize_text(ARTICLE, shapes.words_for_max_tokens(200))


def test_default_word_limit_without_max_tokens_or_system(client: openai.OpenAI) -> None:
    response = ask(client, messages=[{"role": "user", "content": ARTICLE}])
    assert response.choices[0].message.content == summarize_text(ARTICLE, 80)


def test_max_tokens_truncates_with_length(client: openai.OpenAI) -> None:
    # A hyphenated chain is many tokens in one word, so the words that fit the room overflow it in tokens.
    dense = "-".join("abcdefghijklmnopqrst" * 2) + " rose."
    response = ask(client, dense, max_tokens=70)
    choice = response.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.content
    assert count_tokens(choice.message.content) == 70
    assert response.usage is not None and response.usage.completion_tokens == 70


def test_structured_output_with_pydantic_model(client: openai.OpenAI) -> None:
    # The client turns the model into a strict json_schema and parses the answer back into it.
    completion = client.chat.completions.parse(
        model=MODEL_NAME,
        messages=messages(ARTICLE),
        response_format=Report,
        max_tokens=shapes.max_tokens_for_words(500),
    )
    report = completion.choices[0].message.parsed
    assert report is not None
    assert report.summary == summarize_text(ARTICLE, 500)
    assert report.headline == lead_sentence(ARTICLE, 500)
    assert report.key_points == top_sentences(ARTICLE, 3)
    assert report.word_count == len(report.summary.split())
    # A rich schema needs more room than its summary's words: too little is cut, as a real model's would be.
    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(
            model=MODEL_NAME,
            messages=messages(ARTICLE),
            response_format=Report,
            max_tokens=shapes.max_tokens_for_words(30),
        )


@pytest.mark.parametrize("schema", SCHEMAS[1:])
def test_json_schema_answers_validate(client: openai.OpenAI, schema: dict[str, Any]) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    response = ask(client, response_format=fmt, max_tokens=1000)
    assert response.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(response.choices[0].message.content or ""), schema)


def test_json_object_answer(client: openai.OpenAI) -> None:
    response = ask(client, response_format={"type": "json_object"}, max_tokens=shapes.max_tokens_for_words(30))
    assert json.loads(response.choices[0].message.content or "") == {"summary": summarize_text(ARTICLE, 30)}


def test_context_length_exceeded(client: openai.OpenAI) -> None:
    long_article = " ".join(["The council met again and talked about the park."] * 300)
    prompt_tokens = count_tokens(f"{SYSTEM}\n{user_prompt(long_article)}")  # the messages' contents, joined
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, long_article, max_tokens=100)
    assert info.value.code == "context_length_exceeded"
    assert info.value.response.json()["error"]["message"] == (
        f"This model's maximum context length is {CONTEXT_TOKENS} tokens. However, you requested "
        f"{prompt_tokens + 100} tokens ({prompt_tokens} in the messages, 100 in the completion). "
        "Please reduce the length of the messages or completion."
    )
    # A prompt that fits leaves room: asking for more than the rest of the window is refused too.
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        ask(client, max_tokens=CONTEXT_TOKENS)


def test_models_list_reports_context_window(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]
    model = models.data[0]
    assert model.owned_by == "local"
    assert model.model_extra == {"context_length": CONTEXT_TOKENS, "max_model_len": CONTEXT_TOKENS}
    assert client.models.retrieve(MODEL_NAME).id == MODEL_NAME


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=messages(ARTICLE))
    assert info.value.code == "model_not_found"
    assert "gpt-4o" in info.value.message
    assert MODEL_NAME in info.value.message


def test_empty_article_and_stream_are_bad_requests(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, "   ")
    assert info.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, stream=True)
    assert "stream" in info.value.message.lower()


def test_wrong_api_key_is_rejected(secured: LLMServe) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        secured.client(api_key="wrong").models.list()
    assert info.value.code == "invalid_api_key"
    r = http_request(secured.at("/v1/chat/completions"), "POST", b"{}")  # no Authorization at all
    assert r.status == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert secured.client(api_key=API_KEY).models.list().data[0].id == MODEL_NAME
    r = http_request(secured.at("/health"))  # readiness probes carry no key
    assert (r.status, r.json()) == (200, {"status": "ok"})


def test_invalid_json_and_unknown_path(server: LLMServe, client: openai.OpenAI) -> None:
    r = http_request(server.at("/v1/chat/completions"), "POST", b"{not json", {"Content-Type": "application/json"})
    assert r.status == 400
    assert r.json()["error"] == {
        "message": "Request body is not valid JSON.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    with pytest.raises(openai.NotFoundError):
        client.get("/nowhere", cast_to=object)
    r = http_request(server.at("/v1/chat/completions"))
    assert r.status == 405 and "error" in r.json()


def test_health_and_keep_alive(server: LLMServe) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        for _ in range(2):  # the second request reuses the same connection
            conn.request("GET", "/health")
            response = conn.getresponse()
            assert response.status == 200
            assert json.loads(response.read()) == {"status": "ok"}
    finally:
        conn.close()


def test_oversized_body_is_rejected(server: LLMServe) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest("POST", "/v1/chat/completions")
        conn.putheader("Content-Length", str(9 * 1024 * 1024))
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 413
        assert response.getheader("Connection") == "close"
    finally:
        conn.close()


def request_line(custom_id: str, article: str = ARTICLE, words: int = 30, **body: Any) -> dict[str, Any]:
    return shapes.batch_request_line(
        custom_id,
        {
            "model": MODEL_NAME,
            "messages": messages(article),
            "max_tokens": shapes.max_tokens_for_words(words),
            **body,
        },
    )


def test_files_roundtrip(client: openai.OpenAI) -> None:
    data = shapes.jsonl([request_line("a"), request_line("b")])
    created = upload_batch_input(client, data)
    assert created.id.startswith("file-")
    assert (created.bytes, created.purpose, created.filename, created.status) == (
        len(data),
        "batch",
        "batch.jsonl",
        "processed",
    )
    assert client.files.retrieve(created.id) == created
    assert client.files.content(created.id).content == data
    deleted = client.files.delete(created.id)
    assert deleted.deleted and deleted.id == created.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)


def test_batch_completes_with_output_and_error_files(client: openai.OpenAI) -> None:
    long_article = " ".join(["The council met again and talked about the park."] * 300)
    lines = [
        request_line("ok-1", words=20),
        request_line("bad-model", model="gpt-4o"),
        request_line("ok-2", words=40, response_format={"type": "json_object"}),
        request_line("too-long", long_article),
        request_line("empty", "   "),
    ]
    created = create_batch(client, lines, metadata={"job": "t1"})
    assert created.status == "validating"
    assert created.metadata == {"job": "t1"}
    assert created.request_counts is not None and created.request_counts.total == 5

    batch, seen = wait_for_batch(client, created.id)
    assert seen[-1] == "completed"
    assert "in_progress" in seen  # the processing delay makes it visible
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (5, 2, 3)
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at

    outputs = result_lines(client, batch.output_file_id)
    assert set(outputs) == {"ok-1", "ok-2"}
    first = outputs["ok-1"]["response"]
    assert first["status_code"] == 200 and outputs["ok-1"]["error"] is None
    assert ChatCompletion.model_validate(first["body"]).choices[0].message.content == summarize_text(ARTICLE, 20)
    second = outputs["ok-2"]["response"]["body"]["choices"][0]["message"]["content"]
    assert json.loads(second) == {"summary": summarize_text(ARTICLE, 40)}

    errors = result_lines(client, batch.error_file_id)
    assert set(errors) == {"bad-model", "too-long", "empty"}
    assert errors["bad-model"]["response"]["status_code"] == 404
    assert errors["too-long"]["response"]["body"]["error"]["code"] == "context_length_exceeded"
    assert errors["empty"]["response"]["status_code"] == 400
    assert batch.usage is not None and batch.usage.input_tokens > 0


def test_invalid_input_file_fails_the_batch(client: openai.OpenAI) -> None:
    data = shapes.jsonl([request_line("a")]) + b"{oops\n" + shapes.jsonl([request_line("a")])
    batch, _ = wait_for_batch(client, create_batch(client, data).id)
    assert batch.status == "failed" and batch.failed_at
    assert batch.errors is not None and batch.errors.data is not None
    assert [(e.code, e.line) for e in batch.errors.data] == [("invalid_json_line", 2), ("duplicate_custom_id", 3)]
    assert batch.output_file_id is None and batch.error_file_id is None


def test_batch_create_is_validated(client: openai.OpenAI) -> None:
    source = upload_batch_input(client, [request_line("a")])
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=source.id, endpoint="/v1/embeddings", completion_window="24h")
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="1h")  # type: ignore[arg-type]


def test_cancel_returns_unrun_lines(client: openai.OpenAI) -> None:
    created = create_batch(client, [request_line(f"c{i}") for i in range(3)])
    cancelling = client.batches.cancel(created.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    batch, _ = wait_for_batch(client, created.id)
    assert batch.status == "cancelled" and batch.cancelled_at
    errors = result_lines(client, batch.error_file_id)
    assert set(errors) == {"c0", "c1", "c2"}
    assert {e["error"]["code"] for e in errors.values()} == {"batch_cancelled"}
    with pytest.raises(openai.BadRequestError):
        client.batches.cancel(created.id)  # already finished


def test_batches_list_pages_newest_first(client: openai.OpenAI) -> None:
    ids = [create_batch(client, [request_line("a")]).id for _ in range(3)]
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[::-1][:2]
    assert first.has_more
    listed = [b.id for b in client.batches.list(limit=2)]  # auto-paging follows after=last_id
    assert listed[:3] == ids[::-1]
    assert len(listed) == len(set(listed))
    for batch_id in ids:
        wait_for_batch(client, batch_id)


def test_log_has_paths_and_statuses_only(secured: LLMServe) -> None:
    secret_article = "The zebra-crossing referendum passed narrowly on Sunday. Officials were surprised."
    client = secured.client(api_key=API_KEY)
    ask(client, secret_article)
    with pytest.raises(openai.AuthenticationError):
        ask(secured.client(api_key="sk-wrong-key"), secret_article)
    log = secured.log_text()
    assert re.search(r"llm-serve: POST /v1/chat/completions 200 [\d.]+ms", log)
    assert re.search(r"llm-serve: POST /v1/chat/completions 401 [\d.]+ms", log)
    for secret in (API_KEY, "sk-wrong-key", "zebra"):
        assert secret not in log


def test_stops_promptly_on_sigterm_and_ctrl_c(tmp_path: Path) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        srv = start_llm_serve(tmp_path)
        assert srv.client().models.list().data  # serving, with a kept-alive connection open
        code, took = srv.stop(sig)
        assert code == 0, srv.log_text()
        assert took < 3
        assert "llm-serve: stopped" in srv.log_text()
        assert "Traceback" not in srv.log_text()


def test_stops_on_sigterm_as_pid_1(tmp_path: Path) -> None:
    """In a container the server is PID 1, which the kernel shields from signals it has no handler for."""
    probe = subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"no PID namespace here: {probe.stderr.decode(errors='replace').strip()}")
    srv = start_llm_serve(tmp_path, wrapper=("unshare", "--pid", "--fork", "--mount-proc"))
    try:
        children = Path(f"/proc/{srv.proc.pid}/task/{srv.proc.pid}/children").read_text().split()
        assert len(children) == 1
        status = Path(f"/proc/{children[0]}/status").read_text()
        assert re.search(r"^NSpid:\s+\d+\s+1$", status, re.MULTILINE)  # PID 1 in its namespace
        assert srv.client().models.list().data
        started = time.monotonic()
        os.kill(int(children[0]), signal.SIGTERM)
        assert srv.proc.wait(timeout=10) == 0, srv.log_text()
        assert time.monotonic() - started < 3
    finally:
        srv.stop(signal.SIGKILL)
