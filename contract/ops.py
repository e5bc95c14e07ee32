"""The ops settle.lua applies, one class per kind, each packing itself to the positional form of
contract/schema.py OP (and its kind's extra). Every op is built here: worker/outcome.py, worker/engine.py
and worker/batchmode/ call these classes, never a bare list."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from .record import Final
from .schema import DEFER_EXTRA, FAIL_EXTRA, OP, PART_EXTRA, REPACK_EXTRA, SPEND_EXTRA

if TYPE_CHECKING:
    from .job import ClaimedJob
    from .models import Price


@dataclass(frozen=True)
class Bill:
    """What calls were billed: tokens in (prompt) and out (completion), and USD. `cost_usd` -1: some
    call's price was unknown, so the cost is null, never a made-up number."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    @classmethod
    def priced(cls, prompt_tokens: int, completion_tokens: int, price: Price | None, discount: float = 1.0) -> Bill:
        """The bill of a provider's usage at `price` (times a batch discount); no price: unknown (-1),
        unless nothing was billed."""
        if price is not None:
            cost = price.cost(prompt_tokens, completion_tokens) * discount
        else:
            cost = 0.0 if prompt_tokens + completion_tokens == 0 else -1.0
        return cls(prompt_tokens, completion_tokens, cost)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def cost_known(self) -> bool:
        return self.cost_usd >= 0

    def __add__(self, other: Bill) -> Bill:
        known = self.cost_known and other.cost_known
        return Bill(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cost_usd + other.cost_usd if known else -1.0,
        )

    def __sub__(self, other: Bill) -> Bill:
        """What `self` (a running total) added since `other` (an earlier one)."""
        known = self.cost_known and other.cost_known
        return Bill(
            self.prompt_tokens - other.prompt_tokens,
            self.completion_tokens - other.completion_tokens,
            self.cost_usd - other.cost_usd if known else -1.0,
        )


@dataclass(frozen=True)
class Counts:
    """What a run did since its last op: calls made, unusable answers among them, and their bill."""

    requests: int = 0
    unusable: int = 0
    bill: Bill = field(default_factory=Bill)


@dataclass(frozen=True)
class Run:
    """Whose op it is: the job, the run holding it (batch mode: the pack), the batch generation it was made
    for ('' : batch mode, which only needs the batch to exist)."""

    batch_id: str
    job_id: str
    token: str
    gen: str = ""

    @classmethod
    def of(cls, job: ClaimedJob) -> Run:
        return cls(job.batch_id, job.job_id, job.token, job.gen)


@dataclass(frozen=True, kw_only=True)
class Op:
    """One outcome for settle.lua: what happened to a job in one run, and what the provider billed (counted
    whatever becomes of the job)."""

    kind: ClassVar[str]
    run: Run
    counts: Counts = field(default_factory=Counts)

    def extra(self) -> Any:
        return ""

    @property
    def cache_key(self) -> str:
        return ""

    def row(self) -> list[Any]:
        """The positional form settle.lua reads (contract/schema.py OP)."""
        c, b = self.counts, self.counts.bill
        return OP.row(
            kind=self.kind,
            batch=self.run.batch_id,
            id=self.run.job_id,
            token=self.run.token,
            attempts=c.requests,
            unusable=c.unusable,
            prompt_tokens=b.prompt_tokens,
            completion_tokens=b.completion_tokens,
            cost_usd=b.cost_usd,
            extra=self.extra(),
            cache_key=self.cache_key,
            gen=self.run.gen,
        )


@dataclass(frozen=True, kw_only=True)
class Done(Op):
    """A summary: stored even if the job failed or was re-run meanwhile (a late result wins). With a cache
    key (the final's), the answer is cached and the twins waiting for it are done from it."""

    kind: ClassVar[str] = "done"
    final: Final

    def extra(self) -> Any:
        return self.final.pack()

    @property
    def cache_key(self) -> str:
        return self.final.cache_key


@dataclass(frozen=True, kw_only=True)
class Fail(Op):
    """The job failed. `halt`: the provider rejected the key or model, the batch halts; `signature`: a
    provider's 4xx that may fail every job alike ('' for none of those)."""

    kind: ClassVar[str] = "fail"
    final: Final
    halt: str = ""
    signature: str = ""

    def extra(self) -> Any:
        return FAIL_EXTRA.row(record=self.final.pack(), halt=self.halt, signature=self.signature)


@dataclass(frozen=True, kw_only=True)
class Defer(Op):
    """Handed back, due again in `delay_ms`; `counts_as_failure` False for a worker's shutdown (no failure:
    the retry horizon does not start)."""

    kind: ClassVar[str] = "defer"
    delay_ms: int
    error_type: str
    error: str
    counts_as_failure: bool

    def extra(self) -> Any:
        return DEFER_EXTRA.row(
            delay_ms=self.delay_ms,
            error_type=self.error_type,
            error=self.error,
            counts_as_failure=1 if self.counts_as_failure else 0,
        )


@dataclass(frozen=True, kw_only=True)
class Part(Op):
    """The summary of one part of a long article, kept for later runs (the counts go to the job)."""

    kind: ClassVar[str] = "part"
    key: str
    summary: str

    def extra(self) -> Any:
        return PART_EXTRA.row(key=self.key, summary=self.summary)


@dataclass(frozen=True, kw_only=True)
class Park(Op):
    """The batch was paused: the job waits, holding nothing, until it is resumed."""

    kind: ClassVar[str] = "park"


@dataclass(frozen=True, kw_only=True)
class Cancel(Op):
    """The batch was cancelled before this run's next call."""

    kind: ClassVar[str] = "cancel"


@dataclass(frozen=True, kw_only=True)
class Repack(Op):
    """(Batch mode) the line goes into a later pack, or online; error_type '' when it was no failure."""

    kind: ClassVar[str] = "repack"
    online: bool
    error_type: str
    error: str

    def extra(self) -> Any:
        return REPACK_EXTRA.row(online=1 if self.online else 0, error_type=self.error_type, error=self.error[:200])


@dataclass(frozen=True, kw_only=True)
class Spend(Op):
    """A call's (or a pack's) budget hold replaced by what it really cost; no job change. `estimated`: no
    answer came but the call may have been billed, it is spent at its bound; `save_tokens`/`save_usd`: a
    whole-article call's prompt count under the byte bound, which tightens the job's dead runs' estimates."""

    kind: ClassVar[str] = "spend"
    held_usd: float
    held_tokens: int
    spent_usd: float
    spent_tokens: int
    estimated: bool = False
    save_tokens: int = 0
    save_usd: float = 0.0

    def extra(self) -> Any:
        return SPEND_EXTRA.row(
            held_usd=self.held_usd,
            held_tokens=self.held_tokens,
            spent_usd=self.spent_usd,
            spent_tokens=self.spent_tokens,
            estimated=1 if self.estimated else 0,
            save_tokens=self.save_tokens,
            save_usd=self.save_usd,
        )


#: every kind settle.lua applies
KINDS: dict[str, type[Op]] = {k.kind: k for k in (Done, Fail, Defer, Part, Park, Cancel, Repack, Spend)}
