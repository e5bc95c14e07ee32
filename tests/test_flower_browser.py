"""Flower in a real headless browser: log in, see the worker online, find a batch's tasks by its id, and a
failed job named where Flower shows it.

Debian's chromium and chromium-driver (scripts/bootstrap.sh installs them) driven by selenium. Flower runs
with the task columns compose.yaml gives it, behind basic auth: the credentials go in the first URL, and
Chromium answers every later request of the origin (the pages' own XHRs included) from its auth cache.

Two batches through the fault server, SUMMARIZE_JOBS_PER_MESSAGE=2: five articles, one of which fails
for good ([[fault:400]]), so one of its three messages succeeds with a result naming the failed job; and
one article that fails, so its only message raises JobsFailed and Flower shows FAILURE.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import pytest

from producer.api import Client
from scripts.stack import ROOT, free_port
from tests.conftest import Group, batch_id
from tests.helpers import http_request

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a dev dependency: pip install -e '.[dev]'")
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# Without the background-networking flags Chromium reaches out at start, which this closed network refuses.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",  # Flower is on loopback: never through a proxy from the environment
    "--window-size=1600,1000",
)
AUTH = ("ops", "flower-browser-pw")
T = TypeVar("T")

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()),
    reason="chromium and chromium-driver are not installed (scripts/bootstrap.sh installs them with apt-get)",
)


def compose_tasks_columns() -> str:
    """FLOWER_TASKS_COLUMNS as compose.yaml sets it for the flower service."""
    found = re.search(r'^\s*FLOWER_TASKS_COLUMNS:\s*"([^"]+)"', (ROOT / "compose.yaml").read_text(), re.MULTILINE)
    assert found, "compose.yaml sets no FLOWER_TASKS_COLUMNS"
    return found.group(1)


def eventually(what: str, fetch: Callable[[], T], ok: Callable[[T], bool], timeout: float = 20) -> T:
    """fetch() until ok(value); the last value is in the failure message."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            value = fetch()
            if ok(value):
                return value
            last = value
        except (StaleElementReferenceException, WebDriverException) as exc:  # the table redrew under us
            last = exc
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


@dataclass
class Flower:
    base: str
    driver: Any  # selenium's WebDriver
    shots: Path

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def login(self, path: str) -> None:
        """Open a page with the credentials in its URL; Chromium keeps them for the origin's later requests."""
        user, password = AUTH
        self.driver.get(self.base.replace("http://", f"http://{user}:{password}@", 1) + path)

    def worker_row(self, prefix: str) -> str:
        """The text of the workers table's row of the worker whose name starts with `prefix`."""
        rows = [tr.text for tr in self.driver.find_elements(By.CSS_SELECTOR, "#workers-table tbody tr")]
        return next((row for row in rows if row.startswith(prefix)), "")

    def body(self) -> str:
        text: str = self.driver.find_element(By.TAG_NAME, "body").text
        return text

    def search_tasks(self, query: str) -> None:
        """Type into the tasks page's search box, as a person would."""
        self.open("/tasks")
        box = eventually(
            "the search box", lambda: self.driver.find_element(By.CSS_SELECTOR, "input[type=search]"), bool
        )
        box.clear()
        box.send_keys(query)
        box.send_keys(Keys.ENTER)

    def task_rows(self) -> list[dict[str, str]]:
        """The rows of the tasks table: column slug -> cell text (and the uuid from the row's id)."""
        slugs = [th.get_attribute("data-column") for th in self.driver.find_elements(By.CSS_SELECTOR, "thead th")]
        rows = []
        for tr in self.driver.find_elements(By.CSS_SELECTOR, "#tasks-table tbody tr[id]"):
            # textContent: a long cell is cut with an ellipsis on screen, not in the page
            cells = [td.get_attribute("textContent") or "" for td in tr.find_elements(By.TAG_NAME, "td")]
            rows.append({"id": tr.get_attribute("id"), **dict(zip(slugs, cells, strict=False))})
        return rows

    def find_tasks(self, query: str, ok: Callable[[list[dict[str, str]]], bool]) -> list[dict[str, str]]:
        """Search, and search again (Flower may still be receiving the last events) until ok(rows)."""

        def fetch() -> list[dict[str, str]]:
            self.search_tasks(query)
            time.sleep(0.8)  # DataTables' search delay, then its XHR
            return self.task_rows()

        return eventually(f"tasks matching {query!r}", fetch, ok)

    def screenshot(self, name: str) -> None:
        self.driver.save_screenshot(str(self.shots / f"{name}.png"))


