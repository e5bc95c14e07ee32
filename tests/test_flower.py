"""Flower shows every summarize task (queued, started, finished) from a real worker, behind basic auth."""

from __future__ import annotations

import ast
import base64
import json
import time
import urllib.error
import urllib.request
from dataclasses import replace
from typing import Any

from producer.api import Client
from scripts.stack import free_port
from tests.conftest import Group, batch_id


def get(url: str, auth: str | None = None) -> Any:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def test_flower_shows_tasks_with_ids_only(fault: Group) -> None:
    port = free_port()
    auth = "ops:flower-test-pw"
    fault.stack.flower(port, env={**fault.env, "FLOWER_BASIC_AUTH": auth})
    base = f"http://127.0.0.1:{port}"
    try:
        get(f"{base}/api/tasks")
        raise AssertionError("Flower answered without credentials")
    except urllib.error.HTTPError as exc:
        assert exc.code == 401

    time.sleep(1)  # Flower sees only events sent after it connected
    bid = batch_id()
    client = Client(replace(fault.settings, jobs_per_message=2))
    batch = client.submit([{"id": f"f{i}", "text": f"Flower article {i} about the election."}
                                   for i in range(5)], batch_id=bid)
    batch.wait(timeout=60)
    deadline = time.monotonic() + 20
    mine: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        tasks = get(f"{base}/api/tasks?limit=1000", auth)
        mine = [t for t in tasks.values() if bid in str(t.get("args"))]
        if len(mine) == 3 and all(t["state"] == "SUCCESS" for t in mine):
            break
        time.sleep(0.5)
    # SUMMARIZE_JOBS_PER_MESSAGE=2 here: five jobs travel in three messages, each a task in Flower.
    assert len(mine) == 3 and all(t["state"] == "SUCCESS" for t in mine), mine
    carried = sorted(j for t in mine for j in ast.literal_eval(t["args"])[1])
    assert carried == [f"f{i}" for i in range(5)]
    for t in mine:
        assert t["name"] == "summarize.job"
        assert ast.literal_eval(t["args"])[0] == bid
        assert "election" not in json.dumps(t)  # article text never reaches Flower
        assert t["sent"] and t["received"]  # queued (sent events) and received were both seen
        assert t["started"] and t["succeeded"]
    workers = get(f"{base}/api/workers?refresh=1", auth)
    assert any(name.startswith("fault-w1@") for name in workers)
