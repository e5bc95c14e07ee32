"""Every Redis key the project touches is named here and nowhere else.

Lua scripts never spell a key: the caller declares every key a script touches in its KEYS (`Declared`,
built from the same methods as the Python side uses), and ARGV[1] says which KEYS entry is which. Every key
carries the hash tag `{prefix}`, so all keys of a deployment live in one Redis Cluster slot (see
docs/scale.md: what sharding by batch would take). The broker's keys (kombu's) are not the store's and carry
no tag: kombu has no Cluster transport, so the broker is a plain Redis (SUMMARIZE_BROKER_URL).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

#: \Z, not $: `$` also matches before a trailing newline, which would let "b1\n" through
BATCH_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
SEP = ":"
#: joins batch id and job ids in sorted-set members; job ids can't hold control characters
MEMBER_SEP = "\x1f"
#: kombu's Redis transport keeps priority p of a queue in the list `queue + KOMBU_PRI_SEP + step`
KOMBU_PRI_SEP = "\x06\x16"
#: kombu's priority steps; BRPOP looks at step 0 first, so a lower step is served first
PRIORITY_STEPS = (0, 3, 6, 9)
PRIORITIES = {"high": 0, "normal": 3, "low": 6}


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix, so several deployments can share a Redis."""

    prefix: str = "sumz"
    #: the Celery queue's name (without the prefix kombu's global_keyprefix adds)
    queue: str = "summarize"

    @property
    def tag(self) -> str:
        """What every store key starts with: the prefix as a Redis Cluster hash tag (one slot for all)."""
        return "{" + self.prefix + "}"

    # ---- one batch -------------------------------------------------------------------------------

    def batch(self, batch_id: str) -> str:
        """Hash: the batch's spec, state, per-status counters, tokens, cost and budget."""
        return f"{self.tag}:b:{batch_id}"

    def batch_ids(self, batch_id: str) -> str:
        """List: job ids in input order; an index into it is a stable cursor (it only grows)."""
        return self.batch(batch_id) + BATCH_PARTS["ids"]

    def batch_out(self, batch_id: str) -> str:
        """Hash: job id -> final record (done, failed, cancelled), packed by contract/record.py."""
        return self.batch(batch_id) + BATCH_PARTS["out"]

    def batch_meta(self, batch_id: str) -> str:
        """Hash: job id -> the record's metadata as JSON (only records that have some)."""
        return self.batch(batch_id) + BATCH_PARTS["meta"]

    def dead(self, batch_id: str) -> str:
        """Set: ids of the batch's jobs that failed for good (the dead-letter set)."""
        return self.batch(batch_id) + BATCH_PARTS["dead"]

    def events(self, batch_id: str) -> str:
        """Stream: one entry per job as it finishes (`results --follow` reads it)."""
        return self.batch(batch_id) + BATCH_PARTS["events"]

    def sources(self, batch_id: str) -> str:
        """List: input sources (file names) of the batch; records refer to them by index."""
        return self.batch(batch_id) + BATCH_PARTS["sources"]

    def parked(self, batch_id: str) -> str:
        """Set: ids of jobs parked while the batch is paused; resume republishes them."""
        return self.batch(batch_id) + BATCH_PARTS["parked"]

    def packing(self, batch_id: str) -> str:
        """Sorted set (batch mode): ids of the batch's jobs waiting to go into a provider batch, by arrival."""
        return self.batch(batch_id) + BATCH_PARTS["packing"]

    def packs(self, batch_id: str) -> str:
        """Set (batch mode): ids of the batch's open packs (its provider batches not settled yet)."""
        return self.batch(batch_id) + BATCH_PARTS["packs"]

    def packlog(self, batch_id: str) -> str:
        """Hash (batch mode): pack id -> JSON of a settled pack's journal (what `status` shows of it)."""
        return self.batch(batch_id) + BATCH_PARTS["packlog"]

    def holds(self, batch_id: str) -> str:
        """Hash: `job\x1ftoken` -> `tokens:usd` each live run holds against the budget for its calls in
        flight, and `~job\x1ftoken` -> what was counted as estimated spend for a run that lost its job."""
        return self.batch(batch_id) + BATCH_PARTS["holds"]

    def kept(self, batch_id: str) -> str:
        """Hash: job id -> the packed article of a failed job, kept for `summarize retry` (it expires
        with the batch, unlike a text key of its own), or of a done one the checks flagged (`retry --flagged`)."""
        return self.batch(batch_id) + BATCH_PARTS["kept"]

    def batch_keys(self, batch_id: str) -> list[str]:
        """Every per-batch key (not the per-job ones): what expires together once the batch is over."""
        base = self.batch(batch_id)
        return [base] + [base + part for part in BATCH_PARTS.values()]

    # ---- one job (only while it is unfinished, and a failed one's text for `retry`) --------------

    def job(self, batch_id: str, job_id: str) -> str:
        """Hash of small fields: status, attempts, lease, token, deferrals... A job just created and
        never taken has none: its text key alone says it is queued."""
        return f"{self.tag}:j:{batch_id}{SEP}{job_id}"

    def partials(self, batch_id: str, job_id: str) -> str:
        """Hash: summaries of a long article's parts, kept until the job is final (a crash doesn't pay twice)."""
        return f"{self.tag}:p:{batch_id}{SEP}{job_id}"

    def text(self, batch_id: str, job_id: str) -> str:
        """String: the packed article (digest, origin, compressed text); dropped once the job is done."""
        return f"{self.tag}:t:{batch_id}{SEP}{job_id}"

    # ---- the whole deployment --------------------------------------------------------------------

    @property
    def due(self) -> str:
        """Sorted set of `batch\\x1fjob` for running and deferred jobs, scored by lease end or retry time (ms)."""
        return f"{self.tag}:due"

    def orphans(self, step: int) -> str:
        """Sorted set of messages (`batch\\x1fjob\\x1fjob...`) of one priority step, scored by when they were
        queued (ms); a message leaves it when a worker claims it. One the queue has passed is lost."""
        return f"{self.tag}:orphans:{step}"

    @property
    def watermark(self) -> str:
        """Hash: priority step -> queued time (ms) of the newest message claimed at that step."""
        return f"{self.tag}:hw"

    @property
    def backlog(self) -> str:
        """Integer: unfinished jobs of every batch (what SUMMARIZE_MAX_QUEUED bounds)."""
        return f"{self.tag}:backlog"

    @property
    def admission(self) -> str:
        """Sorted set: submits waiting for room under SUMMARIZE_MAX_QUEUED, by priority then arrival (fair
        turns: each waits again after each chunk it is let in for)."""
        return f"{self.tag}:admit"

    @property
    def admission_seen(self) -> str:
        """Hash: waiting submit -> when it last asked (one not seen for a while has gone)."""
        return f"{self.tag}:admit:seen"

    @property
    def admitted(self) -> str:
        """Hash: submit -> `jobs:until_ms`, room let in for a chunk not stored yet (gone once it is)."""
        return f"{self.tag}:admitted"

    @property
    def generation(self) -> str:
        """Integer: the last batch generation handed out; each batch made (again) under an id gets the next
        one, stored in its hash (`gen`) and carried by every op and cached copy made for it."""
        return f"{self.tag}:gen"

    @property
    def submits(self) -> str:
        """Sorted set: batches a submit is still storing chunks into, scored by the end of its lease (ms);
        the reaper finishes the batches of submits whose lease lapsed."""
        return f"{self.tag}:submits"

    @property
    def batches(self) -> str:
        """Sorted set of batch ids, scored by creation time (ms)."""
        return f"{self.tag}:batches"

    def cache(self, week: int) -> str:
        """Hash: result-cache key -> `batch\x1fjob` of a done job that answered it. One hash a week (Redis
        time), expiring whole, so the cache needs no TTL per entry; a lookup reads the weeks in its TTL."""
        return f"{self.tag}:cache:{week}"

    def flight(self, cache_key: str) -> str:
        """String with a TTL (the leader's lease): the job making the one call for an article being summarized."""
        return f"{self.tag}:f:{cache_key}"

    def waiters(self, cache_key: str) -> str:
        """Set: `batch\x1fjob` of identical articles waiting for the call in flight (they hold no slot)."""
        return f"{self.tag}:w:{cache_key}"

    def pack(self, pack_id: str) -> str:
        """Hash (batch mode): one provider batch's journal: state, file and batch ids, counts, tokens."""
        return f"{self.tag}:pk:{pack_id}"

    def pack_jobs(self, pack_id: str) -> str:
        """List (batch mode): the job ids a pack sent (custom_id = job id)."""
        return self.pack(pack_id) + PACK_PARTS["jobs"]

    def pack_twins(self, pack_id: str) -> str:
        """Hash (batch mode): job id -> the job id whose line answers it too (identical articles, one line)."""
        return self.pack(pack_id) + PACK_PARTS["twins"]

    @property
    def packing_batches(self) -> str:
        """Sorted set (batch mode): batches with jobs waiting to be packed, by when to pack them next."""
        return f"{self.tag}:packing"

    @property
    def packs_due(self) -> str:
        """Sorted set (batch mode): open packs, by when a worker should next move them (poll, or resume)."""
        return f"{self.tag}:packs:due"

    @property
    def packs_tokens(self) -> str:
        """Integer (batch mode): tokens (prompt + max_tokens) of provider batches not finished yet."""
        return f"{self.tag}:packs:tokens"

    def enqueued(self, scope: str) -> str:
        """Integer (batch mode): enqueued tokens (prompt bound + max_tokens) of the open packs of one
        (endpoint, model), what the provider's enqueued-token limit counts."""
        return f"{self.tag}:enq:{scope}"

    @property
    def reaper_lock(self) -> str:
        """String with a TTL: held by the one worker that reaps this round."""
        return f"{self.tag}:reaper-lock"

    @property
    def reaper_clock(self) -> str:
        """Hash: `last` (Redis time of the last reap) and `resumed` (when reaping resumed after a gap)."""
        return f"{self.tag}:reaper"

    @property
    def rate(self) -> str:
        """Hash: the shared limiter's sums over its log (`n` requests, `t` tokens), its last booked slot
        (`last`), the two token buckets' theoretical arrival times (`rq` requests, `tk` tokens; Redis ms)
        and `seq`, the counter naming given-back slots."""
        return f"{self.tag}:rate"

    @property
    def rate_holes(self) -> str:
        """Sorted set of `slot_ms:tokens:seq` by slot: booked slots given back unused (rate_release.lua),
        for the next request to take while they are fresh."""
        return f"{self.tag}:rate:holes"

    @property
    def rate_log(self) -> str:
        """List of `slot_ms:tokens:requests`, oldest first: what was booked in the last window."""
        return f"{self.tag}:rate:log"

    @property
    def cooldown(self) -> str:
        """String with a TTL: set when the provider answered 429; every worker waits it out."""
        return f"{self.tag}:cooldown"

    @property
    def limits(self) -> str:
        """Hash: worker -> `rpm:tpm:until_ms`, the limits each live worker was started with; every
        worker obeys the strictest, so one started without limits can't ignore the shared schedule."""
        return f"{self.tag}:limits"

    @property
    def stats(self) -> str:
        """Hash: lifetime counters (reclaimed, republished...) for operators and tests."""
        return f"{self.tag}:stats"

    def broker_queue(self, step: int = 0) -> str:
        """List where kombu keeps the queue's messages of one priority step (its global_keyprefix included)."""
        name = f"{self.kombu_prefix}{self.queue}"
        return name if step == 0 else f"{name}{KOMBU_PRI_SEP}{step}"

    @property
    def kombu_prefix(self) -> str:
        """kombu's global_keyprefix: every key and channel of the broker lives under our prefix too."""
        return f"{self.prefix}{SEP}"

    @staticmethod
    def member(batch_id: str, *job_ids: str) -> str:
        return MEMBER_SEP.join((batch_id, *job_ids))

    @staticmethod
    def split_member(member: str) -> tuple[str, list[str]]:
        batch_id, *job_ids = member.split(MEMBER_SEP)
        return batch_id, job_ids

    @cached_property
    def layout(self) -> dict[str, Any]:
        """What Lua scripts need besides KEYS (see contract/lua/_lib.lua): separators, where each part of a
        declared batch, job or pack sits in KEYS, and (`ptr`) the prefixes of the keys a script reaches only
        by following a pointer it read (another batch's record, a twin): see docs/scale.md."""
        return {
            "sep": SEP,
            "msep": MEMBER_SEP,
            "parts": {name: i + 1 for i, name in enumerate(BATCH_PARTS)},
            "pack_parts": {name: i + 1 for i, name in enumerate(PACK_PARTS)},
            "ptr": {
                "b": self.batch(""),
                "parts": dict(BATCH_PARTS),
                "j": self.job("", "")[: -len(SEP)],
                "t": self.text("", "")[: -len(SEP)],
                "p": self.partials("", "")[: -len(SEP)],
                "flight": self.flight(""),
                "waiters": self.waiters(""),
                "pack": self.pack(""),
                "pack_parts": dict(PACK_PARTS),
                "enq": self.enqueued(""),
                "cache": self.cache(0)[:-1],
            },
        }

    def declare(self) -> Declared:
        return Declared(self)


