"""The one definition of every record that crosses between Python and the Lua scripts of contract/lua/.

Records cross as positional msgpack arrays (cmsgpack knows no maps with a stable order, and arrays are
small): their field order is defined here and nowhere else. Python builds them with `Layout.row` and
reads them with `Layout.read` (by name); the Lua scripts get the same layouts as constant tables baked
into their source when they are loaded (`lua_prelude`, prepended by contract/scripts.py):

    local F = {status=1, digest=2, ...}     -- the final record: f[F.summary]
    local H = {status='s', token='tk', ...} -- the job hash: HGET(jk, H.status)

so a script reads `f[F.summary]`, never `f[4]` (tests/test_schema.py refuses a literal index).
A field is only ever appended: records stored by an older version are read with the missing fields nil.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from .checks import FLAGS


@dataclass(frozen=True)
class Layout:
    """A positional record: the Lua table naming its positions, and its field names in order."""

    lua: str
    fields: tuple[str, ...]

    def at(self, name: str) -> int:
        """The 0-based position of `name` (Lua's is one more)."""
        return self.fields.index(name)

    def row(self, **values: Any) -> list[Any]:
        """The positional form, every field given by name (none missing, none unknown)."""
        if values.keys() != set(self.fields):
            given, wanted = set(values), set(self.fields)
            raise TypeError(f"{self.lua}: missing {sorted(wanted - given)}, unknown {sorted(given - wanted)}")
        return [values[name] for name in self.fields]

    def read(self, row: Sequence[Any]) -> dict[str, Any]:
        """Field name -> value of a positional record; fields a shorter (older) record lacks are None."""
        out = dict(zip(self.fields, row, strict=False))
        for name in self.fields[len(row) :]:
            out[name] = None
        return out

    def lua_table(self) -> str:
        return f"local {self.lua} = {{" + ", ".join(f"{n}={i}" for i, n in enumerate(self.fields, 1)) + "}"


@dataclass(frozen=True)
class Fields:
    """The fields of a Redis hash a script keeps: name -> the field's (short) name in Redis."""

    lua: str
    fields: Mapping[str, str]

    def __getattr__(self, name: str) -> str:
        try:
            return self.fields[name]
        except KeyError:
            raise AttributeError(name) from None

    def read(self, raw: Mapping[bytes, Any] | Mapping[str, Any]) -> dict[str, Any]:
        """Name -> value of a hash as HGETALL returns it (bytes keys); fields it lacks are left out."""
        by_field = {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}
        return {name: by_field[f] for name, f in self.fields.items() if f in by_field}

    def lua_table(self) -> str:
        return f"local {self.lua} = {{" + ", ".join(f"{n}='{f}'" for n, f in self.fields.items()) + "}"


# ---- records ------------------------------------------------------------------------------------------

#: a finished job's record, in the batch's `out` hash (contract/record.py Final)
FINAL = Layout(
    "F",
    (
        "status",  # done, failed or cancelled
        "digest",  # the article's digest (contract/record.py digest)
        "origin",  # SOURCE_INDEX:LINE of the input record
        "summary",  # compressed summary text, '' for none
        "error",  # '' for none
        "error_type",  # '' for none
        "model",  # the model that answered, '' for none
        "prompt_tokens",
        "completion_tokens",
        "attempts",  # calls made over all runs
        "cached",  # answered from the result cache (or a twin's call)
        "chunks",  # parts a long article was summarized in (0: whole)
        "unusable",  # paid answers that could not be used
        "finished_ms",
        "cost_usd",  # -1 when some call's price was unknown
        "cache_key",  # the result-cache key of a done answer: a cache pointer is trusted only if it matches
        "flags",  # the checks' flags of a done answer, a bitmask of contract/checks.py FLAGS (FB below)
        "copied",  # the checks' copied score, whole percent; -1: not checked
    ),
)

#: an empty final record's values (Lua's pack_final fills a field not given with it, as FE)
FINAL_EMPTY: dict[str, Any] = (
    dict.fromkeys(FINAL.fields, "")
    | dict.fromkeys(("prompt_tokens", "completion_tokens", "attempts", "chunks", "unusable", "finished_ms"), 0)
    | {"cached": False, "cost_usd": -1.0, "flags": 0, "copied": -1}
)

#: the checks' flags by bit (contract/checks.py FLAGS): flag FB[name] is bit FB[name] - 1 of FINAL's `flags`
FLAG_BITS = Layout("FB", FLAGS)

#: an unfinished job's article, at its text key (contract/record.py Article)
ARTICLE = Layout("AR", ("digest", "origin", "text"))

#: one job of claim.lua's reply; a job not taken carries only id and why
CLAIMED = Layout(
    "C",
    (
        "id",
        "why",  # claimed, or why not: done, failed, cancelled, cached, waiting, packing, busy, early, paused, missing
        "article",  # the packed Article
        "attempts",
        "unusable",
        "deferrals",
        "first_failure_ms",  # Redis time of its first failure, 0 for none
        "prompt_tokens",
        "completion_tokens",
        "partials",  # flat field/value list of the part summaries earlier runs stored
        "cache_key",  # '' for none
        "cost_usd",  # what earlier runs cost, -1 when a price was unknown
    ),
)

#: claim.lua's reply
CLAIM_REPLY = Layout("CR", ("state", "now_ms", "jobs"))

#: one op of settle.lua (contract/ops.py builds them): `extra` is the kind's own record below
OP = Layout(
    "O",
    (
        "kind",  # done, fail, defer, part, park, cancel, repack, spend
        "batch",
        "id",  # '' for a pack's spend op
        "token",  # the run's token (batch mode: the pack id)
        "attempts",  # calls made since the last op of the run
        "unusable",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",  # -1 when a call's price was unknown
        "extra",
        "cache_key",  # the result-cache key a done answer is stored under ('' for none)
        "gen",  # the batch generation the run was made for ('' : batch mode, no check)
    ),
)

#: the extra of each op kind (done's is the packed Final; park's and cancel's are '')
FAIL_EXTRA = Layout("OF", ("record", "halt", "signature"))
DEFER_EXTRA = Layout("OD", ("delay_ms", "error_type", "error", "counts_as_failure"))
PART_EXTRA = Layout("OP", ("key", "summary"))
REPACK_EXTRA = Layout("OR", ("online", "error_type", "error"))
SPEND_EXTRA = Layout(
    "OS", ("held_usd", "held_tokens", "spent_usd", "spent_tokens", "estimated", "save_tokens", "save_usd")
)

#: one job of create.lua's chunk: the packed Article ('' for an invalid record), its metadata JSON, and
#: the packed failed Final of an invalid record ('' for a valid one)
NEW_JOB = Layout("NJ", ("id", "article", "metadata", "final"))

#: create.lua's answer for each job of its chunk: 1 when it was created, else 0 and the digest and origin
#: of the job of that id the batch has already
CREATED = Layout("CJ", ("created", "digest", "origin"))

#: one job of renew.lua's list
HELD = Layout("HD", ("batch", "id", "token", "cache_key"))

# ---- script replies -------------------------------------------------------------------------------
# Replies are not stored: their shape may change freely, so long as Lua builds them with `record(X, {...})`
# and Python reads them with `X.read(reply)` (tests/test_schema.py refuses a bare `return {a, b}`).

#: one message to publish (_lib.lua enqueue_messages): its priority step and member (`batch\x1fjob\x1f...`)
MESSAGE = Layout("MG", ("step", "member"))

#: settle.lua: per op 1 (applied) or 0, and the messages to publish (twins queued again)
SETTLE_REPLY = Layout("SR", ("applied", "messages"))
#: reap.lua: the messages to publish, and how many jobs came back by lapsed lease, due retry, lost message
REAP_REPLY = Layout("RP", ("messages", "reclaimed", "due", "republished"))
#: init_batch.lua: 1 when it made the batch, the spec it has, the source's index, the batch generation
INIT_REPLY = Layout("IB", ("created", "spec", "index", "gen"))
#: send.lua: go, wait, paused, cancelled, halted, lost or gone; the halt message, pause reason or 'held'
SEND_REPLY = Layout("SD", ("verdict", "detail"))
#: control.lua: the batch's state and the reason it is paused ('' for none)
CONTROL_REPLY = Layout("CT", ("state", "reason"))
#: pack_due.lua: batch ids to pack now, pack ids to move on
PACK_DUE_REPLY = Layout("PD", ("batches", "packs"))
#: pack_take.lua: ok, none, full, paused, busy or gone; the messages of the jobs sent online
PACK_TAKE_REPLY = Layout("PT", ("verdict", "messages"))
#: admit.lua: 1 when let in (and nothing else), else 0, the backlog counted and the place in line (0 next)
ADMIT_REPLY = Layout("AD", ("admitted", "backlog", "place"))
#: create.lua: a CREATED per job of the chunk, and the messages to publish
CREATE_REPLY = Layout("CE", ("results", "messages"))
#: retry.lua and unpark.lua: the messages to publish and how many jobs were queued again
REQUEUE_REPLY = Layout("RQ", ("messages", "count"))
#: rate_acquire.lua: how long to wait for the slot booked, and the slot (Redis ms)
RATE_SLOT = Layout("RS", ("wait_ms", "slot_ms"))
#: rate_limits.lua: the strictest limits of the fleet's live workers (0: none)
RATE_LIMITS_REPLY = Layout("RL", ("rpm", "tpm"))

REPLIES = (MESSAGE, SETTLE_REPLY, REAP_REPLY, INIT_REPLY, SEND_REPLY, CONTROL_REPLY, PACK_DUE_REPLY, PACK_TAKE_REPLY,
           ADMIT_REPLY, CREATE_REPLY, REQUEUE_REPLY, RATE_SLOT, RATE_LIMITS_REPLY)  # fmt: skip

RECORDS = (FINAL, ARTICLE, CLAIMED, CLAIM_REPLY, OP, FAIL_EXTRA, DEFER_EXTRA, PART_EXTRA, REPACK_EXTRA, SPEND_EXTRA,
           NEW_JOB, CREATED, HELD, FLAG_BITS, *REPLIES)  # fmt: skip

# ---- hashes -------------------------------------------------------------------------------------------

#: an unfinished job's hash (deleted when it is final); fields are short, there are millions of jobs
JOB = Fields(
    "H",
    {
        "status": "s",  # queued, running, deferred, parked, waiting, packing, packed (no hash: queued)
        "token": "tk",  # the run (or pack, batch mode) holding it
        "lease": "l",  # Redis ms its run's lease lapses at
        "attempts": "a",  # calls made over all runs
        "unusable": "x",  # paid answers that could not be used
        "deferrals": "d",  # times it was deferred for a transient failure
        "first_failure": "f",  # Redis ms of its first counted failure (the retry horizon starts there)
        "prompt_tokens": "pt",
        "completion_tokens": "ct",
        "cost": "c",  # USD of its calls so far, -1 once a price was unknown
        "error_type": "e",  # of its last deferral or repack
        "error": "em",  # message of its last deferral or repack (200 characters)
        "pack_tries": "bx",  # batch mode: packs its line failed in
        "flight": "fk",  # the cache key of the flight it leads or waits for
        "dead_runs": "dr",  # space-separated tokens of runs it lost with calls in flight (estimated holds)
        "online": "online",  # '1': batch mode gave up packing it, it runs online
    },
)

#: a batch's hash
BATCH = Fields(
    "B",
    {
        "spec": "spec",  # the BatchSpec JSON
        "step": "step",  # its kombu priority step
        "ttl": "ttl",  # seconds results are kept once it is over
        "state": "state",  # running, paused, cancelled, halted
        "reason": "reason",  # why it is paused: user, budget, ...
        "halt": "halt",  # the provider error that halted it
        "created": "created",  # Redis ms
        "finished": "finished",  # Redis ms it was over (its keys then expire)
        "submitting": "submitting",  # Redis ms a submit's lease on it lapses at
        "gen": "gen",  # its generation: a batch made again under its id is another one
        "rev": "rev",  # the spec's revision (respec)
        "total": "total",  # public counters
        "queued": "queued",
        "running": "running",
        "done": "done",
        "failed": "failed",
        "cancelled": "cancelled",
        "cached": "cached",  # jobs answered from the cache
        "prompt_tokens": "prompt_tokens",  # billed over all jobs
        "completion_tokens": "completion_tokens",
        "calls": "calls",
        "unusable": "unusable",
        "cost_usd": "cost_usd",
        "budget_usd": "budget_usd",  # caps ('' or absent: none)
        "budget_tokens": "budget_tokens",
        "spent_usd": "spent_usd",  # what counts against the budget
        "spent_tokens": "spent_tokens",
        "held_usd": "held_usd",  # worst cases of calls in flight
        "held_tokens": "held_tokens",
        "est_usd": "est_usd",  # spent at the bound for runs that died with calls in flight
        "est_tokens": "est_tokens",
        "same_error": "fsig",  # signature of the first failures, while they are all alike
        "same_errors": "fsig_n",  # how many failed with it
        "flagged": "flagged",  # done jobs some check flagged (contract/checks.py)
        **{f"flag_{name}": f"k_{name}" for name in FLAGS},  # done jobs each check flagged
    },
)

#: a pack's journal (batch mode, worker/batchmode/journal.py): pack_take.lua writes the first fields, the
#: worker's steps record the rest through pack_state.lua; a pack in `done` is logged as JSON of them all
PACK = Fields(
    "PK",
    {
        "batch": "batch",
        "gen": "gen",  # the batch generation its lines were built for
        "state": "state",  # new, uploaded, creating, created, fetching, done (journal.py)
        "created": "created",  # Redis ms
        "jobs": "jobs",  # how many jobs it holds (leaders and twins)
        "scope": "scope",  # the (endpoint, model) its enqueued tokens count in
        "enq": "enq",  # its enqueued tokens, until they are given back (release)
        "held_usd": "held_usd",  # its worst case held against the batch's budget
        "held_tokens": "held_tokens",
        "lease_ms": "lease_ms",  # how long a worker's step on it may take
        "lines": "lines",  # requests in its input file
        "bytes": "bytes",  # the input file's size
        "endpoint": "endpoint",  # the provider endpoint it was made for
        "file_id": "file_id",  # the uploaded input file
        "create_tried": "create_tried",  # '1' once a create was attempted (look it up before another)
        "provider_batch": "provider_batch",  # the provider's batch id
        "status": "status",  # the provider batch's status (or why it closed without one)
        "counts": "counts",  # JSON of its request counts
        "errors": "errors",  # JSON list of {code, message}
        "error": "error",  # the error that failed it
        "failures": "failures",  # transient failures of the current step
        "failing_since": "failing_since",
        "output_file": "output_file",
        "error_file": "error_file",
    },
)

#: the rate limiter's shared state (rate_acquire.lua): counts in the window and the buckets' arrival times
RATE = Fields(
    "RT",
    {
        "requests": "n",  # requests in the log's window
        "tokens": "t",  # tokens in the log's window
        "last": "last",  # the last slot booked (slots are booked in order)
        "request_tat": "rq",  # the request bucket's theoretical arrival time (GCRA)
        "token_tat": "tk",  # the token bucket's
        "seq": "seq",  # a counter making given-back slots unique (rate_release.lua)
    },
)

#: the reaper's own clock and cursor (reap.lua)
REAPER = Fields(
    "RH",
    {
        "last": "last",  # Redis ms of the last reap
        "resumed": "resumed",  # Redis ms reaping resumed after a gap (leases are trusted a lease later)
        "batch_cursor": "bcursor",  # where its walk of the batches index stopped
    },
)

#: the fleet's counters the reaper keeps (reap.lua)
STATS = Fields("ST", {"reclaimed": "reclaimed", "republished": "republished"})

HASHES = (JOB, BATCH, PACK, RATE, REAPER, STATS)


@cache
def lua_prelude() -> str:
    """The layouts as Lua constants, prepended to every script at load (never decoded per call)."""
    lines = ["-- generated from contract/schema.py: record positions and hash fields"]
    lines += [r.lua_table() for r in RECORDS]
    lines.append("local FE = {" + ", ".join(f"{n}={_lua_value(v)}" for n, v in FINAL_EMPTY.items()) + "}")
    lines += [h.lua_table() for h in HASHES]
    return "\n".join(lines) + "\n"


def _lua_value(value: Any) -> str:
    """A constant as Lua source: Python's repr of a number or a plain string is Lua's too."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)
