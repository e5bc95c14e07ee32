"""The summarize function a job runs, and the call path under it: limiter, retry policy, LLM."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from openai import AsyncOpenAI

from contract.errors import HandBack, MalformedResponse, TransientLLMError, TruncatedSummary, UnusableAnswers
from contract.settings import Settings
from contract.spec import BatchSpec

from . import llm, prompt, retry
from .ratelimit import RateLimiter, token_counter

#: (messages, model, max_tokens) -> Completion: whatever reaches the provider, however it retries
Call = Callable[[list[dict[str, Any]], str, int], Awaitable[llm.Completion]]
#: raises when the job must not make another request
Guard = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Summary:
    text: str
    model: str


async def summarize(text: str, spec: BatchSpec, call: Call, max_chars: int) -> Summary:
    """Summarize one article. Pure but for `call`, so it can be tested with any callable."""
    completion = await call(
        prompt.build_messages(text, spec.max_words), spec.model, prompt.max_tokens_for(spec.max_words)
    )
    return Summary(prompt.clean_summary(completion.content, max_chars), completion.model or spec.model)


@dataclass
class Tally:
    """What one run of one job cost: requests made, unusable answers among them, tokens billed."""

    requests: int = 0
    unusable: int = 0
    #: failed requests that may pass by themselves (429, 5xx, timeouts): bounded per run
    transient: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def bill(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens


@dataclass
class Provider:
    """Rate-limited, retried calls to one provider; one per worker process, shared by its coroutines."""

    client: AsyncOpenAI
    limiter: RateLimiter
    settings: Settings
    stop: asyncio.Event

    def __post_init__(self) -> None:
        self.count_tokens = token_counter(self.settings)

    def for_job(self, unusable_before: int, tally: Tally, guard: Guard) -> Call:
        """The call path of one job. `guard` runs before every request and raises to stop the job
        (its batch was halted, paused or cancelled meanwhile)."""

        async def call(messages: list[dict[str, Any]], model: str, max_tokens: int) -> llm.Completion:
            room = [max_tokens]
            policy = retry.policy(self.settings, retry.interruptible_sleep(self.stop), lambda: tally.transient)
            async for attempt in policy:
                with attempt:
                    return await self._once(messages, model, room, unusable_before, tally, guard)
            raise AssertionError("unreachable: tenacity re-raises the last error")

        return call

    async def _once(
        self,
        messages: list[dict[str, Any]],
        model: str,
        room: list[int],
        unusable_before: int,
        tally: Tally,
        guard: Guard,
    ) -> llm.Completion:
        if self.stop.is_set():
            raise HandBack("worker is shutting down")  # start no new request while stopping
        await guard()
        booking = await self.limiter.acquire(self.count_tokens(messages, room[0]), self.stop)
        tally.requests += 1
        body = {"model": model, "messages": messages, "max_tokens": room[0], "temperature": 0}
        try:
            completion = await llm.complete(self.client, body, self.settings.llm_timeout)
        except MalformedResponse as exc:
            tally.unusable += 1
            tally.bill(exc.prompt_tokens, exc.completion_tokens)
            if isinstance(exc, TruncatedSummary):
                # The same request at temperature 0 would stop at the same place: give it more room.
                room[0] = min(room[0] * 2, self.settings.max_completion_tokens)
            if unusable_before + tally.unusable >= self.settings.max_unusable:
                raise self._give_up(exc, unusable_before + tally.unusable, room[0]) from None
            raise
        except TransientLLMError as exc:
            tally.transient += 1
            if exc.status == 429 and exc.retry_after:
                await self.limiter.cool_down(exc.retry_after)
            raise
        tally.bill(completion.usage.prompt_tokens, completion.usage.completion_tokens)
        await self.limiter.settle(booking, completion.usage.prompt_tokens + room[0])
        return completion

    def _give_up(self, exc: MalformedResponse, n: int, room: int) -> UnusableAnswers:
        if isinstance(exc, TruncatedSummary):
            advice = (
                f"every answer was cut off, the last at max_tokens={room}: give it more room "
                f"(SUMMARIZE_MAX_COMPLETION_TOKENS, now {self.settings.max_completion_tokens}, or fewer "
                "--max-words) or use another model"
            )
        else:
            advice = f"the last: {exc}. Check the model and the endpoint (OPENAI_BASE_URL), or use another model"
        return UnusableAnswers(f"{n} paid answers could not be used; {advice}")
