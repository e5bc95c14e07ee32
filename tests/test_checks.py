"""The checks on every summary with real processes: redis-server, a Celery worker, the fault server and the
offline `summarize llm-serve`, driven through the `summarize` CLI.

The sample articles (samples/articles.jsonl) go through a fault server of this module's own (its per-article
counters start at zero) where four chosen articles are answered with an invented number, a French summary,
an over-long summary and a refusal (the quality faults, tests/faultserver/directives.py): each is flagged by
exactly its check and nothing else is; under --require-checks they are asked again within
SUMMARIZE_MAX_UNUSABLE, then the fallback model, then failed naming the flag; `retry --flagged --model M`
asks again only them. Over the offline server's answers nothing is flagged; `summarize eval`'s HTML report,
opened in headless Chromium, shows the numbers `--json` gives.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scripts.stack import ROOT, Stack, free_port
from tests.conftest import Group, batch_id, isolated_group
from tests.faultserver import FaultServer, article_key

SAMPLES = [json.loads(line) for line in (ROOT / "samples" / "articles.jsonl").read_text().splitlines()]
#: article id -> (quality fault, the one flag it must raise)
FAULTS = {
    "harbor-bridge-vote": ("invent", "numbers"),
    "glacier-lake-sensors": ("foreign", "language"),
    "westmere-cannery-reopens": ("long", "length"),
    "harlow-ridge-state-title": ("refuse", "refusal"),
}
MAX_WORDS = "60"
MAX_UNUSABLE = 3
ALL_CHECKS = "length,numbers,names,refusal,language"


def marked(tag: str, count: str) -> list[dict[str, Any]]:
    """The sample articles, the chosen ones with their quality fault (for `count` requests: '' every one);
    `tag` makes the texts this test's own."""
    out = []
    for a in SAMPLES:
        fault = FAULTS.get(a["id"])
        marker = f" [[fault:{fault[0]}{count}]]" if fault else ""
        out.append({"id": a["id"], "title": a["title"], "text": f"{a['text']} [[id:{tag}]]{marker}"})
    return out


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    with FaultServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def group(stack: Stack, redis_url: str, server: FaultServer, metrics_port: int) -> Group:
    g = isolated_group(stack, redis_url, server.url, SUMMARIZE_MAX_UNUSABLE=str(MAX_UNUSABLE))
    g.worker("checks-w1", SUMMARIZE_METRICS_PORT=str(metrics_port))
    return g


@pytest.fixture(scope="module")
def flagged(group: Group, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[dict[str, Any]]]:
    """A batch of the sample articles whose four chosen ones get their quality fault on the first request."""
    arts = marked("flag", "x1")
    src = write(tmp_path_factory.mktemp("flagged") / "in.jsonl", arts)
    bid = batch_id()
    run = group.cli("submit", str(src), "--batch-id", bid, "--max-words", MAX_WORDS, "--wait", "-q")
    assert run.returncode == 0, run.stderr
    return bid, arts


def test_each_quality_fault_is_flagged_by_exactly_its_check_and_nothing_else_is(
    group: Group, flagged: tuple[str, list[dict[str, Any]]], metrics_port: int
) -> None:
    bid, _ = flagged
    rows = group.results_by_id(bid)
    assert len(rows) == len(SAMPLES) and all(r["status"] == "done" for r in rows.values())
    got = {i: r["checks"]["flags"] for i, r in rows.items() if r["checks"]["flags"]}
    assert got == {i: [flag] for i, (_, flag) in FAULTS.items()}
    assert all(0 <= r["checks"]["copied"] <= 1 for r in rows.values())
    assert rows["westmere-cannery-reopens"]["checks"]["copied"] == 1.0  # the article's own words, too many
    assert rows["glacier-lake-sensors"]["checks"]["copied"] == 0.0

    status = json.loads(group.cli("status", bid, "--json").stdout)
    assert status["flagged"] == 4 and status["flags"] == {flag: 1 for _, flag in FAULTS.values()} | {"names": 0}
    shown = group.cli("status", bid).stdout
    assert "flagged by the checks: 4 answer(s)" in shown and f"summarize retry {bid} --flagged" in shown

    listed = group.cli("results", bid, "--flagged")
    assert listed.returncode == 0, listed.stderr
    assert sorted(json.loads(line)["id"] for line in listed.stdout.splitlines()) == sorted(FAULTS)
    table = list(csv.DictReader(io.StringIO(group.cli("results", bid, "--format", "csv").stdout)))
    assert {r["id"]: r["checks_flags"] for r in table if r["checks_flags"]} == {i: f for i, (_, f) in FAULTS.items()}

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
        scraped = resp.read().decode()
    for _, flag in FAULTS.values():
        assert f'summarize_summary_flags_total{{flag="{flag}"}} 1.0' in scraped
    assert 'summarize_summary_flags_total{flag="names"} 0.0' in scraped
    assert f"summarize_summaries_checked_total {float(len(SAMPLES))}" in scraped


