"""Splitting an article that does not fit the model's context into parts: contract/chunking.py, where the
producer's `summarize estimate` finds it too; re-exported here for the worker's call path."""

from __future__ import annotations

from contract.chunking import CONTEXT_MARGIN, OVERLAP_TOKENS, Count, Fit, groups, split

__all__ = ["CONTEXT_MARGIN", "OVERLAP_TOKENS", "Count", "Fit", "groups", "split"]
