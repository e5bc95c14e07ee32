"""worker/summarize.py: a pure function of its call; long articles mapped and reduced, kept parts not paid again."""

from __future__ import annotations

import asyncio
from typing import Any

from contract.settings import Settings
from contract.spec import BatchSpec
from worker import llm, prompt
from worker.ratelimit import token_counter
from worker.summarize import Ask, Fit, summarize


def test_summarize_is_pure_given_a_call() -> None:
    seen: dict[str, Any] = {}

    async def call(ask: Ask) -> llm.Completion:
        seen.update(model=ask.model, max_tokens=ask.max_tokens, text=ask.messages[1]["content"])
        return llm.Completion(ask.check("  The gist.\n"), "m-2024")

    fit = Fit(8192, token_counter(Settings().provider))
    out = asyncio.run(summarize("Body.", BatchSpec("m", 40), call, fit, 100))
    assert out.text == "The gist." and out.model == "m-2024" and out.chunks == 0
    assert seen["max_tokens"] == prompt.max_tokens_for(40) and "Body." in seen["text"]


def test_a_long_article_is_mapped_and_reduced_and_kept_parts_are_not_paid_again() -> None:
    from worker.summarize import NoPartials

    calls: list[str] = []

    async def call(ask: Ask) -> llm.Completion:
        calls.append(ask.messages[0]["content"])
        return llm.Completion(ask.check(f"summary {len(calls)}"), "m")

    class Kept(NoPartials):
        def __init__(self) -> None:
            self.kept: dict[str, str] = {}

        def get(self, key: str) -> str | None:
            return self.kept.get(key)

        async def put(self, key: str, text: str) -> None:
            self.kept[key] = text

    fit = Fit(1000, token_counter(Settings().provider))
    text = "\n\n".join("A sentence about the harbour works. " * 20 for _ in range(30))
    kept = Kept()
    out = asyncio.run(summarize(text, BatchSpec("m", 40), call, fit, 4000, kept))
    assert out.chunks > 5 and len(calls) > out.chunks and any("part 1 of" in c for c in calls)
    first = len(calls)
    again = asyncio.run(summarize(text, BatchSpec("m", 40), call, fit, 4000, kept))  # a rerun after a crash
    assert again.chunks == out.chunks and len(calls) - first < first  # the parts were not asked again