#: the deployment-wide keys a script may name (its `L.<name>`), by the Keys property that names them
GLOBALS = {
    "due": "due",
    "hw": "watermark",
    "backlog": "backlog",
    "admission": "admission",
    "admitted": "admitted",
    "admission_seen": "admission_seen",
    "packing": "packing_batches",
    "packs_due": "packs_due",
    "packs_tokens": "packs_tokens",
    "batches": "batches",
    "gen": "generation",
    "submits": "submits",
    "reaper": "reaper_clock",
    "stats": "stats",
    "rate": "rate",
    "rate_log": "rate_log",
    "rate_holes": "rate_holes",
    "cooldown": "cooldown",
    "limits": "limits",
}

#: how many weeks of the result cache a lookup reads (contract/lua/_lib.lua cache_lookup): the weeks of
#: the TTL, one more on each side for a Redis clock a little off the caller's
WEEK_S = 7 * 24 * 3600


class Declared:
    """The KEYS of one script call and the index (ARGV[1]'s `i`) saying which entry is which.

    A batch declares its hash and every part (BATCH_PARTS order), a job its hash, text and partials, a pack
    its journal and parts: a script finds them by offset, so the index stays small."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self.names: list[str] = []
        self.index: dict[str, dict[str, int]] = {
            k: {} for k in ("g", "b", "j", "pk", "cache", "orphans", "enq", "flight", "waiters")
        }

    def _add(self, kind: str, ident: str, *names: str) -> None:
        if ident not in self.index[kind]:
            self.index[kind][ident] = len(self.names) + 1
            self.names.extend(names)

    def glob(self, name: str) -> None:
        if name not in self.index["g"]:
            self._add("g", name, getattr(self.keys, GLOBALS[name]))

    def batch(self, batch_id: str) -> None:
        # a message names one batch and up to jobs_per_message jobs of it: its 13 names are built once a call
        if batch_id not in self.index["b"]:
            self._add("b", batch_id, *self.keys.batch_keys(batch_id))

    def job(self, batch_id: str, job_id: str) -> None:
        self.batch(batch_id)
        member = batch_id + MEMBER_SEP + job_id
        if member not in self.index["j"]:
            k = self.keys
            self._add("j", member, k.job(batch_id, job_id), k.text(batch_id, job_id), k.partials(batch_id, job_id))

    def pack(self, pack_id: str) -> None:
        k = self.keys
        self._add("pk", pack_id, k.pack(pack_id), k.pack_jobs(pack_id), k.pack_twins(pack_id))

    def weeks(self, now_s: float, ttl_s: float) -> None:
        week = int(now_s * 1000) // (WEEK_S * 1000)
        back = -(-int(ttl_s) // WEEK_S)  # ceil, as cache_lookup counts
        for w in range(week + 1, week - back - 2, -1):
            self._add("cache", str(w), self.keys.cache(w))

    def orphans(self) -> None:
        for step in PRIORITY_STEPS:
            self._add("orphans", str(step), self.keys.orphans(step))

    def enqueued(self, scope: str) -> None:
        self._add("enq", scope, self.keys.enqueued(scope))

    def flight(self, cache_key: str) -> None:
        self._add("flight", cache_key, self.keys.flight(cache_key))
        self._add("waiters", cache_key, self.keys.waiters(cache_key))


BATCH_PARTS = {
    "ids": ":ids",
    "out": ":out",
    "meta": ":meta",
    "dead": ":dead",
    "events": ":ev",
    "sources": ":src",
    "parked": ":parked",
    "packing": ":packing",
    "packs": ":packs",
    "holds": ":holds",
    "packlog": ":pklog",
    "kept": ":kept",
}

PACK_PARTS = {
    "jobs": ":ids",
    "twins": ":tw",
}
