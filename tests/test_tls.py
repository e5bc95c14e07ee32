"""Verified TLS to Redis: producer and worker complete a batch over `rediss://` without an insecure warning,
and a certificate of another CA, one not in the system store or one for another host is refused at once."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from scripts.stack import Stack, free_port
from tests.conftest import batch_id, isolated_group
from tests.faultserver import FaultServer, expected_summary
from tests.helpers import write_jsonl
from tests.leakscan import API_KEY, ARTICLES, CLIRun, leaks, run_cli
from tests.tlscerts import have_openssl, make_ca, make_server_cert


@pytest.fixture(scope="module")
def keyed_llm() -> Iterator[FaultServer]:
    """The fault server demanding `Authorization: Bearer <API_KEY>`."""
    with FaultServer(api_key=API_KEY) as srv:
        yield srv


def _redis_has_tls() -> bool:
    if shutil.which("redis-server") is None:
        return False
    out = subprocess.run(
        ["redis-server", "--port", "0", "--tls-port", "1", "--tls-cert-file", "/nonexistent"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    text = out.stdout + out.stderr
    # A build without TLS rejects the option itself; a TLS build gets as far as loading the certificate.
    return "Bad directive" not in text and "tls" in text.lower() and "not supported" not in text.lower()


TLS_OK = _redis_has_tls() and have_openssl()


def _tls_redis(stack: Stack, cert: Path, key: Path, ca: Path) -> int:
    port = free_port()
    stack.redis(
        port=port,
        extra=[
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(ca),
            "--tls-auth-clients",
            "no",
        ],
    )
    return port


@dataclass
class TLSRun:
    rows: dict[str, dict[str, Any]]
    submit: subprocess.CompletedProcess[str]
    worker_log: str
    refused: dict[str, CLIRun]


TLS_REFUSALS = ["other CA", "system store", "wrong hostname"]


@pytest.fixture(scope="module")
def tls_run(keyed_llm: FaultServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSRun]:
    if not TLS_OK:
        pytest.skip("the installed redis-server (or openssl) has no TLS support (`redis-server --tls-port`)")
    d = tmp_path_factory.mktemp("tls")
    ca, other = make_ca(d, "ca"), make_ca(d, "other-ca")
    server = make_server_cert(d, ca)
    wrong_host = make_server_cert(d, ca, "wronghost", hosts=("redis.example.invalid",))
    stack = Stack()
    try:
        port = _tls_redis(stack, server.cert, server.key, ca.cert)
        wrong_port = _tls_redis(stack, wrong_host.cert, wrong_host.key, ca.cert)
        url = f"rediss://127.0.0.1:{port}/0"
        # Each refusal must come at once (test_tls_refusal_is_reported_at_once); 60 s lets a slow one be measured.
        refusals = {
            label: run_cli(isolated_group(stack, url, keyed_llm.url, **env).env, "status", "x", deadline=60)
            for label, env in {
                "other CA": {"REDIS_URL": url, "REDIS_CA_CERTS": str(other.cert)},
                "system store": {"REDIS_URL": url},
                "wrong hostname": {"REDIS_URL": f"rediss://127.0.0.1:{wrong_port}/0", "REDIS_CA_CERTS": str(ca.cert)},
            }.items()
        }
        good = isolated_group(stack, url, keyed_llm.url, OPENAI_API_KEY=API_KEY, REDIS_CA_CERTS=str(ca.cert))
        worker = good.worker("tls-w1")
        src = write_jsonl(d / "in.jsonl", ARTICLES[:3])
        bid = batch_id()
        sub = good.cli("submit", str(src), "--batch-id", bid, "--wait", "--timeout", "60", "-q")
        rows = good.results_by_id(bid)
        worker.stop()
        yield TLSRun(rows, sub, worker.log.read_text(errors="replace"), refusals)
    finally:
        stack.stop()
        shutil.rmtree(stack.workdir, ignore_errors=True)


def test_tls_producer_and_worker_complete_a_batch(tls_run: TLSRun) -> None:
    assert tls_run.submit.returncode == 0, (tls_run.submit.stderr, tls_run.worker_log[-3000:])
    assert {k: r["status"] for k, r in tls_run.rows.items()} == {a["id"]: "done" for a in ARTICLES[:3]}
    assert tls_run.rows["plain1"]["summary"] == expected_summary(ARTICLES[0]["text"])
    assert "Connected to rediss://" in tls_run.worker_log  # the worker's broker connection was TLS


def test_tls_worker_log_has_no_insecure_warning(tls_run: TLSRun) -> None:
    log = tls_run.worker_log.lower()
    for insecure in (
        "no certificate check",
        "ssl_cert_reqs",
        "cert_none",
        "cert_optional",
        "will not validate",
        "might not validate",
        "insecure",
        "man in the middle",
    ):
        assert insecure not in log, f"worker log warns: {insecure!r}"
    assert not leaks(tls_run.worker_log)


@pytest.mark.parametrize("label", TLS_REFUSALS)
def test_tls_bad_certificate_is_refused_with_a_verification_error(tls_run: TLSRun, label: str) -> None:
    r = tls_run.refused[label]
    assert r.code == 3, (label, r.code, r.err)
    assert "Traceback" not in r.err and r.err.startswith("summarize status: error: Redis at rediss://"), r.err
    assert "certificate verify failed" in r.err.lower(), r.err
    if label == "wrong hostname":
        assert "hostname mismatch" in r.err.lower() or "ip address mismatch" in r.err.lower(), r.err


@pytest.mark.parametrize("label", TLS_REFUSALS)
def test_tls_refusal_is_reported_at_once(tls_run: TLSRun, label: str) -> None:
    r = tls_run.refused[label]
    assert r.code == 3 and r.seconds < 8, (label, f"{r.seconds:.1f}s")
