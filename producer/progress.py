"""What the CLI shows on a terminal: rich's progress bar (rate, ETA) on stderr and the status table.

When stderr is not a terminal (logs, CI) the bar becomes a plain line every few seconds.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # rich costs its import time: only a terminal pays for it
    from rich.progress import Progress
    from rich.table import Table

#: seconds between plain progress lines when stderr is not a terminal
PLAIN_EVERY = 5.0


class ProgressBar:
    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.label, self.total = label, max(total, 0)
        self.stream = stream or sys.stderr
        self.done, self.detail = 0, ""
        self._last_detail = ""
        self.started = time.monotonic()
        self._last_line = 0.0
        self._bar: Progress | None = None
        if self.stream.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]:>7.1f}/s"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[detail]}"),
                console=Console(file=self.stream),
                transient=False,
            )
            self._task = self._bar.add_task(label, total=self.total, rate=0.0, detail="")
            self._bar.start()

    def advance(self, n: int) -> None:
        self.update(self.done + n, self.detail)

    def note(self, detail: str) -> None:
        """A word on the progress line (e.g. why it is waiting)."""
        self.update(self.done, detail)

    def update(self, done: int, detail: str = "") -> None:
        self.done, self.detail = done, detail
        rate = done / max(time.monotonic() - self.started, 1e-9)
        if self._bar is not None:
            self._bar.update(self._task, completed=done, rate=rate, detail=detail)
            return
        now = time.monotonic()
        changed, self._last_detail = detail != self._last_detail, detail
        if now - self._last_line >= PLAIN_EVERY or done >= self.total or (changed and detail):
            self._last_line = now
            eta = (self.total - done) / rate if rate > 0 else 0.0
            self.stream.write(
                f"{self.label}: {done}/{self.total} {rate:.1f}/s eta {eta:.0f}s {detail}\n".rstrip() + "\n"
            )
            self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def projection(status: dict[str, Any], created_ms: int, now_ms: int) -> dict[str, Any]:
    """While a batch runs: its rate so far (jobs finished a second since it was created), the ETA that rate
    gives for the jobs left, and the whole batch's projected cost (cost so far / done x total). None where
    nothing has finished yet (or no price is known)."""
    finished = status["done"] + status["failed"] + status["cancelled"]
    left = max(0, status["total"] - finished)
    elapsed = max(0.0, (now_ms - created_ms) / 1000) if created_ms else 0.0
    rate = finished / elapsed if finished and elapsed > 0 else None
    eta = 0.0 if left == 0 else (left / rate if rate else None)
    cost = status.get("cost_usd")
    projected = cost / status["done"] * status["total"] if cost is not None and status["done"] else None
    return {
        "rate_per_s": None if rate is None else round(rate, 3),
        "eta_s": None if eta is None else round(eta, 1),
        "projected_cost_usd": None if projected is None else round(projected, 6),
    }


def projection_line(p: dict[str, Any]) -> str:
    """The projection in a few words, for the status table and the wait's progress line."""
    eta = "unknown (nothing finished yet)" if p["eta_s"] is None else f"{p['eta_s']:.0f}s"
    rate = "" if p["rate_per_s"] is None else f" at {p['rate_per_s']:.1f} jobs/s so far"
    cost = "unknown" if p["projected_cost_usd"] is None else f"${p['projected_cost_usd']:.4f}"
    return f"batch eta {eta}{rate}, projected cost {cost}"


def counts_line(s: dict[str, Any]) -> str:
    """A batch's counts in one line, the names `status` and `results` use."""
    return (
        f"{s['total']} total, {s['queued']} queued, {s['running']} running, "
        f"{s['done']} done, {s['failed']} failed, {s['cancelled']} cancelled"
    )


