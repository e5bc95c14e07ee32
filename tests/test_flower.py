"""Flower shows every summarize task (queued, started, finished) from a real worker, behind basic auth."""

from __future__ import annotations

import ast
import json
import time
from dataclasses import replace
from typing import Any

from producer.api import Client
from scripts.stack import free_port
from tests.conftest import Group, batch_id
from tests.helpers import http_request, poll


def get(url: str, auth: str) -> Any:
    r = http_request(url, auth=auth, timeout=5)
    assert r.status == 200, (url, r.status, r.text[:500])
    return r.json()


def test_flower_shows_tasks_with_ids_only(fault: Group) -> None:
    port = free_port()
    auth = "ops:flower-test-pw"
    fault.stack.flower(port, env={**fault.env, "FLOWER_BASIC_AUTH": auth})
    base = f"http://127.0.0.1:{port}"
    assert http_request(f"{base}/api/tasks", timeout=5).status == 401, "Flower answered without credentials"

    time.sleep(1)  # Flower sees only events sent after it connected
    bid = batch_id()
    client = Client(replace(fault.settings, jobs_per_message=2))
    batch = client.submit(
        [{"id": f"f{i}", "text": f"Flower article {i} about the election."} for i in range(5)], batch_id=bid
    )
    batch.wait(timeout=60)

    def mine_now() -> list[dict[str, Any]]:
        return [t for t in get(f"{base}/api/tasks?limit=1000", auth).values() if bid in str(t.get("args"))]

    mine = poll(mine_now, lambda m: len(m) == 3 and all(t["state"] == "SUCCESS" for t in m), timeout=20, interval=0.5)
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
