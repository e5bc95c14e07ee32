"""How many tokens a model takes in one request: SUMMARIZE_CONTEXT_TOKENS, else what the server's
/v1/models says (vLLM's max_model_len, others' context_length / context_window), else the table of
well-known models, else a safe default. A provider's 400 context_length_exceeded corrects it.

One look-up per (endpoint, model) per process, whatever the number of jobs that ask at once: the
first starts it, the others await the same future. It waits out the shared 429 cooldown like every
other request, and a 429/503 with Retry-After on it sets that cooldown for the fleet; any failure
falls back to the table or the default for the life of the process, without asking again."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import openai
from openai import AsyncOpenAI

from contract.models import CONTEXT_FIELDS, DEFAULT_CONTEXT, known_context, listed_context
from contract.settings import ProviderSettings

from .llm import retry_after
from .ratelimit import RateLimiter

log = logging.getLogger(__name__)

_FIELDS = CONTEXT_FIELDS
#: statuses whose Retry-After asks every worker to pause (as a 429 on a completion does)
_PAUSING = frozenset({429, 503})


class ContextWindows:
    def __init__(
        self,
        client: AsyncOpenAI,
        settings: ProviderSettings,
        limiter: RateLimiter | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.client, self.settings, self.limiter = client, settings, limiter
        self.stop = stop or asyncio.Event()
        self._known: dict[str, int] = {}
        self._pending: dict[tuple[str, str], asyncio.Future[int]] = {}

    @property
    def endpoint(self) -> str:
        return str(self.client.base_url)

    async def of(self, model: str) -> int:
        if self.settings.context_tokens:
            return self.settings.context_tokens
        key = (self.endpoint, model)
        while model not in self._known:
            pending = self._pending.get(key)
            if pending is None:
                await self._look_up(key)
                continue
            try:
                # shield: a waiter cancelled must not cancel the look-up the others wait for
                await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # this job itself was cancelled
                # the look-up's owner was stopped before it finished: the next one asks again
        return self._known[model]

    async def _look_up(self, key: tuple[str, str]) -> None:
        model = key[1]
        pending = self._pending[key] = asyncio.get_running_loop().create_future()
        try:
            found = await self._served(model) or known_context(model) or DEFAULT_CONTEXT
        except BaseException:
            del self._pending[key]
            pending.cancel()
            raise
        self._known[model] = min(found, self._known.get(model, found))
        log.info("context window of %s: %d tokens", model, self._known[model])
        pending.set_result(self._known[model])

    def learn(self, model: str, limit: int) -> None:
        """The provider said so (context_length_exceeded): believe it from now on in this process."""
        self._known[model] = min(limit, self._known.get(model, limit))

    async def _served(self, model: str) -> int | None:
        if self.limiter is not None:
            await self.limiter.wait_cooldown(self.stop)
        try:
            listing: Any = await self.client.get("/models", cast_to=object)
        except openai.APIStatusError as exc:
            pause = retry_after(exc.response.headers)
            if exc.status_code in _PAUSING and pause and self.limiter is not None:
                await self.limiter.cool_down(pause)
            log.info("no /v1/models from the provider (%s): context window from the table", exc.status_code)
            return None
        except Exception as exc:  # the endpoint is optional for OpenAI-compatible servers
            log.info("no /v1/models from the provider (%s): context window from the table", type(exc).__name__)
            return None
        return listed_context(listing, model)
