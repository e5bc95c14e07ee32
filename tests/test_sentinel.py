"""Redis that fails over, with real processes on loopback: a primary, one replica and three sentinels
(quorum 2, down-after 1 s), two Celery workers and the producer configured through REDIS_SENTINELS.

The module's tests run in order on one Sentinel setup: the primary is killed (its replica promoted), then
restarted (it rejoins as a replica), then the new primary is killed under a submit; then, deterministically,
what SUMMARIZE_REDIS_WAIT_REPLICAS=0 loses and what WAIT keeps; READONLY from a demoted node behind a plain
URL; last, a graceful failover (SENTINEL FAILOVER) mid-batch.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from contract.errors import BatchNotFound
from contract.keys import Keys
from scripts.stack import BIN, ROOT, Proc, free_port, wait_for
from tests.conftest import Group, assert_invariants, batch_id, isolated_group
from tests.faultserver import FaultServer, article_key, expected_summary
from tests.helpers import articles, http_request, wait_until, write_jsonl
from tests.sentinelstack import MASTER, Sentinels, sentinel_stack

CONCURRENCY = 16
#: what the tests set for the failover: leases long enough to outlive the gap, short waits after a promotion
#: leaves the new primary without a replica
HA = {
    "SUMMARIZE_CONCURRENCY": str(CONCURRENCY),
    "SUMMARIZE_LEASE_SECONDS": "10",
    "SUMMARIZE_REDIS_WAIT_TIMEOUT": "0.2",
}


@pytest.fixture(scope="module")
def ha() -> Iterator[Sentinels]:
    with sentinel_stack() as setup:
        yield setup


@pytest.fixture(scope="module")
def llm() -> Iterator[FaultServer]:
    with FaultServer(latency=0.5) as srv:
        yield srv


def group(ha: Sentinels, llm: FaultServer, **extra: str) -> Group:
    env = {**ha.env, **HA, **extra}
    g = isolated_group(ha.stack, env.pop("REDIS_URL"), llm.url, **env)
    return g


def calls_per_article(llm: FaultServer, arts: list[dict[str, str]]) -> list[int]:
    by_article = llm.stats()["by_article"]
    return [by_article.get(article_key(a["text"]), 0) for a in arts]


def store_url(ha: Sentinels) -> str:
    return f"redis://127.0.0.1:{ha.primary()}/0"


def test_kill9_primary_mid_batch_loses_nothing(ha: Sentinels, llm: FaultServer) -> None:
    """At 30% done the primary is killed: a sentinel promotes the replica, workers and producer follow it,
    400/400 end done, and only calls in flight at the kill are repeated."""
    llm.reset()
    g = group(ha, llm)
    began = time.monotonic()
    port = free_port()
    exporter = Proc(
        "ha-exporter",
        [str(BIN / "summarize"), "exporter", "--host", "127.0.0.1", "--port", str(port)],
        g.env,
        ha.stack.workdir / "exporter.log",
    ).start()
    ha.stack.procs.append(exporter)
    g.worker("ha-w1")
    g.worker("ha-w2")
    arts = articles("ha", 400)
    client = g.client()
    batch = client.submit(arts, batch_id=batch_id())
    submitted = time.monotonic() - began
    wait_until(lambda: batch.status()["done"] >= 120, 90, "30% done")
    metrics = f"http://127.0.0.1:{port}/metrics"
    wait_for(lambda: "summarize_redis_up 1.0" in http_request(metrics).text, "the exporter", 30, exporter.popen)
    old = ha.primary()
    in_flight = llm.stats()["in_flight"]
    ha.kill9(old)
    killed = time.monotonic()
    in_flight = max(in_flight, llm.stats()["in_flight"])
    new = ha.wait_promoted(old)
    promoted = time.monotonic() - killed

    status = batch.wait(timeout=120)
    finished = time.monotonic() - killed
    # the exporter follows the promotion too: it reads the new primary
    wait_for(lambda: "summarize_redis_up 1.0" in http_request(metrics).text, "the exporter, after", 30)
    assert "summarize_backlog_jobs" in http_request(metrics).text
    exporter.stop()
    assert (status["total"], status["done"], status["failed"]) == (400, 400, 0), status
    results = {r.id: r for r in batch.results()}
    assert all(results[a["id"]].summary == expected_summary(a["text"]) for a in arts)
    calls = calls_per_article(llm, arts)
    repeated = sum(c - 1 for c in calls if c > 1)
    assert min(calls) >= 1
    assert repeated <= in_flight, (repeated, in_flight)
    reclaimed = int(client.redis.hget(Keys(g.settings.key_prefix).stats, "reclaimed") or 0)
    assert_invariants(f"redis://127.0.0.1:{new}/0")
    print(
        f"failover: primary killed at 120+ done, replica promoted {promoted:.1f}s later; "
        f"400/400 done, 0 lost, {repeated} repeated LLM calls ({in_flight} in flight at the kill), "
        f"{reclaimed} leases reclaimed; workers up and submitted in {submitted:.1f}s, batch over {finished:.1f}s "
        "after the kill"
    )
    client.close()


def test_old_primary_restarted_rejoins_as_replica_and_gets_no_writes(ha: Sentinels, llm: FaultServer) -> None:
    """The killed primary comes back (its AOF replayed): a sentinel makes it a replica of the new primary,
    and no client writes to it, though it still holds the keys it had."""
    llm.reset()
    primary = ha.primary()
    old = next(p for p in ha.ports if p != primary)
    ha.start_node(old)  # as a primary of its own, until a sentinel reconfigures it
    ha.wait_replica_of(old, primary, timeout=40)
    assert ha.role(old) == "slave"
    g = group(ha, llm)
    g.worker("rejoin-w1")
    arts = articles("rj", 40)
    client = g.client()
    batch = client.submit(arts, batch_id=batch_id())
    assert batch.wait(timeout=60)["done"] == 40
    c = ha.client(old)
    try:
        stats = c.info("commandstats")
        clients = c.client_list()
    finally:
        c.close()
    # Clients' commands on the old primary (replicated writes arrive as their effects, never EVALSHA or BRPOP).
    assert not {"cmdstat_evalsha", "cmdstat_evalsha_ro", "cmdstat_brpop"} & set(stats), sorted(stats)
    names = [cl.get("name", "") for cl in clients if cl.get("flags") != "M"]
    assert not [n for n in names if n and "sentinel" not in n], names
    assert getattr(client.store.r.connection_pool, "master_address", None) == ("127.0.0.1", primary)
    print(f"old primary {old} rejoined as a replica of {primary}; no client command reached it")
    client.close()


def test_producer_killed_mid_submit_during_failover_resumes_once(
    ha: Sentinels, llm: FaultServer, tmp_path: Path
) -> None:
    """The primary is killed while `summarize submit` stores a file, and the submit is killed in the gap
    before the promotion. The same command again, once a replica is promoted, stores every article once."""
    # The messages of chunks stored just before the kill may be lost with the primary (a message is published
    # after its chunk's WAIT, but the broker's own write is not waited for): the orphans sets, which are, bring
    # them back after SUMMARIZE_QUEUED_GRACE. Short here, so the batch can be finished below.
    g = group(ha, llm, SUMMARIZE_QUEUED_GRACE="3", SUMMARIZE_REAP_INTERVAL="0.5")
    n = 2000
    src = write_jsonl(tmp_path / "big.jsonl", ({"id": f"f{i}", "text": f"Failover article {i}."} for i in range(n)))
    bid = batch_id()
    argv = [str(BIN / "summarize"), "submit", str(src), "--batch-id", bid, "-q"]
    first = subprocess.Popen(argv, env=g.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = g.client()
    wait_until(lambda: client.store.existing_ids(bid) >= 500 or first.poll() is not None, 60, "submit under way")
    old = ha.primary()
    ha.kill9(old)
    time.sleep(0.3)  # the submit is retrying its chunk against the dead primary now
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    new = ha.wait_promoted(old)
    stored_at_kill = client.store.existing_ids(bid)
    assert stored_at_kill < n, "the submit finished before the kill; make the file bigger"

    # Back as a replica of the new primary, as an orchestrator restarts it (the test above shows a sentinel
    # doing it by itself, after its 8 s settling time); the next test waits for its link.
    ha.start_node(old, replica_of=new)
    second = subprocess.run(argv, env=g.env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert client.store.existing_ids(bid) == n
    queued = Counter(job for m in g.queued_messages() for job in m.args[1])
    assert max(queued.values()) == 1  # no job enqueued twice
    assert_invariants(f"redis://127.0.0.1:{new}/0")
    print(
        f"submit killed in the failover gap: {stored_at_kill} of {n} stored on the promoted replica, "
        f"the resume stored the rest: {n} jobs, {len(queued)} queued once each, {n - len(queued)} orphans "
        "left to the reaper"
    )
    # Nothing lost: a worker finishes every job, the orphans among them once the reaper republished them,
    # and asks the provider once an article.
    g.worker("resume-w1")
    status = client.batch(bid).wait(timeout=120)
    assert (status["done"], status["failed"]) == (n, 0), status
    calls = calls_per_article(llm, [{"text": f"Failover article {i}."} for i in range(n)])
    assert min(calls) == 1 and max(calls) == 1, Counter(calls)
    assert_invariants(f"redis://127.0.0.1:{new}/0")
    client.close()


def _cut_off_round(ha: Sentinels, llm: FaultServer, wait: str) -> tuple[bool, int]:
    """One round of the scenario below: (the resumed submit returned within 1 s, articles on the new primary)."""
    g = group(ha, llm, SUMMARIZE_REDIS_WAIT_REPLICAS=wait, SUMMARIZE_REDIS_WAIT_TIMEOUT="3")
    client = g.client()
    bid = batch_id()
    arts = articles(f"w{wait}x", 30)
    primary = ha.primary()
    replica = next(p for p in ha.ports if p != primary)
    ha.wait_replica_of(replica, primary, timeout=40)
    client.submit(arts[:10], batch_id=bid)  # the batch and its first 10 articles are on both nodes
    ha.wait_synced(primary, replica)
    ha.procs[replica].signal(signal.SIGSTOP)
    c = ha.client(primary)
    c.client_kill_filter(_type="replica")  # what the primary writes from now on reaches no replica
    c.close()
    done = threading.Event()
    errors: list[BaseException] = []

    def resume() -> None:
        try:
            client.submit(arts, batch_id=bid)
        except BaseException as exc:
            errors.append(exc)
        done.set()

    thread = threading.Thread(target=resume, daemon=True)
    thread.start()
    acknowledged = done.wait(1.0)  # without WAIT the primary's acknowledgement is enough
    ha.kill9(primary)
    ha.procs[replica].signal(signal.SIGCONT)
    ha.wait_promoted(primary)
    thread.join(60)
    assert not errors, errors
    try:
        stored = client.store.existing_ids(bid)
    except BatchNotFound:
        stored = 0
    client.close()
    ha.start_node(primary, replica_of=replica)  # back as a replica, for the next round
    return acknowledged, stored


def test_wait_keeps_what_a_promotion_would_lose(ha: Sentinels, llm: FaultServer) -> None:
    """Deterministic: the replica is stopped (SIGSTOP) and cut off from the primary, a submit stores 20 more
    articles, the primary is killed, the replica resumed and promoted. With SUMMARIZE_REDIS_WAIT_REPLICAS=0 the
    producer is told the articles are stored and the promoted replica never had them: lost. With WAIT 1 the
    chunk is not reported stored until a replica has it, so when the primary dies the submit stores it again
    on the new primary: nothing lost."""
    without = _cut_off_round(ha, llm, "0")
    with_wait = _cut_off_round(ha, llm, "1")
    assert without == (True, 10), without  # acknowledged at once; the 20 new articles gone after the promotion
    assert with_wait == (False, 30), with_wait  # not acknowledged before a replica had them; all 30 kept
    print("replica cut off, primary killed: WAIT 0 acknowledged 30 and kept 10 (20 lost); WAIT 1 kept 30 of 30")


def test_readonly_from_a_demoted_primary_is_a_reconnect_not_an_error(ha: Sentinels) -> None:
    """A plain REDIS_URL (a managed Redis behind a DNS name): the node it names is demoted (READONLY to every
    write) and promoted again a second later; a write meanwhile is retried until it lands, never raised."""
    from contract.redisconn import make_redis
    from contract.settings import Settings

    primary = ha.primary()
    replica = next(p for p in ha.ports if p != primary)
    client = make_redis(Settings.from_dsn(f"redis://127.0.0.1:{replica}/0"))
    c = ha.client(replica)
    try:
        assert c.info("replication")["role"] == "slave"
        # Stops the sentinels from reconfiguring it meanwhile: it is in their view a replica still.
        timer = threading.Timer(1.0, lambda: c.replicaof("NO", "ONE"))
        timer.start()
        started = time.monotonic()
        client.set("failover-readonly-probe", "1")  # READONLY at first; lands once the node is a primary
        took = time.monotonic() - started
        timer.join()
        assert client.get("failover-readonly-probe") == "1" and took >= 0.9
        c.replicaof("127.0.0.1", str(primary))  # back as the sentinels know it
    finally:
        c.close()
        client.close()
    ha.wait_replica_of(replica, primary, timeout=40)
    print(f"READONLY retried for {took:.1f}s until the node was a primary again")


def test_a_graceful_failover_moves_the_workers_off_the_demoted_primary(ha: Sentinels, llm: FaultServer) -> None:
    """SENTINEL FAILOVER mid-batch: the old primary is not killed but demoted, and stays writable for about
    10 s until a sentinel reconfigures it (celery#6348, celery#10096: workers stuck on a demoted primary).
    Workers, producer and Flower move to the new primary; the batch ends 100/100 done, and once the old
    primary replicates the new one, another batch runs and Flower still sees the workers' events."""
    primary = ha.primary()
    replica = next(p for p in ha.ports if p != primary)
    ha.wait_replica_of(replica, primary, timeout=40)
    llm.reset()
    g = group(ha, llm)
    g.worker("graceful-w1")
    flower_port = free_port()
    ha.stack.flower(flower_port, env=g.env)

    def flower_events() -> float:
        text = http_request(f"http://127.0.0.1:{flower_port}/metrics").text
        return sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("flower_events_total{")
        )

    arts = articles("gf", 100)
    client = g.client()
    batch = client.submit(arts, batch_id=batch_id())
    wait_until(lambda: batch.status()["done"] >= 20, 60, "20% done")
    s = ha.client(ha.sentinel_ports[0])
    try:
        s.sentinel_failover(MASTER)
    finally:
        s.close()
    new = ha.wait_promoted(primary)
    assert new == replica
    status = batch.wait(timeout=90)
    assert (status["done"], status["failed"]) == (100, 0), status
    calls = calls_per_article(llm, arts)
    # Claims and settles sent to the old primary between the promotion and the clients' next look at the
    # sentinels (PRIMARY_CHECK, 1 s: two waves of 0.5 s calls) are lost with it: at most those calls repeat.
    assert min(calls) >= 1 and sum(c - 1 for c in calls if c > 1) <= 2 * CONCURRENCY
    assert ha.role(new) == "master"
    ha.wait_replica_of(primary, new, timeout=40)  # a sentinel reconfigures the demoted one (about 10 s)
    seen = flower_events()
    more = articles("gf2x", 10)
    assert client.submit(more, batch_id=batch_id()).wait(timeout=60)["done"] == 10
    wait_until(lambda: flower_events() > seen, 30, "Flower to see events after the failover")
    print(
        f"graceful failover {primary} -> {new} mid-batch: 100/100 done, {sum(calls) - 100} repeated LLM calls; "
        f"after the old primary became a replica another 10 done, Flower saw {flower_events() - seen:.0f} more events"
    )
    client.close()
