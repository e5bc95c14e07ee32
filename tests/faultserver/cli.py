"""``python -m tests.faultserver``: serve the fault server in the foreground until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from aiohttp import web

from tests.faultserver.app import create_app
from tests.faultserver.state import ServerConfig

# Hung requests would otherwise hold shutdown for their whole sleep.
SHUTDOWN_TIMEOUT_S = 1.0
# Longer than any client's idle pool timeout, so the client, never the server, closes an idle connection.
KEEP_ALIVE_S = 30.0
# Hundreds of clients connect at once in the concurrency tests and benchmarks.
BACKLOG = 2048


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.faultserver",
        description="Fault-injecting OpenAI-compatible server for tests and benchmarks.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each completion")
    parser.add_argument(
        "--latency-sigma", type=float, default=0.0, help="log-normal latency around --latency (its median)"
    )
    parser.add_argument("--rpm", type=int, default=0, help="requests per minute enforced (0 = unlimited)")
    parser.add_argument("--tpm", type=int, default=0, help="tokens per minute enforced (0 = unlimited)")
    parser.add_argument("--context-tokens", type=int, default=0, help="context window (0 = unlimited)")
    parser.add_argument("--batch-delay", type=float, default=0.0, help="seconds a batch waits before its lines run")
    parser.add_argument("--api-key-env", metavar="NAME", help="environment variable holding the required API key")
    args = parser.parse_args(argv)

    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            parser.error(f"environment variable {args.api_key_env} is not set")
    settings = {
        "latency": args.latency,
        "latency_sigma": args.latency_sigma,
        "rpm": args.rpm,
        "tpm": args.tpm,
        "context_tokens": args.context_tokens,
        "batch_delay": args.batch_delay,
        "api_key": api_key,
    }
    try:
        config = ServerConfig().updated(settings)
    except ValueError as exc:
        parser.error(str(exc))

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    web.run_app(
        create_app(config),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        backlog=BACKLOG,
        keepalive_timeout=KEEP_ALIVE_S,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
