"""How many tokens a model takes in one request: SUMMARIZE_CONTEXT_TOKENS, else what the server's
/v1/models says (vLLM's max_model_len, others' context_length / context_window), else the table of
well-known models, else a safe default. A provider's 400 context_length_exceeded corrects it."""

from __future__ import annotations

import logging
from typing import Any

from openai import AsyncOpenAI

from contract.models import DEFAULT_CONTEXT, known_context
from contract.settings import Settings

log = logging.getLogger(__name__)

_FIELDS = ("max_model_len", "context_length", "context_window", "max_context_length", "max_input_tokens")


class ContextWindows:
    def __init__(self, client: AsyncOpenAI, settings: Settings) -> None:
        self.client, self.settings = client, settings
        self._known: dict[str, int] = {}

    async def of(self, model: str) -> int:
        if self.settings.context_tokens:
            return self.settings.context_tokens
        if model not in self._known:
            self._known[model] = await self._served(model) or known_context(model) or DEFAULT_CONTEXT
            log.info("context window of %s: %d tokens", model, self._known[model])
        return self._known[model]

    def learn(self, model: str, limit: int) -> None:
        """The provider said so (context_length_exceeded): believe it from now on in this process."""
        self._known[model] = min(limit, self._known.get(model, limit))

    async def _served(self, model: str) -> int | None:
        try:
            listing: Any = await self.client.get("/models", cast_to=object)
        except Exception as exc:  # the endpoint is optional for OpenAI-compatible servers
            log.info("no /v1/models from the provider (%s): context window from the table", type(exc).__name__)
            return None
        entries = listing.get("data", []) if isinstance(listing, dict) else []
        for entry in entries:
            if isinstance(entry, dict) and entry.get("id") == model:
                for name in _FIELDS:
                    value = entry.get(name)
                    if isinstance(value, int) and value > 0:
                        return value
        return None
