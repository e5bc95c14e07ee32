"""The job store on a real 3-node Redis Cluster (loopback), the broker on a plain Redis beside it.

Every key carries the hash tag `{prefix}` (contract/keys.py), and every script is called with the keys it
touches declared in KEYS (contract/scripts.py Script.call): a key in another slot would fail with CROSSSLOT,
one not served by the node with MOVED. The strict stores below also refuse, inside the script, any key it
reaches without its caller having declared it (contract/lua/_lib.lua `follow`); the few scripts that follow
a pointer they read (docs/scale.md) are called as the workers call them.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio.cluster
import redis.cluster

from contract import schema, scripts
from contract.keys import GLOBALS, Keys
from contract.ops import Counts, Done, Fail, Run
from contract.record import Article, Final, pack
from contract.redisconn import make_async_redis, make_redis
from contract.settings import Secret, Settings
from contract.spec import BatchSpec
from contract.store import JobStore, NewJob
from scripts.stack import Proc, Stack, free_port, port_open, stop_all, wait_for
from tests.conftest import Group, _env, batch_id
from tests.faultserver import FaultServer, expected_summary
from tests.helpers import id_text, write_jsonl
from worker.storage import WorkerStore

pytestmark = pytest.mark.no_invariants  # the session Redis is not where these batches live

LUA = Path(scripts.LUA_DIR)


@dataclass
class Cluster:
    ports: list[int]
    broker_port: int
    procs: list[Proc]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    @property
    def broker_url(self) -> str:
        return f"redis://127.0.0.1:{self.broker_port}/0"


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    while True:
        port = free_port()
        if port + 10000 < 65536 and not _listening(port + 10000):
            return port


def _listening(port: int) -> bool:
    try:
        return port_open(port)
    except OSError:
        return False


def _cluster_ok(port: int) -> bool:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "cluster", "info"], capture_output=True, text=True, timeout=5
    ).stdout
    return "cluster_state:ok" in out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    work = tmp_path_factory.mktemp("cluster")
    procs: list[Proc] = []
    try:
        ports = []
        for _ in range(3):
            port = _cluster_port()
            argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(work)]
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
            argv += ["--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction"]
            procs.append(Proc(f"node-{port}", argv, {}, work / f"node-{port}.log").start())
            wait_for(lambda p=port: port_open(p), "cluster node", 15, procs[-1].popen)
            ports.append(port)
        create = ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports)]
        done = subprocess.run(
            [*create, "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
        for port in ports:
            wait_for(lambda p=port: _cluster_ok(p), "cluster state ok", 30)
        broker = free_port()
        argv = ["redis-server", "--port", str(broker), "--bind", "127.0.0.1", "--dir", str(work), "--save", ""]
        procs.append(Proc(f"broker-{broker}", argv, {}, work / "broker.log").start())
        wait_for(lambda: port_open(broker), "broker redis", 15, procs[-1].popen)
        yield Cluster(ports, broker, procs)
    finally:
        stop_all(procs)


def _settings(cluster: Cluster, prefix: str) -> Settings:
    return Settings.from_dsn(
        cluster.url, broker_url=Secret(cluster.broker_url), key_prefix=prefix, queue=prefix, cache_ttl=3600
    )


class StrictJobStore(JobStore):
    """The producer's store, its scripts refusing any key not declared by the call (see _lib.lua follow)."""

    def run(self, name: str, **params: Any) -> Any:
        keys, args = scripts.load(name).call(self.keys, strict=True, **params)
        return self._scripts[name](keys=keys, args=args)


class StrictWorkerStore(WorkerStore):
    async def script(self, name: str, **params: Any) -> Any:
        keys, args = scripts.load(name).call(self.keys, strict=True, **params)
        return await self._scripts[name](keys=keys, args=args)


def test_the_cluster_spreads_slots_and_the_store_keys_share_one(cluster: Cluster) -> None:
    """The fixture is a real cluster (3 masters, slots split), and every key of one deployment hashes to
    the slot of its tag, so no script call can span slots."""
    r = redis.cluster.RedisCluster(host="127.0.0.1", port=cluster.ports[0])
    try:
        assert len(r.get_primaries()) == 3  # type: ignore[no-untyped-call]
        keys = Keys("cl")
        slot = r.keyslot(keys.due)  # type: ignore[no-untyped-call]
        sample = [keys.batch("b"), keys.job("b", "j"), keys.text("x", "y"), keys.cache(3), keys.pack("p")]
        sample += [getattr(keys, prop) for prop in GLOBALS.values()] + keys.batch_keys("other")
        slots = {r.keyslot(k) for k in sample}  # type: ignore[no-untyped-call]
        assert slots == {slot}
        others = {r.keyslot(Keys(f"cl{i}").due) for i in range(20)}  # type: ignore[no-untyped-call]
        assert len(others) > 1  # the tags of other deployments spread over the cluster
    finally:
        r.close()


