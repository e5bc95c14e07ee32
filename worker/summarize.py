"""The summarize function the task calls, and the call path under it: limiter, retry policy, LLM."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from openai import OpenAI

from contract.errors import HandBack, TransientLLMError, TruncatedSummary
from contract.settings import Settings

from . import llm, prompt, retry
from .ratelimit import RateLimiter, token_counter

#: the most a retry after finish_reason=length may ask for
MAX_COMPLETION_TOKENS = 4096

#: (messages, model, max_tokens) -> Completion: whatever reaches the provider, however it retries
Call = Callable[[list[dict[str, str]], str, int], llm.Completion]


@dataclass(frozen=True)
class Summary:
    text: str
    model: str
    usage: dict[str, int]


def summarize(text: str, max_words: int, model: str, call: Call, max_chars: int) -> Summary:
    """Summarize one article. Pure but for `call`, so it can be tested with any callable."""
    completion = call(prompt.build_messages(text, max_words), model, prompt.max_tokens_for(max_words))
    return Summary(prompt.clean_summary(completion.content, max_chars), completion.model or model, completion.usage)


@dataclass
class Attempts:
    """LLM requests made for one job in one task run (what a user pays for)."""

    n: int = 0


@dataclass
class ProviderCall:
    """Rate-limited, retried calls to one provider; one per worker process, shared by its threads."""

    client: OpenAI
    limiter: RateLimiter
    settings: Settings
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.count_tokens = token_counter(self.settings)

    def for_job(self, attempts: Attempts) -> Call:
        def call(messages: list[dict[str, str]], model: str, max_tokens: int) -> llm.Completion:
            estimate = self.count_tokens("\n".join(m["content"] for m in messages), max_tokens)
            room = max_tokens
            for attempt in retry.policy(self.settings, retry.interruptible_sleep(self.stop)):
                with attempt:
                    if self.stop.is_set():
                        raise HandBack("worker is shutting down")  # start no new request while stopping
                    self.limiter.acquire(estimate, self.stop)
                    attempts.n += 1
                    try:
                        completion = llm.complete(self.client, messages, model, room)
                    except TruncatedSummary:
                        # The same request at temperature 0 would stop at the same place: give it more room.
                        room = min(room * 2, MAX_COMPLETION_TOKENS)
                        raise
                    except TransientLLMError as exc:
                        if exc.status == 429 and exc.retry_after:
                            self.limiter.cool_down(exc.retry_after)
                        raise
                    self.limiter.settle(estimate, completion.usage.get("total_tokens", 0))
                    return completion
            raise AssertionError("unreachable: tenacity re-raises the last error")

        return call
