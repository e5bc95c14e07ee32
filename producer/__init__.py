"""The producer: a Python API and the `summarize` CLI. Imports nothing of the worker.

`Client`, `Batch` and `submit` are resolved on first use (PEP 562): `summarize --help` and
`summarize llm-serve` start without the Redis client the API needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import Batch, Client, submit

__all__ = ["Batch", "Client", "submit"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import api

    value = getattr(api, name)
    globals()[name] = value
    return value