def test_every_script_runs_on_the_cluster_with_its_keys_declared(cluster: Cluster) -> None:
    """A representative call of every script of contract/lua/, through the stores' own methods: strict for
    all but the three that walk deployment-wide sets and follow what they find (reap, pack_due) or read a
    pack's scope from its journal (pack_state's release)."""
    s = _settings(cluster, f"cl{int(time.time() * 1000) % 100000}")
    sync = make_redis(s, decode=False)
    assert isinstance(sync, redis.cluster.RedisCluster)
    store = StrictJobStore(sync, s)
    ran: set[str] = set()
    spec = BatchSpec(model="m", max_words=20)
    bid, other = batch_id(), batch_id()
    assert store.init_batch(bid, spec, "in.jsonl") == 0
    ran.add("init_batch")
    assert store.admit("submit-1", 4, 3)[0]
    ran.add("admit")
    jobs = [NewJob(f"j{i}", Article(f"d{i}", f"0:{i + 1}", f"Article {i}. It rained.")) for i in range(4)]
    created = store.create_jobs(bid, jobs)
    assert created.created == [f"j{i}" for i in range(4)] and created.messages
    ran.add("create")
    store.submitting(bid, 0)
    ran.add("submitting")
    gen = store._gens[bid]

    async def worker_side() -> None:
        client = make_async_redis(s)
        assert isinstance(client, redis.asyncio.cluster.RedisCluster)
        ws = StrictWorkerStore(client, s)
        loose = WorkerStore(client, s)
        try:
            claimed = await ws.claim(bid, ["j0", "j1"], 3, "tk1", gen=gen)
            assert [j.job_id for j in claimed.jobs] == ["j0", "j1"]
            ran.add("claim")
            assert (await ws.send(claimed.jobs[0], -1, 100))[0] == "go"
            ran.add("send")
            assert await ws.renew(claimed.jobs) == []
            ran.add("renew")
            done = Final("done", "d0", "0:1", summary="It rained.")
            failed = Final("failed", "d1", "0:2", error="no", error_type="ProviderRejected")
            applied, _ = await ws.settle(
                [
                    Done(run=Run(bid, "j0", "tk1", gen), counts=Counts(requests=1), final=done),
                    Fail(run=Run(bid, "j1", "tk1", gen), counts=Counts(requests=1), final=failed, signature="sig"),
                ]
            )
            assert applied == [1, 1]
            ran.add("settle")
            await ws.script("rate_limits", worker="w1", rpm=600, tpm=0, ttl_ms=5000)
            ran.add("rate_limits")
            reply = await ws.script(
                "rate_acquire", rpm=600, tpm=0, tokens=10, window_ms=61000, rpm_burst=1, tpm_burst=1, late_ms=200
            )
            slot = int(schema.RATE_SLOT.read(reply)["slot_ms"])
            ran.add("rate_acquire")
            await ws.script("rate_settle", slot_ms=slot, tokens=5, window_ms=61000, tpm=0)
            ran.add("rate_settle")
            await ws.script("rate_release", slot_ms=slot, tokens=10, late_ms=200)
            ran.add("rate_release")
            await ws.script("rate_cooldown", ms=10)
            ran.add("rate_cooldown")
            await ws.script(
                "pack_take",
                batch=bid,
                gen=gen,
                pack="pk1",
                jobs=pack([]),
                twins=pack({}),
                online=pack([]),
                scope="scope1",
                tokens=0,
                limit=0,
                usd=0,
                lease_ms=1000,
                per_message=20,
                fields=pack({}),
            )
            ran.add("pack_take")
            await ws.script(
                "pack_state", pack="pk1", expect="", to="done", due_ms=-1, fields=pack({}), release=0, scope=""
            )
            ran.add("pack_state")
            # The due set holds the claimed jobs of other runs: reap follows its members (not declarable).
            with pytest.raises(redis.ResponseError, match="UNDECLARED"):
                await StrictWorkerStore(client, s).script(
                    "claim",
                    batch=bid,
                    step=3,
                    message=Keys.member(bid, "j2"),
                    token="t",
                    lease_ms=1000,
                    cache_fp="fp",
                    cache_ttl=3600,
                    to_pack="0",
                    gen=gen,
                    rev="0",
                )
            await loose.reap()
            ran.add("reap")
            await loose.packs_due()
            ran.add("pack_due")
        finally:
            await client.aclose()

    asyncio.run(worker_side())
    store.respec(bid, spec)  # after the claims: a respec is a new revision, which a run's claim must bring
    ran.add("respec")
    assert store.invariants(bid) == []
    ran.add("invariants")
    assert store.control(bid, "pause")[0] == "paused"
    ran.add("control")
    assert store.control(bid, "resume")[0] == "running"
    store.unpark(bid)
    ran.add("unpark")
    assert store.retry_failed(bid)[1] == 1
    ran.add("retry")
    assert store.retry_flagged(bid, ["j0"])[1] == 0  # done, and no check flagged it
    ran.add("retry_flagged")
    store.control(bid, "cancel")
    assert store.cancel_waiting(bid) >= 1
    ran.add("cancel")
    assert store.invariants(bid) == []
    # purge: a batch without packs is strict (the packs set of a batch mode one is a pointer too)
    store.init_batch(other, spec, "in.jsonl")
    store.create_jobs(other, jobs[:2])
    assert store.purge(other, force=True) == 2
    ran.add("purge")
    JobStore(sync, s).purge(bid, force=True)
    assert not sync.exists(Keys(s.key_prefix).batch(bid))
    sync.close()
    assert ran == set(scripts.names()), set(scripts.names()) - ran