def status_table(status: dict[str, Any]) -> Table:
    """`summarize status` for people: one row per figure."""
    from rich.table import Table

    table = Table(title=f"batch {status['batch']}", show_header=False, title_justify="left", box=None)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(no_wrap=True)
    table.add_row("state", str(status["state"]) + (f" ({status['reason']})" if status.get("reason") else ""))
    table.add_row(
        "jobs", ", ".join(f"{status[k]} {k}" for k in ("total", "queued", "running", "done", "failed", "cancelled"))
    )
    table.add_row("model", str(status["model"]))
    spec = status.get("spec") or {}
    for name in ("prompt", "json_schema", "temperature", "fallback_model", "priority"):
        if spec.get(name) not in (None, "", 0, 0.0, "normal"):
            table.add_row(name.replace("_", " "), _short(spec[name]))
    table.add_row(
        "tokens",
        f"{status['prompt_tokens']} prompt + {status['completion_tokens']} completion = {status['total_tokens']}",
    )
    table.add_row("LLM calls", f"{status['calls']} ({status['unusable']} billed but unusable)")
    table.add_row("cached", f"{status.get('cached', 0)} job(s) answered from the cache, no call")
    cost = status.get("cost_usd")
    table.add_row("cost", "unknown (no price for the model)" if cost is None else f"${cost:.4f}")
    p = status.get("progress")
    if p and status["state"] not in ("finished", "cancelled"):
        table.add_row(
            "ETA",
            "unknown (nothing finished yet)"
            if p["eta_s"] is None
            else f"{p['eta_s']:.0f}s at {p['rate_per_s']:.1f} jobs/s so far"
            if p["rate_per_s"]
            else "0s",
        )
        table.add_row(
            "projected cost",
            "unknown (nothing done yet, or no price)"
            if p["projected_cost_usd"] is None
            else f"${p['projected_cost_usd']:.4f} for all {status['total']} jobs (cost so far / done x total)",
        )
    if status.get("budget_usd") is not None or status.get("budget_tokens") is not None:
        caps = [
            f"${status['spent_usd']:.4f} of ${status['budget_usd']:.4f}"
            if status.get("budget_usd") is not None
            else "",
            f"{status['spent_tokens']} of {status['budget_tokens']} tokens"
            if status.get("budget_tokens") is not None
            else "",
        ]
        table.add_row("budget", ", ".join(c for c in caps if c))
        table.add_row(
            "held",
            f"{status.get('held_tokens', 0)} tokens / ${status.get('held_usd', 0.0):.4f} by calls in flight; "
            f"{status.get('estimated_tokens', 0)} tokens / ${status.get('estimated_usd', 0.0):.4f} of the spend "
            "estimated at its bound (calls of runs that died in flight)",
        )
    return table


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= 100 else text[:97] + "..."


def status_notes(status: dict[str, Any]) -> list[str]:
    """Lines under the table, whole (scripts grep them): provider batches, a halt and what to do, failed jobs."""
    lines = []
    for p in status.get("packs", []):
        counts = p.get("request_counts") or {}
        lines.append(
            f"  provider batch {p['provider_batch'] or '(not created yet)'}: {p['status'] or p['state']}, "
            f"{p['lines']} requests, {counts.get('completed', 0)} completed, {counts.get('failed', 0)} failed"
            + (f"; errors: {_short(p['errors'])}" if p.get("errors") else "")
        )
    if status.get("halted"):
        lines += [
            f"HALTED: {status['halted']}",
            f"  fix the cause, then: summarize retry {status['batch']}"
            " (with --model, --fallback-model, --price-in/--price-out or a new budget if the cause was one of them)",
        ]
    lines += [f"  failed {f['id']}: {f['error_type']}: {f['error']}" for f in status.get("failed_jobs", [])]
    return lines


def print_table(table: Table, stream: TextIO | None = None) -> None:
    from rich.console import Console

    out = stream or sys.stdout
    # Piped, a line is never wrapped: scripts read it whole.
    Console(file=out, width=None if out.isatty() else 10_000).print(table)
