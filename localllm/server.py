"""``summarize llm-serve``: the offline server under uvicorn, stopping cleanly on SIGTERM and Ctrl-C."""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
from collections.abc import Iterator
from types import FrameType

from localllm.app import DEFAULT_BATCH_DELAY, create_app
from localllm.chat import DEFAULT_CONTEXT_TOKENS
from localllm.extractive import MODEL_NAME, warm_up

# A worker opens hundreds of connections at once; the kernel's default backlog would refuse some.
BACKLOG = 2048
# Longer than any client's idle pool timeout, so the client, never the server, closes an idle connection.
KEEP_ALIVE_S = 120
# Requests in flight at SIGTERM get this long to finish; a summary takes well under a second.
GRACEFUL_SHUTDOWN_S = 5


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0 picks a free port), bound before serving so the real port is known."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve(
    host: str,
    port: int,
    api_key: str | None = None,
    *,
    context_tokens: int = DEFAULT_CONTEXT_TOKENS,
    batch_delay: float = DEFAULT_BATCH_DELAY,
    quiet: bool = False,
) -> None:
    """Serve until SIGTERM or Ctrl-C, then return normally."""
    import uvicorn

    if context_tokens < 1:
        raise ValueError(f"context_tokens must be at least 1, got {context_tokens}")
    if batch_delay < 0:
        raise ValueError(f"batch_delay must be >= 0, got {batch_delay}")
    sock = bind(host, port)
    warm_up()  # so the first request is not charged the summarizer's import time
    app = create_app(api_key, context_tokens=context_tokens, batch_delay=batch_delay, quiet=quiet)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    url_host = f"[{host}]" if ":" in host else host
    bound_port = sock.getsockname()[1]
    print(f"llm-serve: listening on http://{url_host}:{bound_port}/v1 model={MODEL_NAME}", file=sys.stderr)
    with _signals_end_quietly():
        server.run(sockets=[sock])
    sock.close()
    print("llm-serve: stopped", file=sys.stderr)


@contextlib.contextmanager
def _signals_end_quietly() -> Iterator[None]:
    """uvicorn handles SIGINT/SIGTERM itself, then re-raises the signal to the handler it found.

    With Python's defaults that would kill the process by SIGTERM (or raise KeyboardInterrupt) after an
    already graceful shutdown, so while serving, the handlers it finds do nothing and ``serve`` returns.
    """
    saved = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _ignore(signum: int, frame: FrameType | None) -> None:
    return None