def test_required_checks_ask_again_then_the_fallback_then_fail_naming_the_flag(
    group: Group, server: FaultServer, tmp_path: Path
) -> None:
    arts = marked("req", "")  # every request of a chosen article gets its fault
    src = write(tmp_path / "in.jsonl", arts)
    wrong = group.cli("submit", str(src), "--require-checks", "length,spelling", "-q")
    assert wrong.returncode == 3 and "unknown check 'spelling'" in wrong.stderr, wrong.stderr
    bid = batch_id()
    run = group.cli(
        "submit", str(src), "--batch-id", bid, "--max-words", MAX_WORDS, "--require-checks", ALL_CHECKS,
        "--fallback-model", "backup-model", "--wait", "-q",
    )  # fmt: skip
    assert run.returncode == 1, run.stderr  # some failed
    rows = group.results_by_id(bid)
    failed = {i: r for i, r in rows.items() if r["status"] == "failed"}
    assert sorted(failed) == sorted(FAULTS)
    by = server.stats()["by_model_article"]
    for i, (_, flag) in FAULTS.items():
        r = failed[i]
        assert r["error_type"] == "FlaggedAnswers" and r["error"].startswith(f"flagged: {flag} ("), r["error"]
        key = article_key(next(a["text"] for a in arts if a["id"] == i))
        # asked SUMMARIZE_MAX_UNUSABLE times, then once of the fallback (the bound is the article's, not a model's)
        assert (by.get(f"fake-model {key}"), by.get(f"backup-model {key}")) == (MAX_UNUSABLE, 1)
        assert r["attempts"] == MAX_UNUSABLE + 1
    done = [r for r in rows.values() if r["status"] == "done"]
    assert len(done) == len(SAMPLES) - 4 and all(r["checks"]["flags"] == [] for r in done)
    status = json.loads(group.cli("status", bid, "--json").stdout)
    assert status["spec"]["require_checks"] == ALL_CHECKS.split(",") and status["flagged"] == 0
    assert status["failures"]["FlaggedAnswers"]["count"] == 4


def test_the_offline_servers_answers_over_the_sample_articles_raise_no_flag(
    local_batch: tuple[Group, str],
) -> None:
    local, bid = local_batch
    rows = local.results(bid)
    assert len(rows) == len(SAMPLES) and all(r["status"] == "done" for r in rows)
    assert [r["checks"]["flags"] for r in rows] == [[]] * len(SAMPLES)
    status = json.loads(local.cli("status", bid, "--json").stdout)
    assert status["flagged"] == 0 and set(status["flags"].values()) == {0}


