"""A job's account: the `Account` the call path (worker/summarize.py) is given for one run of one job.

It decides nothing itself. Whether a call may leave is send.lua's word, taken on Redis' state right before
the call: the batch still exists in the run's generation, the run still holds its job, the batch is
running, and with a budget the call's worst case fits. What a call cost is settle.lua's to apply (a
`spend` op through the writer: the hold replaced by the bill). The account only carries holds between
the two: it prices the worst case from the batch's spec, asks, turns the verdict into the error the call
path stops on (or waits on, BudgetWait), and hands the hold back with what the call was billed.

It is built by the Engine for each job from exactly the pieces it uses (below as narrow protocols, each
met by the Engine's own: WorkerStore, Batches, Writer), so it can be read, and tested, alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from contract.errors import BudgetWait, RunLost
from contract.job import ClaimedJob
from contract.models import Price
from contract.ops import Run, Spend
from contract.spec import BatchSpec

from .batches import raise_for
from .summarize import Billed, Hold


class Gate(Protocol):
    """send.lua (WorkerStore.send): (verdict, detail) for a call of `job` whose worst case is `usd`
    (-1: its price is unknown) and `tokens`; a `go` holds that worst case against the batch."""

    async def send(self, job: ClaimedJob, usd: float, tokens: int) -> tuple[str, str]: ...


class StateNotes(Protocol):
    """This process's copy of batch states (Batches.note): a state send.lua reported is noted at once, so
    the job's other calls stop at their guard without waiting for the copy to be refreshed."""

    def note(self, batch_id: str, state: str, halt: str = "") -> None: ...


class SpendWriter(Protocol):
    """The process's writer (Writer.settle): a spend op to settle.lua, gathered with other ops."""

    async def settle(self, op: Spend) -> int: ...


@dataclass(frozen=True)
class JobAccount:
    """Prices a job's calls from its batch's spec; right before each call leaves, asks send.lua whether it
    may (batch state, the run's lease, the budget) and holds its worst case until the call is billed."""

    job: ClaimedJob
    #: the spec the run calls under (the batch's, or its fallback model's): its prices price the calls
    spec: BatchSpec
    store: Gate
    batches: StateNotes
    writer: SpendWriter

    def price(self, model: str) -> Price | None:
        return self.spec.price(model)

    async def admit(self, model: str, prompt_bound: int, max_tokens: int) -> Hold:
        price = self.price(model)
        # -1: no price, which send.lua refuses under a USD cap (a cap it could not keep)
        held = Hold(price.cost(prompt_bound, max_tokens) if price else -1.0, prompt_bound + max_tokens)
        j = self.job
        verdict, detail = await self.store.send(j, held.usd, held.tokens)
        if verdict == "go":
            # send.lua held 0 USD for an unknown price: the hold released later must say the same
            return held if held.usd >= 0 else replace(held, usd=0.0)
        if verdict == "wait":
            raise BudgetWait(f"batch {j.batch_id}: waiting for calls in flight to settle")
        if verdict in ("lost", "gone"):
            raise RunLost(f"job {j.batch_id}/{j.job_id}: this run no longer holds it ({verdict})")
        self.batches.note(j.batch_id, verdict, detail)
        raise_for(j.batch_id, verdict, detail)
        raise RunLost(f"batch {j.batch_id}: unknown verdict {verdict!r}")

    async def release(self, hold: Hold, model: str, billed: Billed) -> None:
        if hold == Hold():
            return  # nothing was held (the call never got its go): nothing to replace
        price = self.price(model)
        if billed.estimated:
            # No answer, but the provider may have billed it: spent at its bound, never under it.
            spent, tokens = hold.usd, hold.tokens
        else:
            # an unknown price spends nothing in USD (the token cap still counts the tokens)
            spent = price.cost(*billed.usage.pair) if price else 0.0
            tokens = sum(billed.usage.pair)
        save = billed.save_tokens
        j = self.job
        await self.writer.settle(
            Spend(
                run=Run.of(j),
                held_usd=hold.usd,
                held_tokens=hold.tokens,
                spent_usd=spent,
                spent_tokens=tokens,
                estimated=billed.estimated,
                save_tokens=save,
                save_usd=price.cost(save, 0) if price and save else 0.0,
            )
        )
