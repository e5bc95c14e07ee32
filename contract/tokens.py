"""How a request's tokens are counted before it is sent: the worker's limiter books by it, its `Fit` splits
long articles by it, and `summarize estimate` counts by it. Pure; tiktoken only when configured."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .settings import ProviderSettings

log = logging.getLogger(__name__)

#: (messages, max_tokens) -> tokens a request books
Counter = Callable[[list[dict[str, Any]], int], int]


def estimate_tokens(prompt_chars: int, messages: int, max_tokens: int) -> int:
    """Offline count, on the safe side of a provider counting 4 characters a token: a few tokens of
    overhead per message on top, plus the whole reply budget (what providers book at admission)."""
    return -(-prompt_chars // 4) + 4 * messages + max_tokens


def token_counter(settings: ProviderSettings) -> Counter:
    """(messages, max_tokens) -> tokens to book. tiktoken when asked for and loadable, else the estimate."""
    if settings.token_counter == "tiktoken":
        try:
            import tiktoken

            enc = tiktoken.get_encoding(settings.tiktoken_encoding)

            def count(messages: list[dict[str, Any]], max_tokens: int) -> int:
                return sum(len(enc.encode(str(m["content"]), disallowed_special=())) + 4 for m in messages) + max_tokens

            return count
        except Exception as exc:  # no package, or no encoding files offline
            log.warning("tiktoken unavailable (%s); counting tokens by the 4-characters estimate", exc)

    def estimate(messages: list[dict[str, Any]], max_tokens: int) -> int:
        return estimate_tokens(sum(len(str(m["content"])) for m in messages), len(messages), max_tokens)

    return estimate