@pytest.fixture(scope="module")
def local_batch(local: Group) -> tuple[Group, str]:
    bid = batch_id()
    run = local.cli("submit", str(ROOT / "samples" / "articles.jsonl"), "--batch-id", bid, "--wait", "-q")
    assert run.returncode == 0, run.stderr
    return local, bid


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def test_the_eval_report_renders_in_chromium_with_the_json_numbers(
    local_batch: tuple[Group, str], tmp_path: Path
) -> None:
    local, bid = local_batch
    refs = write(tmp_path / "refs.jsonl", [{"id": a["id"], "reference": a["title"]} for a in SAMPLES])
    page = tmp_path / "report.html"
    run = local.cli("eval", bid, "--references", str(refs), "--json", "--html", str(page))
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    print("eval:", json.dumps({k: report[k] for k in ("rouge", "flags", "copied_mean", "lengths")}))
    assert (report["done"], report["scored"], report["flagged"]) == (len(SAMPLES), len(SAMPLES), 0)
    assert all(0 < report["rouge"][n] < 1 for n in ("rouge1", "rouge2", "rougeL"))
    assert len(report["rows"]) == len(SAMPLES) and sum(report["lengths"]["counts"]) == len(SAMPLES)
    text = local.cli("eval", bid, "--references", str(refs))
    assert text.returncode == 0 and f"rouge1  F1 mean  {report['rouge']['rouge1']:.4f}" in text.stdout

    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a dev dependency")
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.skip("chromium and chromium-driver are not installed (scripts/bootstrap.sh installs them)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from tests.test_flower_browser import CHROMIUM_FLAGS

    options = Options()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=str(tmp_path / "driver.log")), options=options)
    try:
        driver.get(page.as_uri())

        def shown(element_id: str) -> str:
            value: str = driver.find_element(By.ID, element_id).text
            return value

        assert driver.title == f"summarize eval {bid}" and shown("batch") == bid
        for name in ("rouge1", "rouge2", "rougeL"):
            assert shown(name) == f"{report['rouge'][name]:.4f}"
        for name, n in report["flags"].items():
            assert shown(f"flag-{name}") == str(n) and shown(f"rate-{name}") == f"{report['flag_rates'][name]:.4f}"
        assert (shown("done"), shown("scored"), shown("flagged")) == (str(len(SAMPLES)),) * 2 + ("0",)
        assert shown("copied") == f"{report['copied_mean']:.4f}"
        assert shown("words-mean") == str(report["lengths"]["mean"])
        bars = driver.find_elements(By.CSS_SELECTOR, "svg#lengths rect.bar")
        assert [int(b.get_attribute("data-count")) for b in bars] == report["lengths"]["counts"]
        # drawn, not only present: the histogram has a size on the page
        svg = driver.find_element(By.ID, "lengths")
        assert svg.size["width"] > 100 and svg.size["height"] > 100
        driver.save_screenshot(str(tmp_path / "report.png"))
    finally:
        driver.quit()


def test_retry_flagged_asks_again_only_the_flagged_answers_with_another_model(
    group: Group, server: FaultServer, flagged: tuple[str, list[dict[str, Any]]]
) -> None:
    bid, arts = flagged
    keys = {a["id"]: article_key(a["text"]) for a in arts}
    before = server.stats()["by_model_article"]
    run = group.cli("retry", bid, "--flagged", "--model", "model-b")
    assert run.returncode == 0 and "requeued 4 flagged job(s)" in run.stderr, run.stderr
    wait = group.cli("wait", bid, "--timeout", "60", "-q")
    assert wait.returncode == 0, wait.stderr
    after = server.stats()["by_model_article"]
    asked = {i for i, k in keys.items() if after.get(f"model-b {k}", 0) > 0}
    assert asked == set(FAULTS)
    assert all(after.get(f"model-b {keys[i]}") == 1 for i in FAULTS)
    assert {k: v for k, v in after.items() if not k.startswith("model-b ")} == before
    rows = group.results_by_id(bid)
    assert {i for i, r in rows.items() if r["model"] == "model-b"} == set(FAULTS)
    assert all(r["status"] == "done" and r["checks"]["flags"] == [] for r in rows.values())  # fault was x1
    status = json.loads(group.cli("status", bid, "--json").stdout)
    assert status["flagged"] == 0 and set(status["flags"].values()) == {0}
    assert status["spec"]["model"] == "model-b"
    again = group.cli("retry", bid, "--flagged")
    assert again.returncode == 0 and "requeued 0 flagged job(s)" in again.stderr