#: what building a key name from the layout looks like: a prefix of `L`/`L.ptr` joined with `..`
_BUILT = re.compile(r"L\.(?!msep\b|sep\b)[\w.]+\s*\.\.|\.\.\s*L\.(?!msep\b|sep\b)\w+")


def test_no_script_builds_a_key_name_outside_follow() -> None:
    """Static, best effort: no Lua file joins a layout prefix into a key, and `L.ptr` (the pointer prefixes)
    is read only by _lib.lua's `follow`; the deployment's keys a script names (`L.x`) are ones the caller
    declares (GLOBALS) or layout fields that are no keys."""
    fields = {"sep", "msep", "parts", "pack_parts", "ptr"} | set(GLOBALS)
    for path in sorted(LUA.glob("*.lua")):
        body = path.read_text(encoding="utf-8")
        code = "\n".join(line.split("--", 1)[0] for line in body.splitlines())
        assert not _BUILT.findall(code), f"{path.name} builds a key from the layout: {_BUILT.findall(code)}"
        named = set(re.findall(r"\bL\.(\w+)", code))
        assert named <= fields, f"{path.name} names {named - fields}, which no caller declares"
        assert "KEYS[" not in code or path.name == "_lib.lua", f"{path.name} indexes KEYS itself"
        if path.name == "_lib.lua":
            follow = re.search(r"local function follow\(.*?\nend\n", code, re.S)
            assert follow and code.count("L.ptr[") == follow.group(0).count("L.ptr[")
        else:
            assert "L.ptr" not in code, f"{path.name} reads the pointer prefixes"


def test_a_batch_runs_end_to_end_with_the_store_on_the_cluster(
    cluster: Cluster, stack: Stack, fault_server: FaultServer, tmp_path: Path
) -> None:
    """submit -> a real Celery worker (broker: the plain Redis) -> the fault server -> done, every job state
    on the Cluster."""
    prefix = f"clu{int(time.time()) % 100000}"
    env = _env(cluster.url, prefix, fault_server.url, "fake-model", SUMMARIZE_BROKER_URL=cluster.broker_url)
    group = Group(stack, env, isolated=True)
    group.worker("cluster-w1")
    arts = {f"a{i}": f"Article {i} on the cluster. The council met on day {i}." for i in range(12)}
    arts["twin"] = arts["a0"]  # an identical article: single flight, then the cache
    bid = group.submit_and_wait(write_jsonl(tmp_path / "in.jsonl", id_text(arts)), timeout=90)
    rows = group.results_by_id(bid)
    assert {k: r["status"] for k, r in rows.items()} == dict.fromkeys(arts, "done")
    for key, text in arts.items():
        assert rows[key]["summary"] == expected_summary(text)
    # Nothing of the store went to the broker's Redis, and the queue is there, not on the cluster.
    broker = redis.Redis.from_url(cluster.broker_url)
    store = redis.cluster.RedisCluster.from_url(f"redis://127.0.0.1:{cluster.ports[0]}")
    try:
        assert not list(broker.scan_iter(match="{" + prefix + "}*"))
        assert store.exists(Keys(prefix).batch(bid)) == 1
        names = [k.decode() if isinstance(k, bytes) else str(k) for k in store.keys(target_nodes="all")]
        assert names and not any(k.startswith(f"{prefix}:") for k in names)
    finally:
        broker.close()
        store.close()


def test_a_cluster_store_needs_a_broker_of_its_own() -> None:
    """kombu has no Cluster transport: a Cluster REDIS_URL without SUMMARIZE_BROKER_URL is refused up front,
    and with one, Celery is pointed at the broker while the store's clients go to the cluster."""
    from contract.errors import ConfigError
    from contract.messaging import broker_config

    with pytest.raises(ConfigError, match="SUMMARIZE_BROKER_URL"):
        Settings.from_env({"REDIS_URL": "redis+cluster://127.0.0.1:7000"})
    with pytest.raises(ConfigError, match="SUMMARIZE_BROKER_URL"):
        Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0", "SUMMARIZE_BROKER_URL": "redis+cluster://h:1"})
    s = Settings.from_env({"REDIS_URL": "redis+cluster://127.0.0.1:7000", "SUMMARIZE_BROKER_URL": "redis://b:1/0"})
    assert broker_config(s)["broker_url"] == "redis://b:1/0"
    plain = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/0"})
    assert broker_config(plain)["broker_url"] == "redis://127.0.0.1:6379/0"  # one Redis for both by default
