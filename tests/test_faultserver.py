"""The fault server behaves the way the real openai client will see it."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from openai.types.chat import ChatCompletion

from tests.faultserver import FaultServer, ServerConfig, article_key, expected_summary, extract_article

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    with FaultServer() as srv:
        yield srv
        # Hidden server-side errors (e.g. uvicorn complaining about the reset path) fail here.
        log = srv.server_log()
        assert "Traceback" not in log and "ERROR" not in log, log


@pytest.fixture
def srv(server: FaultServer) -> Iterator[FaultServer]:
    # Config (rpm, outage, api_key) is server-wide, so every test leaves a clean server behind.
    yield server
    server.reset()


@pytest.fixture
def client(server: FaultServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key="k", max_retries=0, timeout=2)


def make_article(directives: str = "") -> str:
    # The uuid marker keeps each test's per-article counters separate.
    return f"The quick brown fox [[id:{uuid.uuid4().hex}]] jumps over the lazy dog {directives} again and again"


def ask(client: openai.OpenAI, article: str, model: str = "fake-model") -> ChatCompletion:
    return client.chat.completions.create(
        model=model,
        messages=[
            {"role": "system", "content": "You summarize articles."},
            {"role": "user", "content": f"Summarize this:\n<article>\n{article}\n</article>"},
        ],
    )


def test_helpers() -> None:
    assert extract_article("x <article> a <article> b </article> c </article> y") == "a <article> b </article> c"
    assert extract_article("no tags here ") == "no tags here "
    assert expected_summary("a [[fault:500x1]] b [[id:7]]c " + "w " * 20) == "Summary: a b c " + " ".join(["w"] * 9)
    assert article_key("a[[x]]") != article_key("a")


def test_success_body_and_usage(srv: FaultServer, client: openai.OpenAI) -> None:
    article = make_article()
    resp = ask(client, article, model="my-model")
    assert resp.model == "my-model"
    assert resp.object == "chat.completion"
    choice = resp.choices[0]
    assert choice.message.content == expected_summary(article)
    assert choice.finish_reason == "stop"
    prompt_len = len("You summarize articles.") + len(f"Summarize this:\n<article>\n{article}\n</article>")
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == -(-prompt_len // 4)  # a token per 4 characters, rounded up
    assert resp.usage.completion_tokens == len(expected_summary(article).split())
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert client.models.list().data[0].id == "fake-model"


def test_429_with_fractional_retry_after(srv: FaultServer, client: openai.OpenAI) -> None:
    article = make_article("[[fault:429x1:0.5]]")
    with pytest.raises(openai.RateLimitError) as exc_info:
        ask(client, article)
    assert exc_info.value.response.headers["retry-after"] == "0.5"
    assert exc_info.value.type == "rate_limit_exceeded"
    assert ask(client, article).choices[0].message.content == expected_summary(article)


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_once(srv: FaultServer, client: openai.OpenAI, status: int) -> None:
    article = make_article(f"[[fault:{status}x1]]")
    with pytest.raises(openai.InternalServerError) as exc_info:
        ask(client, article)
    assert exc_info.value.status_code == status
    ask(client, article)


def test_directives_consume_slots_in_order(srv: FaultServer, client: openai.OpenAI) -> None:
    article = make_article("[[fault:429x1:0]] [[fault:500x2]]")
    with pytest.raises(openai.RateLimitError):
        ask(client, article)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            ask(client, article)
    ask(client, article)
    stats = srv.stats()
    assert stats["by_article"][article_key(article)] == 4
    assert stats["statuses"] == {"429": 1, "500": 2, "200": 1}
    assert stats["ok"] == 1 and len(stats["ok_times"]) == 1


def test_hang_times_out_client(srv: FaultServer) -> None:
    client = openai.OpenAI(base_url=srv.url, api_key="k", max_retries=0, timeout=1)
    article = make_article("[[fault:hangx1:5]]")
    with pytest.raises(openai.APITimeoutError):
        ask(client, article)
    ask(client, article)  # the second request is not hung
    # The server gives up on the hung request once the client hangs up, well before 5 s.
    deadline = time.monotonic() + 3
    while (stats := srv.stats())["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats["in_flight"] == 0
    assert stats["statuses"] == {"disconnected": 1, "200": 1}
    assert stats["ok"] == 1


def test_reset_drops_connection(srv: FaultServer, client: openai.OpenAI) -> None:
    article = make_article("[[fault:resetx1]]")
    with pytest.raises(openai.APIConnectionError) as exc_info:
        ask(client, article)
    assert not isinstance(exc_info.value, openai.APITimeoutError)
    ask(client, article)
    assert srv.stats()["statuses"] == {"reset": 1, "200": 1}


def test_garbage_body(srv: FaultServer, client: openai.OpenAI) -> None:
    # The openai client (2.x) trusts the application/json content type and calls response.json(),
    # so the garbage surfaces as a bare json.JSONDecodeError (a ValueError), NOT an openai.APIError.
    article = make_article("[[fault:garbagex1]]")
    with pytest.raises(ValueError) as exc_info:
        ask(client, article)
    assert not isinstance(exc_info.value, openai.OpenAIError)
    ask(client, article)
    stats = srv.stats()
    assert stats["statuses"] == {"200": 2}
    assert stats["ok"] == 1  # injected 200s are not successes


def test_empty_blank_length_bodies(srv: FaultServer, client: openai.OpenAI) -> None:
    empty = make_article("[[fault:emptyx1]]")
    assert ask(client, empty).choices == []

    blank = make_article("[[fault:blankx1]]")
    resp = ask(client, blank)
    assert resp.choices[0].message.content == ""
    assert resp.choices[0].finish_reason == "stop"

    length = make_article("[[fault:lengthx1]]")
    resp = ask(client, length)
    assert resp.choices[0].message.content == "Summary: The quick"
    assert resp.choices[0].finish_reason == "length"
    assert ask(client, length).choices[0].message.content == expected_summary(length)
    assert srv.stats()["ok"] == 1


@pytest.mark.parametrize(
    ("directive", "exc_type", "code"),
    [
        ("400", openai.BadRequestError, None),
        ("401", openai.AuthenticationError, "invalid_api_key"),
        ("404", openai.NotFoundError, "model_not_found"),
    ],
)
def test_permanent_errors(
    srv: FaultServer, client: openai.OpenAI, directive: str, exc_type: type[openai.APIStatusError], code: str
) -> None:
    article = make_article(f"[[fault:{directive}]]")
    for _ in range(3):
        with pytest.raises(exc_type) as exc_info:
            ask(client, article)
        assert exc_info.value.code == code
    assert srv.stats()["by_article"][article_key(article)] == 3


def test_malformed_directive_is_rejected(srv: FaultServer, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="malformed"):
        ask(client, make_article("[[fault:50x1]]"))


def test_rpm_limit(srv: FaultServer, client: openai.OpenAI) -> None:
    srv.configure(rpm=5)
    for _ in range(5):
        ask(client, make_article())
    with pytest.raises(openai.RateLimitError) as exc_info:
        ask(client, make_article())
    assert 58 <= int(exc_info.value.response.headers["retry-after"]) <= 60
    stats = srv.stats()
    assert stats["overshoot_429"] == 1
    assert stats["statuses"] == {"200": 5, "429": 1}


def test_api_key_config(srv: FaultServer, client: openai.OpenAI) -> None:
    assert srv.configure(api_key="s3cret") == {**ServerConfig().public(), "api_key_set": True}
    with pytest.raises(openai.AuthenticationError):
        ask(client, make_article())
    good = openai.OpenAI(base_url=srv.url, api_key="s3cret", max_retries=0, timeout=2)
    ask(good, make_article())


def test_api_key_from_env_not_argv() -> None:
    with FaultServer(api_key="from-env") as srv:
        assert srv._proc is not None
        assert "from-env" not in str(srv._proc.args)
        bad = openai.OpenAI(base_url=srv.url, api_key="k", max_retries=0, timeout=2)
        with pytest.raises(openai.AuthenticationError):
            ask(bad, make_article())
        good = openai.OpenAI(base_url=srv.url, api_key="from-env", max_retries=0, timeout=2)
        ask(good, make_article())


def test_outage(srv: FaultServer, client: openai.OpenAI) -> None:
    srv.outage(0.5, status=503)
    with pytest.raises(openai.InternalServerError) as exc_info:
        ask(client, make_article())
    assert exc_info.value.status_code == 503
    time.sleep(0.6)
    ask(client, make_article())

    srv.outage(30, status=429)
    with pytest.raises(openai.RateLimitError):
        ask(client, make_article())
    srv.outage(0)  # ends it early
    ask(client, make_article())


def test_reset_restores_start_state(srv: FaultServer, client: openai.OpenAI) -> None:
    article = make_article("[[fault:500x1]]")
    with pytest.raises(openai.InternalServerError):
        ask(client, article)
    srv.configure(latency=0.05, rpm=100)
    srv.outage(30)
    srv.reset()
    stats = srv.stats()
    assert stats["requests"] == 0 and stats["ok"] == 0 and stats["by_article"] == {}
    assert stats["statuses"] == {} and stats["ok_times"] == []
    assert stats["config"] == ServerConfig().public()
    with pytest.raises(openai.InternalServerError):  # per-article fault progress was cleared too
        ask(client, article)


def test_concurrency_sanity(srv: FaultServer, client: openai.OpenAI) -> None:
    # Not a benchmark: only checks that hundreds of keep-alive connections are served in parallel.
    srv.configure(latency=0.2)
    articles = [make_article() for _ in range(300)]
    # Thread start-up alone would stagger the requests past the 0.2 s latency, leaving too few in
    # flight at once; the barrier releases them together so the server's concurrency shows.
    start = threading.Barrier(len(articles))

    def call(article: str) -> str | None:
        start.wait(timeout=15)
        return ask(client, article).choices[0].message.content

    with ThreadPoolExecutor(max_workers=len(articles)) as pool:
        results = list(pool.map(call, articles))
    assert results == [expected_summary(a) for a in articles]
    stats = srv.stats()
    assert stats["ok"] == 300
    # The client side (300 threads on 2 shared cores) bounds how many requests start within the 0.2 s
    # latency; well above the connection-per-request baseline of 1 is what shows the server's concurrency.
    assert stats["max_in_flight"] >= 50
