"""The line builder: a pack's request lines from the jobs waiting in arrival order, within the provider's
limits on one batch (requests, bytes) and the room left under the enqueued-token limit.

Each line is the online path's request for the article (worker/summarize.py `request`), so a line and an
online call of the same job are the same request. Identical articles share one line (twins); an article
too long for one request, or for the whole enqueued-token limit, goes online instead (where it is split
and combined). The line builder stops at the first job that does not fit: the jobs wait their turn.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from contract.models import Price
from contract.openai_shapes import batch_request_line
from contract.record import Article
from contract.spec import BatchSpec

from ..prompt import WHOLE
from ..summarize import CONTEXT_MARGIN, request


@dataclass(frozen=True)
class Room:
    """What one pack may hold: requests, bytes, enqueued tokens left now, and the whole enqueued-token limit
    (0: none; a request above it can never be in any batch)."""

    requests: int
    bytes: int
    tokens: float
    limit: int = 0
    context: int = 0


@dataclass
class Built:
    lines: list[bytes] = field(default_factory=list)
    #: job ids with a line of their own, in line order
    leaders: list[str] = field(default_factory=list)
    #: job id -> the leader whose line answers it too
    twins: dict[str, str] = field(default_factory=dict)
    #: job ids that go online instead
    online: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_room: int = 0
    size: int = 0

    @property
    def tokens(self) -> int:
        """What the provider counts against the enqueued-token limit: prompt + max_tokens of every line."""
        return self.prompt_tokens + self.completion_room

    def body(self) -> bytes:
        return b"".join(self.lines)

    def worst_usd(self, price: Price | None, discount: float) -> float:
        """The pack's worst case: every prompt token at the input price, all the completion room at the
        output price, at the batch discount (0 when the price is unknown)."""
        return price.cost(self.prompt_tokens, self.completion_room) * discount if price else 0.0


class LineBuilder:
    def __init__(self, spec: BatchSpec, max_chars: int, prompt_bound: Callable[[list[dict[str, Any]]], int]) -> None:
        self.spec, self.max_chars, self.prompt_bound = spec, max_chars, prompt_bound

    def build(self, waiting: list[tuple[str, Article]], room: Room) -> Built:
        out = Built()
        by_digest: dict[str, str] = {}
        for job_id, article in waiting:
            if not self.spec.no_cache and article.digest in by_digest:
                out.twins[job_id] = by_digest[article.digest]
                continue
            ask = request(article.text, self.spec, WHOLE, self.max_chars)
            prompt = self.prompt_bound(ask.messages)
            need = prompt + ask.max_tokens
            if (room.context and need > room.context * CONTEXT_MARGIN) or (room.limit and need > room.limit):
                out.online.append(job_id)
                continue
            line = json.dumps(batch_request_line(job_id, ask.body(ask.max_tokens)), ensure_ascii=False).encode()
            line += b"\n"
            if (
                len(out.leaders) >= room.requests
                or out.size + len(line) > room.bytes
                or out.tokens + need > room.tokens
            ):
                break
            out.lines.append(line)
            out.leaders.append(job_id)
            by_digest[article.digest] = job_id
            out.size += len(line)
            out.prompt_tokens += prompt
            out.completion_room += ask.max_tokens
        return out
