"""Fault-injecting OpenAI-compatible server for tests and benchmarks: chat completions, Files and Batch APIs.

Faults are requested by markers inside the article text (``[[fault:500x2]]``) rather than by
server-wide switches, so tests running in parallel against one server never see each other's
faults. Per-article request counts decide which requests are faulted: the first N requests for an
article get the fault, later ones succeed. Several directives in one article apply in the order
written, each consuming the next N request slots (``[[fault:429x1]][[fault:500x1]]`` = 429, then
500, then success). A directive without ``xN`` applies to every request. Markers that are not
``fault:`` markers (e.g. ``[[id:42]]``) are ignored, which lets callers make articles unique.
Kinds: ``429[:retry_after]``, ``400``, ``401``, ``404``, ``500``, ``502``, ``503``, ``hang[:seconds]``,
``trickle[:seconds]`` (the answer sent a byte every that many seconds, 1 by default),
``reset`` (connection dropped with RST), ``garbage`` (a non-JSON 200), ``empty`` (no choices),
``blank`` (empty content), ``length`` (cut, ``finish_reason: length``), ``reasoning`` (empty content, a
``reasoning_content`` and ``finish_reason: length``, as when a reasoning model spends max_tokens thinking);
the quality faults, a usable answer the summary checks flag (contract/checks.py): ``invent`` (a number the
article lacks), ``foreign`` (French), ``long`` (200 of the article's words), ``refuse`` (a refusal).

Server-wide settings (``ServerConfig``, changed live with POST /admin/config): ``latency`` (with
``latency_sigma`` > 0 the median of a log-normal latency, drawn per article and request number), ``rpm``,
``tpm`` (a request weighs ceil(characters of all messages / 4) + max_tokens), ``api_key``,
``context_tokens`` (the same weight above it answers 400 ``context_length_exceeded``),
``reasoning_models`` with ``reasoning_tokens`` (those models answer as OpenAI's reasoning models do: 400
for ``max_tokens`` or a temperature other than 1, ``reasoning_tokens`` of ``max_completion_tokens`` spent
thinking, reported in ``usage.completion_tokens_details``; ``reasoning_effort`` to any other model is a
400 too) and the batch faults described in ``tests.faultserver.batches``. POST /admin/outage
``{"seconds", "status"}`` refuses everything for a while; POST /admin/reset clears counters, fault progress,
files and batches.

Accounting rules worth knowing when reading ``/admin/stats``: requests rejected at the "gateway"
(wrong API key, outage, rpm/tpm overshoot, context window) are answered at once, without ``latency``
(which models generation time), and do not advance per-article fault counters. ``ok`` counts only
normal answers actually delivered; injected 200s (garbage/empty/blank/length/reasoning) are only in
``statuses["200"]``, a dropped connection is ``statuses["reset"]``, and an answer whose client had
already gone (e.g. timed out during a hang) is ``statuses["disconnected"]``. Batch lines are counted
apart, in ``batch_line_statuses``; ``batches`` lists every batch with its status, metadata and the
``custom_ids`` of its lines.

``tests.faultserver.batch_client`` drives a Batch API (this server's or ``summarize llm-serve``'s) through
the openai client. ``/admin/stats`` has ``max_in_flight`` and ``mean_in_flight`` (time-weighted, from the
first request to the last start or end; ``mean_in_flight_to_last_start`` stops at the last start, leaving
out the last wave's drain). Run standalone with ``python -m tests.faultserver --port 8000``;
tests and benchmarks use :class:`FaultServer`, which starts it in a subprocess.
"""

from __future__ import annotations

from tests.faultserver.app import create_app
from tests.faultserver.batch_client import create_batch, result_lines, upload_batch_input, wait_for_batch
from tests.faultserver.cli import main
from tests.faultserver.directives import MODEL_ID, article_key, expected_summary, extract_article, prompt_tokens
from tests.faultserver.process import FaultServer
from tests.faultserver.state import FaultState, ServerConfig, completion_latency

__all__ = [
    "MODEL_ID",
    "FaultServer",
    "FaultState",
    "ServerConfig",
    "article_key",
    "completion_latency",
    "create_app",
    "create_batch",
    "expected_summary",
    "extract_article",
    "main",
    "prompt_tokens",
    "result_lines",
    "upload_batch_input",
    "wait_for_batch",
]
