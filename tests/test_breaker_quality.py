"""Breaking issue 24 (estimate, the checks on every summary, --require-checks, retry --flagged, eval) with real
processes: a redis-server, one Celery worker, the session's fault server (its quality faults,
tests/faultserver/directives.py QUALITY_KINDS), driven through the `summarize` CLI; plus the checks and the
eval report called directly on pathological text.

Each test is one attack that found a defect (fixed since) or one that held and guards it.
"""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from contract.checks import check
from contract.keys import Keys
from producer.evaluate import evaluate, read_references, write_html
from scripts.stack import Stack
from tests.conftest import Group, batch_id, isolated_group
from tests.faultserver import FaultServer, article_key
from tests.helpers import write_jsonl

MAX_WORDS = "60"
#: this run's own texts: the result cache and the fault server's counters know nothing of them yet
RUN = uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def group(stack: Stack, redis_url: str, fault_server: FaultServer) -> Group:
    g = isolated_group(stack, redis_url, fault_server.url, SUMMARIZE_MAX_UNUSABLE="2")
    g.worker("breakq-w1")
    return g


def story(tag: str, i: int, fault: str = "") -> dict[str, str]:
    """An article of this test's own (`tag`), with a quality fault marker when `fault` is given."""
    text = (
        f"The harbour board of Kelsey met on day {i} and approved the new berth for the ferry service, "
        f"which residents had long asked for. Work starts next spring. [[id:{RUN}{tag}{i}]]"
    )
    return {"id": f"{tag}{i}", "text": text + (f" [[fault:{fault}]]" if fault else "")}


def submit(g: Group, src: Path, *extra: str, code: int = 0, words: str = MAX_WORDS) -> str:
    bid = batch_id()
    run = g.cli("submit", str(src), "--batch-id", bid, "--max-words", words, *extra, "--wait", "-q")
    assert run.returncode == code, run.stderr
    return bid


def status(g: Group, bid: str) -> dict[str, Any]:
    r = g.cli("status", bid, "--json")
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def asked(server: FaultServer, text: str, model: str = "fake-model") -> int:
    return int(server.stats()["by_model_article"].get(f"{model} {article_key(text)}", 0))


# ---- money and counts: retry --flagged against the result cache ------------------------------------------


def test_retry_flagged_asks_again_an_answer_another_batch_served_it_from_the_cache(
    group: Group, fault_server: FaultServer, tmp_path: Path
) -> None:
    """A flagged answer is cached (a batch without --require-checks may use it), and a later batch of the same
    article is served it. `retry C --flagged` on that later batch must ask the model again, not be served
    the same flagged answer from the cache once more (it was: requeued 1, no call, still flagged)."""
    arts = [story("rc", 0, "inventx1"), story("rc", 1)]
    src = write_jsonl(tmp_path / "in.jsonl", arts)
    first = submit(group, src)
    assert status(group, first)["flags"]["numbers"] == 1
    later = submit(group, src)
    st = status(group, later)
    assert st["cached"] == 2 and st["flagged"] == 1  # a flagged answer is usable without --require-checks
    assert asked(fault_server, arts[0]["text"]) == 1
    run = group.cli("retry", later, "--flagged")
    assert run.returncode == 0 and "requeued 1 flagged job(s)" in run.stderr, run.stderr
    assert group.cli("wait", later, "--timeout", "60", "-q").returncode == 0
    assert asked(fault_server, arts[0]["text"]) == 2  # asked again (the fault was for the first request only)
    rows = group.results_by_id(later)
    assert rows["rc0"]["status"] == "done" and rows["rc0"]["checks"]["flags"] == [], rows["rc0"]
    st = status(group, later)
    assert st["flagged"] == 0 and st["done"] == 2 and st["queued"] == 0
    # the first batch keeps its own (flagged) answer: a retry of one batch rewrites no other's rows
    assert group.results_by_id(first)["rc0"]["checks"]["flags"] == ["numbers"]