@pytest.fixture(scope="module")
def flower(fault: Group, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flower]:
    port = free_port()
    env = {**fault.env, "FLOWER_BASIC_AUTH": ":".join(AUTH), "FLOWER_TASKS_COLUMNS": compose_tasks_columns()}
    proc = fault.stack.flower(port, env=env)
    tmp = tmp_path_factory.mktemp("chromium")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=str(tmp / "chromedriver.log")), options=options)
    driver.set_page_load_timeout(30)
    try:
        f = Flower(f"http://127.0.0.1:{port}", driver, tmp)
        f.login("/workers")
        # Flower sees only the events sent after it connected: wait until it has the worker's heartbeat.
        eventually("fault-w1 online in Flower", lambda: f.worker_row("fault-w1@"), lambda row: "Online" in row)
        yield f
    finally:
        driver.quit()
        proc.stop()


@pytest.fixture(scope="module")
def batches(fault: Group, flower: Flower) -> tuple[str, str]:
    """(mixed batch, failing batch), both finished; submitted once Flower sees the worker online."""
    client = Client(replace(fault.settings, jobs_per_message=2))
    mixed, failing = batch_id(), batch_id()
    try:
        texts = [f"{mixed} article {i}: the ferry timetable changes on day {i}." for i in range(5)]
        texts[1] += " [[fault:400]]"
        client.submit([{"id": f"{mixed}-{i}", "text": t} for i, t in enumerate(texts)], batch_id=mixed)
        client.submit(
            [{"id": f"{failing}-only", "text": f"{failing}: the bridge closes. [[fault:400]]"}], batch_id=failing
        )
        for bid in (mixed, failing):
            client.batch(bid).wait(timeout=60)
    finally:
        client.close()
    return mixed, failing


def test_login_and_worker_online(flower: Flower) -> None:
    assert http_request(flower.base + "/workers", timeout=5).status == 401, "Flower answered without credentials"
    flower.login("/workers")
    assert "Access denied" not in flower.body()
    row = eventually("fault-w1 on the workers page", lambda: flower.worker_row("fault-w1@"), bool)
    assert "Online" in row and "Offline" not in row, row
    flower.screenshot("workers")
    # the page's own XHRs went through with the cached credentials: the table filled from /workers?json=1
    assert "Online workers" in flower.body()


def test_search_by_batch_id_finds_its_tasks(flower: Flower, batches: tuple[str, str]) -> None:
    mixed, _ = batches
    rows = flower.find_tasks(mixed, lambda rows: len(rows) == 3 and all(r["state"] == "SUCCESS" for r in rows))
    flower.screenshot("search-batch")
    # five jobs in three messages of at most two, each a task whose args are [batch, [job ids], priority]
    carried = sorted(re.findall(rf"'({re.escape(mixed)}-\d)'", " ".join(r["args"] for r in rows)))
    assert carried == [f"{mixed}-{i}" for i in range(5)]
    assert all(r["args"].startswith(f"('{mixed}', [") for r in rows), rows
    assert all(r["name"] == "summarize.job" and r["worker"].startswith("fault-w1@") for r in rows), rows
    # the message that carried the failing article succeeded, its result naming the failed job
    (partial,) = [r for r in rows if f"{mixed}-1" in r["args"]]
    assert "'done': 1" in partial["result"] and f"'failed': {{'{mixed}-1': 'PermanentLLMError'}}" in partial["result"]
    for r in rows:
        if r is not partial:
            assert r["result"] in ("{'done': 2}", "{'done': 1}"), r
    # and Flower's own search syntax narrows it to that message
    (found,) = flower.find_tasks(f"{mixed} result:failed", lambda rows: len(rows) == 1)
    assert found["id"] == partial["id"]


def test_a_message_whose_every_job_failed_shows_failure(flower: Flower, batches: tuple[str, str]) -> None:
    _, failing = batches
    (row,) = flower.find_tasks(f"{failing} state:FAILURE", lambda rows: len(rows) == 1)
    assert row["state"] == "FAILURE" and row["args"].startswith(f"('{failing}', ['{failing}-only']"), row
    assert "JobsFailed" in row["exception"] and f"{failing}-only: PermanentLLMError" in row["exception"], row
    flower.screenshot("search-failed")

    # the task's own page, opened from its uuid link as a person would
    flower.driver.find_element(By.CSS_SELECTOR, f"#tasks-table tbody tr[id='{row['id']}'] a[href*='/task/']").click()
    page = eventually("the task page", flower.body, lambda text: row["id"] in text and "FAILURE" in text)
    flower.screenshot("task-failed")
    assert f"all 1 job(s) of batch {failing} failed: {failing}-only: PermanentLLMError" in page, page[:2000]
    assert "JobsFailed" in page and "Traceback" in page
