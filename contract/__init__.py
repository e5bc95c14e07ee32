"""What producer and worker share: settings, Redis key names, the job record and its store, errors.

Exports are resolved on first use (PEP 562), so importing one module of the package (`contract.errors`
from `summarize --help`, `contract.settings` from the offline server) doesn't import Redis' client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .errors import (
        BatchNotFound,
        BrokerUnavailable,
        ConfigError,
        HandBack,
        InputError,
        InvalidInput,
        LLMError,
        MalformedResponse,
        PermanentLLMError,
        ProviderRejected,
        SummarizeError,
        TransientLLMError,
        TruncatedSummary,
    )
    from .job import ClaimedJob, Status
    from .keys import BATCH_ID_RE, Keys
    from .record import JobResult
    from .settings import LOCAL_MODEL, Secret, Settings, redact_url
    from .store import JobStore, NewJob

_WHERE = {
    "BATCH_ID_RE": "keys",
    "BatchNotFound": "errors",
    "BrokerUnavailable": "errors",
    "ClaimedJob": "job",
    "ConfigError": "errors",
    "HandBack": "errors",
    "InputError": "errors",
    "InvalidInput": "errors",
    "JobResult": "record",
    "JobStore": "store",
    "Keys": "keys",
    "LLMError": "errors",
    "LOCAL_MODEL": "settings",
    "MalformedResponse": "errors",
    "NewJob": "store",
    "PermanentLLMError": "errors",
    "ProviderRejected": "errors",
    "Secret": "settings",
    "Settings": "settings",
    "Status": "job",
    "SummarizeError": "errors",
    "TransientLLMError": "errors",
    "TruncatedSummary": "errors",
    "redact_url": "settings",
}

__all__ = [
    "BATCH_ID_RE",
    "LOCAL_MODEL",
    "BatchNotFound",
    "BrokerUnavailable",
    "ClaimedJob",
    "ConfigError",
    "HandBack",
    "InputError",
    "InvalidInput",
    "JobResult",
    "JobStore",
    "Keys",
    "LLMError",
    "MalformedResponse",
    "NewJob",
    "PermanentLLMError",
    "ProviderRejected",
    "Secret",
    "Settings",
    "Status",
    "SummarizeError",
    "TransientLLMError",
    "TruncatedSummary",
    "redact_url",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value