def test_a_gated_batch_is_never_served_a_flagged_cached_answer(
    group: Group, fault_server: FaultServer, tmp_path: Path
) -> None:
    arts = [story("gc", 0, "refusex1")]
    src = write_jsonl(tmp_path / "in.jsonl", arts)
    plain = submit(group, src)
    assert status(group, plain)["flags"]["refusal"] == 1
    gated = submit(group, src, "--require-checks", "refusal")
    (row,) = group.results(gated)
    assert row["status"] == "done" and row["checks"]["flags"] == [] and not row.get("cached"), row
    assert asked(fault_server, arts[0]["text"]) == 2
    # and the gated batch's clean answer is served to the next gated one, without a call
    again = submit(group, src, "--require-checks", "refusal")
    assert status(group, again)["cached"] == 1 and asked(fault_server, arts[0]["text"]) == 2


# ---- retry --flagged in a batch that can't run ----------------------------------------------------------


def test_retry_flagged_in_a_cancelled_batch_keeps_the_answers(group: Group, tmp_path: Path) -> None:
    """A cancelled batch's claim ends every queued job cancelled: a flagged (but usable) answer sent there again
    was lost, summary and kept article both (the row turned `cancelled`)."""
    src = write_jsonl(tmp_path / "in.jsonl", [story("cx", 0, "longx1"), story("cx", 1)])
    bid = submit(group, src, "--no-cache", words="20")  # the long answer has 31 words, a normal one 13
    assert status(group, bid)["flags"]["length"] == 1
    assert group.cli("cancel", bid).returncode == 0
    run = group.cli("retry", bid, "--flagged")
    assert run.returncode == 0, run.stderr
    assert "requeued 0 flagged job(s)" in run.stderr, run.stderr
    group.cli("wait", bid, "--timeout", "10", "-q")
    rows = group.results_by_id(bid)
    assert rows["cx0"]["status"] == "done" and rows["cx0"]["checks"]["flags"] == ["length"], rows["cx0"]
    assert status(group, bid)["flagged"] == 1


