"""`summarize estimate`, `submit --sample` and the ETA of `status`/`wait`, with real processes: the offline
server (`summarize llm-serve`, whose usage counts are real counts), a real redis-server and Celery workers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from contract.chunking import Fit
from contract.prompt import build_messages
from contract.settings import Settings
from contract.spec import BatchSpec
from contract.tokens import token_counter
from localllm.extractive import count_tokens
from producer.api import estimate
from producer.estimate import timings
from scripts.stack import Stack
from tests.conftest import Group, batch_id, isolated_group
from tests.faultserver import FaultServer
from tests.helpers import jl, poll, write_jsonl, write_lines

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "articles.jsonl"
PRICE_IN, PRICE_OUT = 0.15, 0.60  # gpt-4o-mini's list price, given to the free offline model
PRICES = ("--price-in", str(PRICE_IN), "--price-out", str(PRICE_OUT))


def within(estimated: float, recorded: float, share: float = 0.10) -> bool:
    return abs(estimated - recorded) <= share * recorded


@pytest.fixture(scope="module")
def offline(stack: Stack, redis_url: str, local_llm: str) -> Group:
    """The offline server under a prefix of its own: nothing in its result cache but what this module put."""
    # A small context window, so a long article is split (the sample articles still fit whole).
    g = isolated_group(
        stack, redis_url, local_llm, "sumy-lexrank", SUMMARIZE_LLM_TIMEOUT="30", SUMMARIZE_CONTEXT_TOKENS="2000"
    )
    g.worker("estimate-w1")
    return g


@pytest.fixture(scope="module")
def slow() -> Iterator[FaultServer]:
    with FaultServer(latency=0.6) as srv:
        yield srv


# ---- units: the figures from pure functions --------------------------------------------------------------------


def test_prompt_tokens_of_the_offline_model_are_its_own_count() -> None:
    est = estimate(str(SAMPLES), Settings(), r=None)
    spec = BatchSpec("sumy-lexrank", 80)
    texts = [json.loads(line)["text"] for line in SAMPLES.read_text(encoding="utf-8").splitlines()]
    exact = sum(count_tokens("\n".join(m["content"] for m in build_messages(t, spec))) for t in texts)
    assert est.articles == est.distinct == est.requests == 12
    assert est.prompt_tokens == exact
    assert est.cached is None and "not looked up" in est.cache_note
    counter = token_counter(Settings().provider)
    assert est.booked_tokens == sum(counter(build_messages(t, spec), est.completion_room) for t in texts)


def test_identical_texts_are_one_call_and_long_ones_are_split(tmp_path: Path) -> None:
    long = " ".join(f"Sentence {i} of the long report says the council met again." for i in range(600))
    src = write_jsonl(
        tmp_path / "in.jsonl",
        [{"id": "a", "text": "Short news."}, {"id": "b", "text": "Short news."}, {"id": "c", "text": long}],
    )
    settings = Settings(context_tokens=2000)
    est = estimate(str(src), settings, r=None)
    assert est.articles == 3 and est.distinct == 2
    fresh = estimate(str(src), settings, r=None, no_cache=True)
    assert fresh.distinct == 2 and fresh.requests == est.requests + 1  # no single flight without a cache key
    fit = Fit(2000, token_counter(settings.provider))
    spec = BatchSpec("sumy-lexrank", 80)
    parts = fit.parts(long, fit.part_room(spec))
    assert len(parts) > 1
    assert (est.split_articles, est.split_parts) == (1, len(parts))
    assert est.requests == 1 + len(parts) + 1  # the short text once, the parts, their combination


def test_time_is_the_slowest_bound() -> None:
    s = Settings(concurrency=10, rpm=600, tpm=0)
    by = {t.workers: t for t in timings(1000, 10**6, s, 2.0)}
    assert by[1].bound == "concurrency" and by[1].seconds == 200.0  # 100 rounds of 10 at 2 s
    assert by[16].bound == "rpm" and by[16].seconds == 102.0  # 1000 at 10 a second, plus the last one's 2 s
    t = timings(1000, 10**6, Settings(concurrency=10, tpm=60_000), 2.0)[2]
    assert t.bound == "tpm" and t.seconds == 1002.0


# ---- against a real run ----------------------------------------------------------------------------------------


def test_estimate_matches_what_a_real_run_records_then_all_cached(offline: Group) -> None:
    before = offline.cli("estimate", str(SAMPLES), *PRICES, "--json")
    assert before.returncode == 0, before.stderr
    est = json.loads(before.stdout)
    assert est["articles"] == 12 and est["cached"] == 0 and est["requests"] == 12
    assert est["price_in"] == PRICE_IN and est["cost_batch"] == pytest.approx(est["cost_online"] / 2, rel=1e-3)

    bid = batch_id()
    sub = offline.cli("submit", str(SAMPLES), "--batch-id", bid, *PRICES, "-q")
    assert sub.returncode == 0, sub.stderr
    assert offline.cli("wait", bid, "--timeout", "120", "-q").returncode == 0
    status = json.loads(offline.cli("status", bid, "--json").stdout)
    assert status["done"] == 12 and status["calls"] == 12
    assert within(est["prompt_tokens"], status["prompt_tokens"]), (est["prompt_tokens"], status["prompt_tokens"])
    assert within(est["completion_tokens"], status["completion_tokens"]), (
        est["completion_tokens"],
        status["completion_tokens"],
    )
    assert within(est["cost_online"], status["cost_usd"]), (est["cost_online"], status["cost_usd"])

    after = offline.cli("estimate", str(SAMPLES), *PRICES)
    assert after.returncode == 0, after.stderr
    assert "12 of 12 distinct text(s) would be answered from it now" in after.stdout
    again = json.loads(offline.cli("estimate", str(SAMPLES), *PRICES, "--json").stdout)
    assert again["cached"] == 12 and again["requests"] == 0 and again["cost_online"] == 0
    client = offline.client()
    try:  # the Python API: the same figures
        api = client.estimate(str(SAMPLES), price_in=PRICE_IN, price_out=PRICE_OUT)
        assert (api.cached, api.requests, api.articles) == (12, 0, 12)
        items = [json.loads(line) for line in SAMPLES.read_text(encoding="utf-8").splitlines()]
        assert client.estimate([*items[:3], {"text": "A new article."}]).cached == 3
    finally:
        client.close()
    # Another spec is another answer: nothing of it is cached.
    other = json.loads(offline.cli("estimate", str(SAMPLES), "--max-words", "30", "--json").stdout)
    assert other["cached"] == 0 and other["requests"] == 12


def test_a_long_article_is_split_as_the_worker_splits_it(offline: Group, tmp_path: Path) -> None:
    long = " ".join(f"Sentence {i} of the long report says the council met on day {i}." for i in range(400))
    src = write_jsonl(tmp_path / "long.jsonl", [{"id": "long", "text": long}])
    est = json.loads(offline.cli("estimate", str(src), "--json").stdout)
    assert est["split_articles"] == 1 and est["split_parts"] > 1 and est["context_tokens"] == 2000
    bid = batch_id()
    assert offline.cli("submit", str(src), "--batch-id", bid, "-q").returncode == 0
    assert offline.cli("wait", bid, "--timeout", "120", "-q").returncode == 0
    (row,) = offline.results(bid)
    status = json.loads(offline.cli("status", bid, "--json").stdout)
    assert row["chunks"] == est["split_parts"], (row, est)
    assert status["calls"] == est["requests"] == est["split_parts"] + 1
    assert within(est["prompt_tokens"], status["prompt_tokens"], 0.2), (est["prompt_tokens"], status["prompt_tokens"])


def test_estimate_fails_a_bad_file_with_submits_own_message(offline: Group, tmp_path: Path) -> None:
    bad = write_lines(
        tmp_path / "bad.jsonl",
        jl({"id": "ok", "text": "A fine article."}),
        jl({"id": "x", "body": "no text field"}),
        b"{not json\n",
        jl({"id": "ok", "text": "The same id again."}),
    )
    est = offline.cli("estimate", str(bad))
    sub = offline.cli("submit", str(bad), "--batch-id", batch_id(), "-q")
    assert est.returncode == sub.returncode == 3, (est.stderr, sub.stderr)
    assert est.stderr.removeprefix("summarize estimate: ") == sub.stderr.removeprefix("summarize submit: ")
    assert "bad.jsonl:2" in est.stderr and "duplicate id 'ok'" in est.stderr
    assert est.stdout == ""
    skipped = json.loads(offline.cli("estimate", str(bad), "--skip-invalid", "--json").stdout)
    kept = offline.cli("submit", str(bad), "--batch-id", batch_id(), "--skip-invalid", "--wait", "-q")
    assert "1 enqueued, 0 already there, 3 invalid" in kept.stderr, kept.stderr
    assert skipped["invalid"] == 3 and skipped["articles"] == skipped["requests"] == 1  # the repeat of 'ok' too


def test_estimate_without_redis_says_so(offline: Group) -> None:
    r = offline.cli("estimate", str(SAMPLES), env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert r.returncode == 0, r.stderr
    assert "result cache         not looked up: Redis at redis://127.0.0.1:1/0 is unreachable" in r.stdout
    served = json.loads(offline.cli("estimate", str(SAMPLES), "--json", env={"SUMMARIZE_CONTEXT_TOKENS": "0"}).stdout)
    # The context window where a worker finds it first: the server's /v1/models (llm-serve's 16384).
    assert (served["context_tokens"], served["context_source"]) == (16384, "the server's /v1/models")
    unknown = offline.cli("estimate", str(SAMPLES), "--model", "no-such-model")
    assert "cost online          unknown (no price known for no-such-model: give --price-in" in unknown.stdout
    assert "cost in batch mode   unknown" in unknown.stdout


def test_sample_submits_exactly_n_chosen_by_the_seed(offline: Group) -> None:
    ids = [json.loads(line)["id"] for line in SAMPLES.read_text(encoding="utf-8").splitlines()]
    picked = []
    for _ in range(2):
        bid = batch_id()
        sub = offline.cli("submit", str(SAMPLES), "--batch-id", bid, "--sample", "5", "--seed", "7", "-q")
        assert sub.returncode == 0, sub.stderr
        assert "a trial of 5" in sub.stderr and "submit again without --sample for the whole file" in sub.stderr
        assert sub.stdout.strip().splitlines()[-1] == bid
        assert offline.cli("wait", bid, "--timeout", "60", "-q").returncode == 0
        rows = offline.results(bid)
        assert len(rows) == 5 and all(r["status"] == "done" for r in rows)
        picked.append([r["id"] for r in rows])
    assert picked[0] == picked[1]  # the same seed, the same five
    assert picked[0] == [i for i in ids if i in picked[0]]  # in input order
    other = offline.cli("submit", str(SAMPLES), "--batch-id", batch_id(), "--sample", "5", "--seed", "8", "-q")
    assert other.returncode == 0
    more = offline.cli("submit", str(SAMPLES), "--batch-id", batch_id(), "--sample", "50", "-q")
    assert "a trial of 12" in more.stderr  # the file has only 12


def test_status_and_wait_show_eta_and_projected_cost(stack: Stack, redis_url: str, slow: FaultServer) -> None:
    g = isolated_group(stack, redis_url, slow.url, SUMMARIZE_CONCURRENCY="2", SUMMARIZE_JOBS_PER_MESSAGE="1")
    g.worker("estimate-eta", SUMMARIZE_RPM="6000")  # 100 a second: no pacing felt, but a limit published
    items = [{"id": f"eta{i}", "text": f"eta story {i}: the harbour board approved berth {i}."} for i in range(16)]
    batch = g.client().submit(items, batch_id=batch_id(), price_in=2.0, price_out=8.0)
    running = poll(batch.status, lambda s: s["done"] >= 4, timeout=60)
    assert 4 <= running["done"] < 16, running
    shown = g.cli("status", batch.id)
    assert shown.returncode == 0, shown.stderr
    assert "ETA" in shown.stdout and "jobs/s so far" in shown.stdout, shown.stdout
    assert "projected cost" in shown.stdout and "for all 16 jobs" in shown.stdout, shown.stdout
    st = json.loads(g.cli("status", batch.id, "--json").stdout)
    p = st["progress"]
    assert p["eta_s"] > 0 and p["rate_per_s"] > 0
    assert p["projected_cost_usd"] == pytest.approx(st["cost_usd"] / st["done"] * 16, rel=1e-3)
    waited = g.cli("wait", batch.id, "--timeout", "1")
    assert "eta " in waited.stderr and "projected cost $" in waited.stderr, waited.stderr
    # The limits the live workers obey, whatever this shell's SUMMARIZE_RPM says.
    fleet = json.loads(g.cli("estimate", str(SAMPLES), "--json", env={"SUMMARIZE_RPM": "0"}).stdout)
    assert fleet["rpm"] == 6000 and fleet["limits_source"] == "the strictest of 1 live worker(s)", fleet
    one, _, sixteen = fleet["timings"]
    assert (one["bound"], one["seconds"]) == ("concurrency", 12.0)  # 6 rounds of SUMMARIZE_CONCURRENCY=2
    assert (sixteen["bound"], sixteen["seconds"]) == ("rpm", pytest.approx(12 / 100 + 2.0))  # + the last's 2 s
    done = batch.wait(timeout=60)
    assert done["done"] == 16
    final = batch.progress(done)
    assert final["eta_s"] == 0.0 and final["projected_cost_usd"] == pytest.approx(done["cost_usd"], rel=1e-3)
