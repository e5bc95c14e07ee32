"""What producer and worker share: settings, Redis key names, the job record and its store, errors."""

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