def test_two_concurrent_retry_flagged_requeue_each_job_once(
    group: Group, fault_server: FaultServer, tmp_path: Path
) -> None:
    arts = [story("cc", i, "foreignx1" if i % 2 else "") for i in range(8)]
    src = write_jsonl(tmp_path / "in.jsonl", arts)
    bid = submit(group, src, "--no-cache")
    assert status(group, bid)["flagged"] == 4
    outs: list[subprocess.CompletedProcess[str]] = []
    threads = [threading.Thread(target=lambda: outs.append(group.cli("retry", bid, "--flagged"))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = sorted(int(o.stderr.split("requeued ")[1].split()[0]) for o in outs)
    assert sum(counts) == 4, [o.stderr for o in outs]
    assert group.cli("wait", bid, "--timeout", "60", "-q").returncode == 0
    st = status(group, bid)
    assert (st["done"], st["queued"], st["running"], st["flagged"]) == (8, 0, 0, 0), st
    assert set(st["flags"].values()) == {0}
    assert all(asked(fault_server, a["text"]) == (2 if i % 2 else 1) for i, a in enumerate(arts))


def test_purge_of_a_batch_with_flagged_answers_leaves_nothing(group: Group, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [story("pg", 0, "invent"), story("pg", 1)])
    bid = submit(group, src)
    assert status(group, bid)["flagged"] == 1
    keys = Keys(group.settings.key_prefix, group.settings.queue)
    client = group.client()
    try:
        assert client.redis.hexists(keys.kept(bid), "pg0")  # a flagged answer keeps its article for retry
        purge = group.cli("purge", bid)
        assert purge.returncode == 0, purge.stderr
        left = [k for k in client.redis.scan_iter(match="*", count=1000) if bid in k]
        assert left == [], left
    finally:
        client.close()


# ---- estimate takes submit's options --------------------------------------------------------------------


def test_estimate_takes_require_checks_and_language_and_counts_the_cache_of_that_spec(
    group: Group, tmp_path: Path
) -> None:
    """A gated batch has a cache of its own (contract/prompt.py fingerprint): an estimate without
    --require-checks would count answers a gated submit will pay for again."""
    src = write_jsonl(tmp_path / "in.jsonl", [story("es", 0)])
    submit(group, src)
    plain = json.loads(group.cli("estimate", str(src), "--max-words", MAX_WORDS, "--json").stdout)
    assert plain["cached"] == 1
    gated = group.cli("estimate", str(src), "--max-words", MAX_WORDS, "--require-checks", "numbers", "--json")
    assert gated.returncode == 0, gated.stderr
    assert json.loads(gated.stdout)["cached"] == 0
    lang = group.cli("estimate", str(src), "--max-words", MAX_WORDS, "--language", "en", "--json")
    assert lang.returncode == 0 and json.loads(lang.stdout)["cached"] == 0, lang.stderr
    wrong = group.cli("estimate", str(src), "--require-checks", "spelling")
    sub = group.cli("submit", str(src), "--require-checks", "spelling")
    assert wrong.returncode == sub.returncode == 3 and "unknown check 'spelling'" in wrong.stderr, wrong.stderr
    bad = group.cli("estimate", str(src), "--language", "xx")
    assert bad.returncode == 3 and "--language 'xx'" in bad.stderr, bad.stderr


# ---- the checks on pathological text (pure calls) --------------------------------------------------------


def test_german_nouns_are_not_invented_names() -> None:
    """German capitalises every noun: a German summary's nouns not in the article were all 'names'."""
    article = (
        "Der Stadtrat hat am Dienstag beschlossen, die alte Brücke zu ersetzen. Die Anwohner und Händler hatten "
        "lange auf das Projekt gewartet. Die Bauarbeiten sollen im nächsten Jahr beginnen, sagte Bürgermeisterin "
        "Anna Keller."
    )
    summary = (
        "Der Stadtrat beschloss den Ersatz der alten Brücke, auf den die Anwohner lange gewartet hatten; "
        "der Bau beginnt nächstes Jahr."
    )
    assert check(article, summary, 60).names == ()


def test_copied_counts_a_verbatim_copy_in_a_script_without_spaces() -> None:
    """Chinese and Japanese write no spaces: a verbatim copy scored `copied` 0 ("every pair of words new")."""
    zh = "东京市议会周二投票决定更换旧桥，这个项目当地居民和商人期待已久。市长表示工程将于明年开始。"
    assert check(zh, zh, 60).copied == 100
    ja = "東京都議会は火曜日、古い橋を架け替えることを決めた。住民や商店主が長く待ち望んでいた計画だ。"
    assert check(ja, ja[:30], 60).copied == 100
    assert check(zh, "一二三四五六七八九十", 60).copied == 0


@pytest.mark.parametrize(
    ("article", "summary"),
    [
        ("The council met on March 3, 2024 to vote.", "On 3 March 2024 the council voted."),
        ("The plan costs 3.5 million dollars.", "The plan costs 3,500,000 dollars."),
        ("The plan costs 3,500,000 dollars.", "The plan costs 3.5 million dollars."),
        ("The deal is worth $4bn, officials said.", "The deal is worth $4 billion."),
        ("The deal is worth $4 billion, officials said.", "The deal is worth $4bn."),
        ("Profits rose 12 percent this year.", "Profits rose 12% this year."),
        ("Anything at all here.", ""),
        ("Figures: 1 2 3 4 5.", "1 2 3 4 5"),
        ("The mayor of São Paulo, João Silva, spoke.", "João Silva, the mayor of São Paulo, spoke."),
        (
            "صوت مجلس المدينة يوم الثلاثاء على استبدال الجسر القديم، وهو مشروع انتظره السكان والتجار طويلا.",
            "صوت مجلس المدينة يوم الثلاثاء على استبدال الجسر القديم الذي انتظره السكان طويلا.",
        ),
        (
            "东京市议会周二投票决定更换旧桥，这个项目当地居民和商人期待已久。市长表示工程将于明年开始，预算为350万元。",
            "东京市议会周二投票决定更换旧桥，市长表示工程将于明年开始，预算为350万元，居民期待已久。",
        ),
    ],
)
def test_no_false_flag_on_the_same_facts_written_otherwise(article: str, summary: str) -> None:
    assert check(article, summary, 60).names == ()


def test_checks_on_json_answers_read_their_strings_only() -> None:
    article = "The council approved 12 new berths for the harbour on Tuesday."
    answer = json.dumps({"summary": "The council approved 12 new berths.", "count": 12, "tags": ["harbour"]})
    assert check(article, answer, 5, structured=True).names == ()  # no length check on JSON: its shape is the schema's
    invented = json.dumps({"summary": "The council approved 99 berths in Zurich."})
    assert check(article, invented, 60, structured=True).names == ("numbers", "names")
    assert check(article, "{not json", 60, structured=True).names == ()


# ---- eval -----------------------------------------------------------------------------------------------


def test_eval_names_a_bad_reference_line_and_counts_unknown_ids(tmp_path: Path) -> None:
    from contract.errors import ConfigError

    bad = tmp_path / "refs.jsonl"
    bad.write_text('{"id": "a", "reference": "x"}\n\n{"id": "b"}\n')
    with pytest.raises(ConfigError, match=r"line 3: an object with"):
        read_references(str(bad))
    bad.write_text('{"id": "a", "reference": "x"}\n{"id": "a", "reference": "y"}\n')
    with pytest.raises(ConfigError, match=r"line 2: duplicate id 'a'"):
        read_references(str(bad))
    bad.write_text('{"id": "a", "reference": "x"}\n{oops\n')
    with pytest.raises(ConfigError, match=r"line 2: not JSON"):
        read_references(str(bad))
    refs = {"a": "the council met", "zz": "not in the batch"}
    rows = [{"id": "a", "status": "done", "summary": "The council met.", "checks": {"flags": [], "copied": 1.0}}]
    report = evaluate("b1", rows, refs)
    assert (report["scored"], report["references_without_row"]) == (1, 1)


def test_eval_html_escapes_what_it_shows(tmp_path: Path) -> None:
    rows = [{"id": "<script>alert(1)</script>", "status": "done", "summary": "<script>alert(2)</script> x"}]
    report = evaluate("<b>x</b>", rows, {"<script>alert(1)</script>": "<script>alert(3)</script>"})
    page = tmp_path / "r.html"
    write_html(report, str(page))
    html = page.read_text()
    assert "<script" not in html and "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html


def test_retry_flagged_in_a_halted_batch_asks_again_and_keeps_the_answers(
    group: Group, fault_server: FaultServer, tmp_path: Path
) -> None:
    """A halted batch's claim fails every queued job ('batch halted by an earlier provider error'): a flagged
    answer sent there again was lost. As `retry` does, `retry --flagged` (after the fix) un-halts it."""
    first = story("hx", 0, "inventx1")
    bid = submit(group, write_jsonl(tmp_path / "a.jsonl", [first]), "--no-cache")
    assert status(group, bid)["flagged"] == 1
    more = write_jsonl(tmp_path / "b.jsonl", [story("hx", 1, "401")])
    extend = group.cli("submit", str(more), "--batch-id", bid, "--wait", "-q")
    assert extend.returncode == 1, extend.stderr
    assert status(group, bid)["state"] == "halted"
    run = group.cli("retry", bid, "--flagged")
    assert run.returncode == 0 and "requeued 1 flagged job(s)" in run.stderr, run.stderr
    group.cli("wait", bid, "--timeout", "30", "-q")
    row = group.results_by_id(bid)["hx0"]
    assert row["status"] == "done" and row["checks"]["flags"] == [], row
    assert asked(fault_server, first["text"]) == 2


def test_a_structured_batch_raises_no_flag_on_its_json_answers(group: Group, tmp_path: Path) -> None:
    schema = Path(__file__).resolve().parent.parent / "samples" / "brief.schema.json"
    src = write_jsonl(tmp_path / "in.jsonl", [story("js", i) for i in range(3)])
    bid = submit(group, src, "--json-schema", str(schema), "--require-checks", "length,numbers,names,refusal,language")
    rows = group.results(bid)
    assert all(r["status"] == "done" and r["data"] and r["checks"]["flags"] == [] for r in rows), rows


@pytest.mark.xfail(
    strict=False,
    reason="reported: the rate is finished jobs / time since the batch was created; passes when the re-ask ends first",
)
def test_eta_after_retry_flagged_of_an_old_batch_is_not_its_age(
    group: Group, fault_server: FaultServer, tmp_path: Path
) -> None:
    """`retry --flagged` on a batch that finished a while ago: the ETA divides the jobs left by finished / age,
    so it grows with the batch's age, not with the work left (here one re-ask that takes a second)."""
    import time

    src = write_jsonl(tmp_path / "in.jsonl", [story("eta", 0, "refusex1"), story("eta", 1)])
    bid = submit(group, src, "--no-cache")
    time.sleep(3)
    fault_server.configure(latency=1.0)  # the re-ask is still running when status is read
    try:
        assert "requeued 1" in group.cli("retry", bid, "--flagged").stderr
        p = status(group, bid)["progress"]
    finally:
        fault_server.configure(latency=0.0)
    group.cli("wait", bid, "--timeout", "30", "-q")
    if p["eta_s"] == 0:  # on a loaded machine the re-ask may be over before status reads it
        pytest.skip("the re-ask finished before status was read")
    assert p["eta_s"] is not None and p["eta_s"] < 2.5, p  # one re-ask of a second


@pytest.mark.xfail(strict=True, reason="reported: retry --flagged drops the old answer before the new one lands")
def test_a_failed_re_ask_keeps_the_flagged_answer_it_was_to_replace(
    group: Group, fault_server: FaultServer, tmp_path: Path
) -> None:
    """`retry --flagged --model M` where M answers nothing usable (here: no such model): the flagged, paid and
    usable summary is gone, the row failed."""
    src = write_jsonl(tmp_path / "in.jsonl", [story("fr", 0, "inventx1"), story("fr", 1)])
    bid = submit(group, src, "--no-cache")
    fault_server.configure(missing_models=["no-such-model"])
    try:
        run = group.cli("retry", bid, "--flagged", "--model", "no-such-model")
        assert run.returncode == 0 and "requeued 1" in run.stderr, run.stderr
        group.cli("wait", bid, "--timeout", "30", "-q")
    finally:
        fault_server.configure(missing_models=[])
    row = group.results_by_id(bid)["fr0"]
    assert row["status"] == "done" and row["summary"], row


@pytest.mark.xfail(
    strict=True, reason="reported: retry --flagged between purge's chunks requeues into a vanishing batch"
)
def test_retry_flagged_racing_a_purge_leaves_nothing_behind(group: Group, tmp_path: Path) -> None:
    """purge walks the batch's ids a chunk at a time and deletes the batch's keys last; a `retry --flagged`
    between the two requeues a job whose out record is still there: its job and text keys (no TTL) and
    the backlog count outlive the batch. Played here in that order with the store's own calls."""
    src = write_jsonl(tmp_path / "in.jsonl", [story("pr", 0, "refusex1")])
    bid = submit(group, src, "--no-cache")
    client = group.client()
    try:
        store = client.store
        keys = Keys(group.settings.key_prefix, group.settings.queue)
        backlog = int(client.redis.get(keys.backlog) or 0)
        assert store._purge(bid, ["pr0"], False, last=False) == 1  # purge's chunk
        _, n = store.retry_flagged(bid, ["pr0"])  # the retry, before purge's last call (messages not sent)
        store._purge(bid, [], False, last=True)
        left = [k for k in client.redis.scan_iter(match="*", count=1000) if bid in k]
        grown = int(client.redis.get(keys.backlog) or 0) - backlog
        if left:  # the shared Redis is left clean whatever this finds
            client.redis.delete(*left)
        client.redis.decrby(keys.backlog, grown)
        assert (n, left, grown) == (0, [], 0)
    finally:
        client.close()


@pytest.mark.xfail(strict=True, reason="reported: a month name is a 'name' when the article writes the date in digits")
def test_a_date_the_article_writes_in_digits_is_no_invented_name() -> None:
    assert check("The event on 2024-03-03 drew crowds.", "The event on March 3, 2024 drew crowds.", 60).names == ()


def test_estimate_fails_what_submit_fails(group: Group, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n   \n")
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    (nothing / "data.bin").write_bytes(b"\x00")
    for src in (empty, blank, nothing):
        est = group.cli("estimate", str(src))
        sub = group.cli("submit", str(src), "--batch-id", batch_id(), "-q")
        assert est.returncode == sub.returncode, (src.name, est.returncode, est.stderr, sub.returncode, sub.stderr)
        if sub.returncode:
            assert est.stderr.removeprefix("summarize estimate: ") == sub.stderr.removeprefix("summarize submit: ")
