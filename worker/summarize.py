"""The summarize function a job runs, and the call path under it: limiter, retry policy, LLM.

An article that fits the model's context is one request. One that does not (or that the provider says
does not: 400 context_length_exceeded) is split into parts on paragraph and sentence boundaries; each
part is summarized (map) and the summaries are combined (reduce, in rounds while they still do not
fit) under the batch's own prompt or schema. Every request goes through the same limiter, retries,
unusable-answer budget and billing; finished parts are kept (`Partials`), so a crash mid-article does
not pay for them again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from openai import AsyncOpenAI

from contract.chunking import CONTEXT_MARGIN as CONTEXT_MARGIN
from contract.chunking import Fit as Fit
from contract.errors import (
    BudgetWait,
    ContextExceeded,
    FlaggedAnswers,
    FlaggedSummary,
    HandBack,
    MalformedResponse,
    PermanentLLMError,
    TransientLLMError,
    TruncatedSummary,
    UnusableAnswers,
)
from contract.models import CallStyle, Price
from contract.ops import Bill, Counts
from contract.settings import ProviderSettings, Settings
from contract.spec import BatchSpec

from . import chunking, llm, metrics, prompt, retry
from .prompt import Stage
from .ratelimit import RateLimiter, token_counter

#: re-plans after the provider said a request did not fit (each with its smaller number)
MAX_REPLANS = 3
#: seconds between two looks at the budget while calls in flight hold what this one needs
BUDGET_POLL = 0.1
#: tokens a chat request adds around its messages' contents: a few per message, a few to start the answer
MESSAGE_OVERHEAD = 4
REPLY_PRIMING = 3


def prompt_bound_counter(settings: ProviderSettings) -> Callable[[list[dict[str, Any]]], int]:
    """messages -> an upper bound of the prompt's tokens, for budget holds. The exact count where the
    model's tokenizer is known (tiktoken, when configured and loadable); else the byte bound: OpenAI's
    and most open models' tokenizers are byte-level BPE, so a token covers at least one UTF-8 byte and
    the bytes bound the tokens whatever the script (CJK, code, numbers), where 4 characters a token
    is only an average for English."""
    if settings.token_counter == "tiktoken":
        try:
            import tiktoken

            enc = tiktoken.get_encoding(settings.tiktoken_encoding)

            def exact(messages: list[dict[str, Any]]) -> int:
                body = sum(len(enc.encode(str(m["content"]), disallowed_special=())) for m in messages)
                return body + MESSAGE_OVERHEAD * len(messages) + REPLY_PRIMING

            return exact
        except Exception:  # no package or no encoding files offline: the byte bound holds anyway
            pass

    def by_bytes(messages: list[dict[str, Any]]) -> int:
        body = sum(len(str(m["content"]).encode("utf-8")) for m in messages)
        return body + MESSAGE_OVERHEAD * len(messages) + REPLY_PRIMING

    return by_bytes


@dataclass(frozen=True)
class Ask:
    """One request: what reaches the provider, and how its answer is checked before it counts."""

    messages: list[dict[str, str]]
    model: str
    max_tokens: int
    temperature: float = 0.0
    response_format: dict[str, Any] | None = None
    #: content -> the text to store; raises MalformedResponse for an answer that can't be used
    check: Callable[[str], str] = str.strip
    #: how the model is called (a reasoning model: max_completion_tokens, reasoning_effort, no temperature)
    style: CallStyle = CallStyle()
    #: the whole article in one request (every run of the job sends the same prompt)
    whole: bool = False

    def body(self, max_tokens: int) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": self.messages, self.style.room_param: max_tokens}
        if self.style.reasoning:
            # Only the default temperature is accepted: any temperature sent, even 1, is one more way to a 400.
            if self.style.reasoning_effort is not None:
                body["reasoning_effort"] = self.style.reasoning_effort
        else:
            body["temperature"] = self.temperature
        if self.response_format is not None:
            body["response_format"] = self.response_format
        return body


#: an Ask -> its checked Completion, however it is limited and retried
Call = Callable[[Ask], Awaitable[llm.Completion]]
#: raises when the job must not make another request
Guard = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Summary:
    text: str
    model: str
    #: parts the article was split into (0: it fitted whole)
    chunks: int = 0


class Partials(Protocol):
    """Summaries of an article's parts, kept across runs of its job."""

    def get(self, key: str) -> str | None: ...

    async def put(self, key: str, text: str) -> None: ...


