"""Driving a Batch API through the openai client, for tests against either of our servers."""

from __future__ import annotations

import json
import time
from typing import Any

import openai
from openai.types import Batch, FileObject

from contract.openai_shapes import TERMINAL_BATCH_STATUSES, jsonl


def upload_batch_input(client: openai.OpenAI, lines: list[dict[str, Any]] | bytes) -> FileObject:
    """Upload request lines (or raw JSONL bytes) as a ``purpose="batch"`` file."""
    data = lines if isinstance(lines, bytes) else jsonl(lines)
    return client.files.create(file=("batch.jsonl", data), purpose="batch")


def create_batch(client: openai.OpenAI, lines: list[dict[str, Any]] | bytes, **kwargs: Any) -> Batch:
    source = upload_batch_input(client, lines)
    return client.batches.create(
        input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h", **kwargs
    )


def wait_for_batch(client: openai.OpenAI, batch_id: str, timeout: float = 30) -> tuple[Batch, list[str]]:
    """The batch once it has finished, and every status seen while polling it."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if not seen or seen[-1] != batch.status:
            seen.append(batch.status)
        if batch.status in TERMINAL_BATCH_STATUSES:
            return batch, seen
        time.sleep(0.05)
    raise AssertionError(f"batch {batch_id} still {seen[-1] if seen else 'unknown'} after {timeout}s")


def result_lines(client: openai.OpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    """An output or error file's lines by custom_id (empty when there is no such file)."""
    if file_id is None:
        return {}
    text = client.files.content(file_id).text
    return {line["custom_id"]: line for line in map(json.loads, text.splitlines())}
