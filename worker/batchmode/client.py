"""The provider client of batch mode: the Files and Batch APIs through the process's openai client, with
the online path's one retry policy (worker/retry.py) and its one rule of which failures are transient
(worker/llm.py). A permanent error (404: no Batch API here, 400, 401/403) is raised at once; a transient
one is retried within the attempt budget, then raised as TransientLLMError for the pack to try later.

Create is the one call that could pay twice: an answer lost after the provider accepted it (a gateway's
502, a reset, a timeout) looks like a failure. So before every create attempt after the first, the
provider's batch list is searched for the metadata naming the pack, and a batch found is the answer.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import openai
from openai import AsyncOpenAI
from openai.types import Batch

from contract.errors import TransientLLMError
from contract.settings import Settings

from .. import llm, retry

#: metadata key naming our pack in the provider's batch (how a lost create is found again)
PACK_METADATA = "summarize_pack"
BATCH_METADATA = "summarize_batch"
#: how far back the provider's batch list is searched for a pack's batch
LIST_PAGES = 20
T = TypeVar("T")
#: raises when the pack must make no further call (its batch was cancelled, or is gone)
Guard = Callable[[], Awaitable[None]]


#: seconds an upload may take per MB on top of SUMMARIZE_LLM_TIMEOUT (a 200 MB file is not one request's worth)
UPLOAD_S_PER_MB = 1.0
#: what a lease adds to the call it guards (journaling before and after)
LEASE_MARGIN = 5.0


def timeout_of(settings: Settings, size: int = 0) -> float:
    """One attempt's bound (each attempt is cut off there, so a lease can outlive it)."""
    return settings.llm_timeout + UPLOAD_S_PER_MB * size / 1e6


def call_seconds(settings: Settings, size: int = 0) -> float:
    """The longest one guarded call can take with its retries: what a lease guarding it must outlive."""
    return settings.max_attempts_per_run * timeout_of(settings, size) + settings.attempt_budget + LEASE_MARGIN


@dataclass(frozen=True)
class CreateRequest:
    pack_id: str
    batch_id: str
    file_id: str


class BatchClient:
    def __init__(self, client: AsyncOpenAI, settings: Settings) -> None:
        self.client = client.with_options(max_retries=0)
        self.settings = settings

    async def upload(self, name: str, body: bytes, guard: Guard) -> str:
        async def attempt() -> str:
            made = await self.client.files.create(file=(name, io.BytesIO(body)), purpose="batch")
            return made.id

        return await self._call(attempt, guard, timeout_of(self.settings, len(body)))

    async def create(self, req: CreateRequest, guard: Guard, looked: bool = False) -> Batch:
        """Create the pack's provider batch, never twice: `looked` says the list was searched already."""
        tries = 0

        async def attempt() -> Batch:
            nonlocal tries
            tries += 1
            if tries > 1 or looked:
                found = await self.find(req.pack_id)
                if found is not None:
                    return found
            return await self.client.batches.create(
                input_file_id=req.file_id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                metadata={PACK_METADATA: req.pack_id, BATCH_METADATA: req.batch_id},
            )

        return await self._call(attempt, guard)

    async def find(self, pack_id: str) -> Batch | None:
        """The provider batch whose metadata names the pack (None: none in the last LIST_PAGES pages, or a
        gateway that does not echo metadata back)."""
        after: str | openai.Omit = openai.omit
        for _ in range(LIST_PAGES):
            page = await self.client.batches.list(limit=100, after=after)
            for batch in page.data:
                if (batch.metadata or {}).get(PACK_METADATA) == pack_id:
                    return batch
            if not page.has_more or not page.data:
                return None
            after = page.data[-1].id
        return None

    async def retrieve(self, batch_id: str, guard: Guard) -> Batch:
        return await self._call(lambda: self.client.batches.retrieve(batch_id), guard)

    async def cancel(self, batch_id: str) -> Batch:
        return await self._call(lambda: self.client.batches.cancel(batch_id), _no_guard)

    async def content(self, file_id: str, guard: Guard) -> bytes:
        async def attempt() -> bytes:
            return (await self.client.files.content(file_id)).content

        return await self._call(attempt, guard)

    async def _call(self, fn: Callable[[], Awaitable[T]], guard: Guard, timeout: float = 0.0) -> T:
        failures = 0
        bound = timeout or timeout_of(self.settings)

        async def attempt() -> T:
            nonlocal failures
            await guard()  # a cancel between two attempts stops the next one
            try:
                async with asyncio.timeout(bound):
                    return await fn()
            except TimeoutError:
                failures += 1
                raise TransientLLMError(f"a Batch API call took longer than {bound:.0f}s") from None
            except Exception as exc:
                mapped = as_llm_error(exc)
                if isinstance(mapped, TransientLLMError):
                    failures += 1
                if mapped is exc:
                    raise
                raise mapped from exc

        async for turn in retry.policy(self.settings.retry, asyncio.sleep, lambda: failures):
            with turn:
                return await attempt()
        raise AssertionError("unreachable: the retry policy re-raises the last error")


def as_llm_error(exc: Exception) -> Exception:
    """The online path's error for a Batch API failure (transient or permanent, by the same rule)."""
    if isinstance(exc, openai.APIStatusError):
        return llm.from_status(exc)
    if isinstance(exc, openai.APITimeoutError | openai.APIConnectionError):
        return llm._network_error(exc)
    if isinstance(exc, openai.APIResponseValidationError | ValueError | TypeError | KeyError):
        return TransientLLMError(f"unreadable Batch API answer: {type(exc).__name__}: {exc}")
    return exc


async def _no_guard() -> None:
    return None


def counts_of(batch: Batch) -> dict[str, Any]:
    """Request counts as the provider reports them ({} where a gateway reports none)."""
    return batch.request_counts.model_dump() if batch.request_counts else {}