class NoPartials:
    def get(self, key: str) -> str | None:
        return None

    async def put(self, key: str, text: str) -> None:
        return None


#: a final answer's text -> None, or FlaggedSummary when a check its batch requires flags it (worker/outcome.py)
Accept = Callable[[str], None]


def gate(ask: Ask, accept: Accept | None) -> Ask:
    """`ask` whose answer must also pass `accept`: a flagged answer is an unusable one (asked again)."""
    if accept is None:
        return ask
    check = ask.check

    def checked(content: str) -> str:
        kept = check(content)
        accept(kept)
        return kept

    return replace(ask, check=checked)


async def summarize(
    text: str,
    spec: BatchSpec,
    call: Call,
    fit: Fit,
    max_chars: int,
    partials: Partials | None = None,
    accept: Accept | None = None,
) -> Summary:
    """Summarize one article. Pure but for `call` (and `partials`), so it can be tested with any callable.
    `accept` judges the final answer (the batch's required checks)."""
    ask = gate(request(text, spec, prompt.WHOLE, max_chars), accept)
    for _ in range(MAX_REPLANS + 1):
        try:
            if fit.fits(ask):
                completion = await call(ask)
                return Summary(completion.content, completion.model or spec.model)
            return await MapReduce(spec, call, fit, max_chars, partials or NoPartials(), accept).run(text)
        except ContextExceeded as exc:
            fit = fit.shrunk(exc.limit)
    raise PermanentLLMError(f"the article does not fit the model's context even in parts of {fit.context} tokens")


def request(text: str, spec: BatchSpec, stage: Stage, max_chars: int) -> Ask:
    structured = spec.json_schema is not None and stage.final
    if structured:
        schema = spec.json_schema or {}

        def check(content: str) -> str:
            return prompt.parse_structured(content, schema, max_chars)
    else:
        keep_lines = spec.prompt is not None and stage.final

        def check(content: str) -> str:
            return prompt.clean_summary(content, max_chars, keep_lines)

    style = spec.style()
    return Ask(
        prompt.build_messages(text, spec, stage),
        spec.model,
        # A reasoning model thinks inside the same room: the answer's room alone can end empty.
        prompt.max_tokens_for(spec.max_words, structured) + style.reasoning_tokens,
        spec.temperature,
        prompt.response_format(spec, stage),
        check,
        style,
        stage == prompt.WHOLE,
    )


@dataclass
class MapReduce:
    spec: BatchSpec
    call: Call
    fit: Fit
    max_chars: int
    partials: Partials
    accept: Accept | None = None

    async def run(self, text: str) -> Summary:
        room = self.fit.part_room(self.spec)
        if room < 100:
            raise PermanentLLMError(
                f"the model's context window ({self.fit.context} tokens) leaves no room for a "
                "part of the article beside the prompt and the answer"
            )
        # In a thread: megabytes of text take a fifth of a second of CPU that every other job of the
        # process would otherwise wait out on the event loop.
        parts = await asyncio.to_thread(self.fit.parts, text, room)
        plan = f"{room}"
        summaries = await asyncio.gather(
            *(self._once(f"{plan}:p{i}", part, Stage("part", i + 1, len(parts), False)) for i, part in enumerate(parts))
        )
        return await self._combine(list(summaries), plan, len(parts))

    async def _combine(self, summaries: list[str], plan: str, chunks: int) -> Summary:
        for round_ in range(1, 20):
            final = gate(request(self._joined(summaries), self.spec, Stage("combine"), self.max_chars), self.accept)
            if self.fit.fits(final):
                completion = await self.call(final)
                return Summary(completion.content, completion.model or self.spec.model, chunks)
            room = self.fit.room(self.spec, Stage("combine"), final.max_tokens)
            groups = chunking.groups(summaries, room, self.fit.count_text)
            if len(groups) >= len(summaries):
                raise PermanentLLMError("the parts' summaries are too long to combine within the model's context")
            summaries = list(
                await asyncio.gather(
                    *(
                        self._once(f"{plan}:c{round_}.{i}", self._joined(g), Stage("combine", final=False))
                        for i, g in enumerate(groups)
                    )
                )
            )
        raise PermanentLLMError("the parts' summaries did not come together in 20 rounds")

    async def _once(self, key: str, text: str, stage: Stage) -> str:
        kept = self.partials.get(key)
        if kept is not None:
            return kept
        completion = await self.call(request(text, self.spec, stage, self.max_chars))
        await self.partials.put(key, completion.content)
        return completion.content

    @staticmethod
    def _joined(summaries: list[str]) -> str:
        return "\n\n".join(f"[{i}] {s}" for i, s in enumerate(summaries, start=1))


