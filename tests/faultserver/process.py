"""``FaultServer``: the fault server in a subprocess, and the admin calls tests make to it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

API_KEY_ENV = "FAULTSERVER_API_KEY"
ROOT = Path(__file__).resolve().parents[2]


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# The admin calls go to localhost; an HTTP(S)_PROXY in the environment must not intercept them.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class FaultServer:
    """Runs the fault server in a subprocess for the duration of a ``with`` block."""

    def __init__(
        self,
        *,
        latency: float = 0.0,
        latency_sigma: float = 0.0,
        rpm: int = 0,
        api_key: str | None = None,
        tpm: int = 0,
        context_tokens: int = 0,
        batch_delay: float = 0.0,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout: float = 15.0,
    ) -> None:
        self.host = host
        self.port = port or 0
        self._requested_port = port
        self._options = {
            "latency": latency,
            "latency-sigma": latency_sigma,
            "rpm": rpm,
            "tpm": tpm,
            "context-tokens": context_tokens,
            "batch-delay": batch_delay,
        }
        self._api_key = api_key
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/v1"

    def __enter__(self) -> FaultServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self._proc is not None:
            return
        # Another process can grab the probed port before the server binds it; retry on a new one.
        attempts = 1 if self._requested_port else 3
        for attempt in range(attempts):
            self.port = self._requested_port or _free_port(self.host)
            try:
                self._spawn()
                return
            except RuntimeError:
                self.stop()
                if attempt == attempts - 1:
                    raise

    def _spawn(self) -> None:
        cmd = [sys.executable, "-m", "tests.faultserver", "--host", self.host, "--port", str(self.port)]
        for option, value in self._options.items():
            cmd += [f"--{option}", str(value)]
        env = dict(os.environ)
        env.pop(API_KEY_ENV, None)
        if self._api_key is not None:
            env[API_KEY_ENV] = self._api_key
            cmd += ["--api-key-env", API_KEY_ENV]
        # Lives until stop(): the log must outlast this call so failures can quote it.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115
        self._proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"faultserver exited with {self._proc.returncode}:\n{self.server_log()}")
            try:
                with _OPENER.open(f"{self.base}/health", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"faultserver did not answer /health within {self._startup_timeout}s")

    def server_log(self) -> str:
        """The subprocess's combined stdout/stderr so far (server warnings and tracebacks)."""
        if self._log is None:
            return ""
        self._log.seek(0)
        text: str = self._log.read().decode("utf-8", "replace")
        return text

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.base}{path}", data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with _OPENER.open(req, timeout=10) as resp:
                result: dict[str, Any] = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"faultserver {method} {path} -> {exc.code}: {exc.read()!r}") from None
        return result

    def stats(self) -> dict[str, Any]:
        return self._admin("GET", "/admin/stats")

    def configure(self, **cfg: Any) -> dict[str, Any]:
        """Change any ``ServerConfig`` key (``latency``, ``rpm``, ``tpm``, ``api_key``, ``batch_*``, ...) live."""
        return self._admin("POST", "/admin/config", cfg)

    def outage(self, seconds: float, status: int = 503) -> dict[str, Any]:
        return self._admin("POST", "/admin/outage", {"seconds": seconds, "status": status})

    def reset(self) -> dict[str, Any]:
        """Clear counters, per-article fault progress, outage, files and batches; config back to start values."""
        return self._admin("POST", "/admin/reset", {})
