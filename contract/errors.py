"""One exception tree for the whole project; producer and worker raise and catch these."""

from __future__ import annotations


class SummarizeError(Exception):
    """Raised when anything in this project fails; the base of every error below."""


class ConfigError(SummarizeError):
    """Raised when a setting read from the environment is missing or malformed."""


class EvictingRedis(ConfigError):
    """Raised when Redis may evict keys (maxmemory-policy is not noeviction) and that was not allowed."""


class BrokerUnavailable(SummarizeError):
    """Raised when Redis can't be reached or refuses the credentials it was given."""


class BatchNotFound(SummarizeError):
    """Raised when a batch id is unknown to Redis (never submitted, or expired), or its record can't be read."""

    def __init__(self, batch_id: str, why: str = "") -> None:
        super().__init__(
            f"batch {batch_id!r}: {why}"
            if why
            else f"unknown batch {batch_id!r}: nothing was submitted under it, or its results expired"
        )
        self.batch_id = batch_id


class InputError(SummarizeError):
    """Raised when one input record is invalid; names the source, line and id."""

    def __init__(self, source: str, line: int, job_id: str | None, reason: str) -> None:
        where = f"{source}:{line}" if line else source
        ident = f" (id {job_id!r})" if job_id is not None else ""
        super().__init__(f"{where}{ident}: {reason}")
        self.source, self.line, self.job_id, self.reason = source, line, job_id, reason


class InvalidInput(SummarizeError):
    """Raised when validation finds bad records; carries every one of them."""

    def __init__(self, errors: list[InputError], total_bad: int) -> None:
        shown = "\n".join(f"  {e}" for e in errors)
        more = f"\n  ... and {total_bad - len(errors)} more" if total_bad > len(errors) else ""
        super().__init__(f"{total_bad} invalid record(s); nothing was enqueued:\n{shown}{more}")
        self.errors, self.total_bad = errors, total_bad


class LLMError(SummarizeError):
    """Raised when a call to the chat-completions API fails."""

    #: the HTTP status when the provider answered, else None
    status: int | None = None


class TransientLLMError(LLMError):
    """Raised when the failure may pass by itself: 408/409/429/5xx, timeouts, resets, bad bodies."""

    #: the request may have reached the provider and been billed although no answer came (a timeout):
    #: its budget hold is counted as spent at its bound, marked estimated
    maybe_billed: bool = False

    def __init__(
        self, message: str, status: int | None = None, retry_after: float | None = None, maybe_billed: bool = False
    ) -> None:
        super().__init__(message)
        self.status, self.retry_after, self.maybe_billed = status, retry_after, maybe_billed


class MalformedResponse(TransientLLMError):
    """Raised when a 200 answer is not a usable completion (not JSON, no choices, empty, cut off).

    The provider billed it (the tokens it reported ride along); SUMMARIZE_MAX_UNUSABLE bounds how many of
    these one article may cost.
    """

    def __init__(self, message: str, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        super().__init__(message, status=200)
        self.prompt_tokens, self.completion_tokens = prompt_tokens, completion_tokens


class TruncatedSummary(MalformedResponse):
    """Raised when the model stopped at max_tokens (finish_reason=length); the next try gets more room."""


class FlaggedSummary(MalformedResponse):
    """Raised when an answer is flagged by a check its batch requires (--require-checks): unusable, asked again."""

    def __init__(self, flags: tuple[str, ...], prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        super().__init__(f"flagged: {', '.join(flags)}", prompt_tokens, completion_tokens)
        self.flags = flags


class PermanentLLMError(LLMError):
    """Raised when retrying the same request can't help: a 4xx other than 408/409/429."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ProviderRejected(PermanentLLMError):
    """Raised on 401/403/404: a bad key or unknown model, which halts the whole batch."""


class ContextExceeded(PermanentLLMError):
    """Raised when the provider says a request does not fit the model's context window (the article is split)."""

    def __init__(self, message: str, limit: int | None = None) -> None:
        super().__init__(message, status=400)
        #: the model's context window in tokens, when the provider said
        self.limit = limit


class UnusableAnswers(PermanentLLMError):
    """Raised when an article's answers came back unusable SUMMARIZE_MAX_UNUSABLE times: retrying won't help."""


class FlaggedAnswers(UnusableAnswers):
    """Raised when an article's answers were unusable SUMMARIZE_MAX_UNUSABLE times, the last one flagged by a
    check its batch requires (--require-checks): the error names the flags."""


class RequestTooLarge(PermanentLLMError):
    """Raised when one request needs more tokens than the provider's per-minute limit admits at once."""


class JobsFailed(SummarizeError):
    """Raised when every job of a message failed for good, so Flower shows the task as failed."""


class BatchPaused(SummarizeError):
    """Raised when a job's batch was paused (by the user, or by its budget) before the job's next call, and
    by `Batch.wait` on a paused batch (nothing moves until a resume; its `status` attribute is the last one)."""


class BatchCancelled(SummarizeError):
    """Raised when a job's batch was cancelled before the job's next call."""


class HandBack(SummarizeError):
    """Raised when a worker is stopping and gives its job back to the queue instead of finishing it."""


class RunLost(SummarizeError):
    """Raised when a run no longer holds its job (its lease lapsed and another run took it, or the job was
    settled meanwhile) or its batch is gone: it makes no further call, and stores nothing."""


class BudgetWait(SummarizeError):
    """Raised when a call fits its batch's budget only once calls already in flight settle: it waits for them."""