@dataclass
class Tally:
    """What one run of one job cost: requests made, unusable answers among them, tokens and USD billed.
    `flushed` is what was already stored with a part's summary, so a later op carries only the rest."""

    requests: int = 0
    unusable: int = 0
    #: failed requests that may pass by themselves (429, 5xx, timeouts): bounded per run
    transient: int = 0
    #: what was billed so far (cost -1 once a billed call's price was unknown: null, never a made-up number)
    billed: Bill = field(default_factory=Bill)
    #: what was stored already (the Counts of earlier ops)
    flushed: Counts = field(default_factory=Counts)

    def bill(self, usage: llm.Usage, price: Price | None = None) -> None:
        self.billed += Bill.priced(usage.prompt_tokens, usage.completion_tokens, price)

    def unflushed(self) -> Counts:
        """What is not stored yet (cost -1 when unknown); marks it stored."""
        done = self.flushed
        now = Counts(self.requests, self.unusable, self.billed)
        self.flushed = now
        return Counts(now.requests - done.requests, now.unusable - done.unusable, now.bill - done.bill)


@dataclass(frozen=True)
class Hold:
    """A call's worst case held against its batch's budget until the call is billed."""

    usd: float = 0.0
    tokens: int = 0


@dataclass(frozen=True)
class Billed:
    """What one call came to, for its hold: the provider's usage; `estimated` when no answer came but
    the request may have been billed (a timeout: the hold stays as spend at its bound); `save_tokens`,
    for a whole-article call, how far the provider's prompt count fell under the byte bound."""

    usage: llm.Usage = field(default_factory=lambda: llm.Usage())
    estimated: bool = False
    save_tokens: int = 0


class Account(Protocol):
    """Prices and budget of the batch a job belongs to, and the last word before each of its calls
    (worker/account.py's JobAccount: built per run from only the pieces of the process it uses)."""

    def price(self, model: str) -> Price | None: ...

    async def admit(self, model: str, prompt_bound: int, max_tokens: int) -> Hold:
        """Right before the call leaves: raise if it must not (BatchPaused, BatchCancelled,
        ProviderRejected for a halt, RunLost, BudgetWait to wait for calls in flight); else hold its
        worst case against the budget (prompt_bound + max_tokens tokens) and return the hold."""
        ...

    async def release(self, hold: Hold, model: str, billed: Billed) -> None:
        """The call is over: its hold replaced by what it was billed."""
        ...


class FreeAccount:
    """No prices, no budget (tests of the call path)."""

    def price(self, model: str) -> Price | None:
        return None

    async def admit(self, model: str, prompt_bound: int, max_tokens: int) -> Hold:
        return Hold()

    async def release(self, hold: Hold, model: str, billed: Billed) -> None:
        return None


@dataclass
class Provider:
    """Rate-limited, retried calls to one provider; one per worker process, shared by its coroutines."""

    client: AsyncOpenAI
    limiter: RateLimiter
    settings: Settings
    stop: asyncio.Event

    def __post_init__(self) -> None:
        self.count_tokens = token_counter(self.settings.provider)
        self.prompt_bound = prompt_bound_counter(self.settings.provider)

    def for_job(self, unusable_before: int, tally: Tally, guard: Guard, account: Account | None = None) -> Call:
        """The call path of one job. `guard` runs before every request and raises to stop the job
        (its batch was halted, paused or cancelled meanwhile); `account` prices and budgets its calls."""
        acct = account or FreeAccount()

        async def call(ask: Ask) -> llm.Completion:
            room = [ask.max_tokens]
            policy = retry.policy(self.settings.retry, retry.interruptible_sleep(self.stop), lambda: tally.transient)
            async for attempt in policy:
                with attempt:
                    return await self._once(ask, room, unusable_before, tally, guard, acct)
            raise AssertionError("unreachable: tenacity re-raises the last error")

        return call

    async def _once(
        self, ask: Ask, room: list[int], unusable_before: int, tally: Tally, guard: Guard, account: Account
    ) -> llm.Completion:
        if self.stop.is_set():
            raise HandBack("worker is shutting down")  # start no new request while stopping
        await guard()
        tokens = self.count_tokens(ask.messages, room[0])
        bound = self.prompt_bound(ask.messages)
        while True:
            booking = await self.limiter.acquire(tokens, self.stop)
            # After the wait for the limiter: a cancel, pause, budget or lost lease that came meanwhile
            # stops the call here, and its booked slot goes back to the others.
            try:
                hold = await account.admit(ask.model, bound, room[0])
                break
            except BudgetWait:
                await self.limiter.release(booking)
                await retry.interruptible_sleep(self.stop)(BUDGET_POLL)
            except BaseException:
                await self.limiter.release(booking)
                raise
        tally.requests += 1
        billed = llm.Usage()
        price = account.price(ask.model)
        failure: Exception | None = None
        metrics.IN_FLIGHT.inc()
        sent = time.monotonic()
        try:
            completion = await llm.complete(self.client, ask.body(room[0]), self.settings.llm_timeout)
            billed = completion.usage
            tally.bill(billed, price)
            content = ask.check(completion.content)
        except MalformedResponse as exc:
            if billed == llm.Usage():
                billed = llm.Usage(exc.prompt_tokens, exc.completion_tokens)
                tally.bill(billed, price)
            self._unusable(exc, room, unusable_before, tally)
            raise
        except TransientLLMError as exc:
            failure = exc
            tally.transient += 1
            if exc.status == 429 and exc.retry_after:
                await self.limiter.cool_down(exc.retry_after)
            raise
        except PermanentLLMError as exc:
            failure = exc
            raise
        finally:
            metrics.IN_FLIGHT.dec()
            metrics.observe(failure, time.monotonic() - sent, billed.pair, price)
            # A timeout may have been billed: its hold is kept as spend at its bound (never overspent).
            unknown = isinstance(failure, TransientLLMError) and failure.maybe_billed and billed == llm.Usage()
            # The provider's count of a whole-article prompt is every run's count of it: how far it fell under
            # our bound tightens what earlier runs of this job that died in flight are counted at.
            save = max(0, bound - billed.prompt_tokens) if ask.whole and billed != llm.Usage() else 0
            await account.release(hold, ask.model, Billed(billed, estimated=unknown, save_tokens=save))
        await self.limiter.settle(booking, completion.usage.prompt_tokens + room[0])
        return replace(completion, content=content)

    def _unusable(self, exc: MalformedResponse, room: list[int], unusable_before: int, tally: Tally) -> None:
        tally.unusable += 1
        if isinstance(exc, TruncatedSummary):
            # The same request at temperature 0 would stop at the same place: give it more room.
            # (Never below what it had: a reasoning model's room can start above the cap.)
            room[0] = max(room[0], min(room[0] * 2, self.settings.max_completion_tokens))
        n = unusable_before + tally.unusable
        if n >= self.settings.max_unusable:
            raise self._give_up(exc, n, room[0]) from None

    def _give_up(self, exc: MalformedResponse, n: int, room: int) -> UnusableAnswers:
        if isinstance(exc, FlaggedSummary):
            return FlaggedAnswers(
                f"{exc} ({n} paid answers could not be used, the last flagged by a check the batch requires: "
                "--require-checks)"
            )
        if isinstance(exc, TruncatedSummary):
            advice = (
                f"every answer was cut off, the last at max_tokens={room}: give it more room "
                f"(SUMMARIZE_MAX_COMPLETION_TOKENS, now {self.settings.max_completion_tokens}, or fewer "
                "--max-words) or use another model"
            )
        else:
            advice = f"the last: {exc}. Check the model and the endpoint (OPENAI_BASE_URL), or use another model"
        return UnusableAnswers(f"{n} paid answers could not be used; {advice}")
