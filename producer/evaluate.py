"""`summarize eval B --references FILE`: ROUGE against reference summaries, next to the checks' rates.

The references are JSON lines of `id` and `reference`. Each done row with a reference is scored with
ROUGE-1, ROUGE-2 and ROUGE-L (the `rouge-score` package, Porter stemmer on: no NLTK data needed), F1 per
row and their means; beside them, for every done row, the checks' flags (contract/checks.py) as counts
and rates, the mean copied share, and the summaries' lengths in words. `--json` prints it all as one
object; `--html FILE` writes a page with no outside resources (a histogram of the lengths as inline SVG,
the flag counts, the ROUGE means), each figure rounded as in the JSON.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from contract.checks import FLAGS
from contract.errors import ConfigError

ROUGE = ("rouge1", "rouge2", "rougeL")
#: decimals of every rate and score, in the JSON and on the page alike
DIGITS = 4
#: bars of the lengths' histogram
BINS = 10


def read_references(path: str) -> dict[str, str]:
    """id -> reference summary; a bad line is a ConfigError naming the file and line."""
    out: dict[str, str] = {}
    try:
        f = open(path, encoding="utf-8")  # noqa: SIM115 (closed below; the errors name the line)
    except OSError as exc:
        raise ConfigError(f"--references {path}: {exc.strerror or exc}") from None
    with f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as exc:
                raise ConfigError(f"--references {path}, line {n}: not JSON ({exc})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("reference"), str) or "id" not in rec:
                raise ConfigError(f'--references {path}, line {n}: an object with "id" and a "reference" string')
            key = str(rec["id"])
            if key in out:  # as submit refuses a repeated id: which of the two was meant is not ours to guess
                raise ConfigError(f"--references {path}, line {n}: duplicate id {key!r}")
            out[key] = rec["reference"]
    if not out:
        raise ConfigError(f"--references {path}: no references in it")
    return out


def _scorer() -> Any:
    from rouge_score import rouge_scorer  # its import (nltk, numpy) only when there is something to score

    return rouge_scorer.RougeScorer(list(ROUGE), use_stemmer=True)


def evaluate(batch_id: str, rows: Iterable[dict[str, Any]], references: dict[str, str]) -> dict[str, Any]:
    """The report of a batch's result rows (public row dicts) against `references`."""
    scorer = _scorer()
    per_row: list[dict[str, Any]] = []
    done = 0
    flags = dict.fromkeys(FLAGS, 0)
    flagged = 0
    copied: list[float] = []
    lengths: list[int] = []
    seen: set[str] = set()
    for row in rows:
        seen.add(row["id"])
        if row["status"] != "done" or row.get("summary") is None:
            continue
        done += 1
        checks = row.get("checks")
        words = len(row["summary"].split())
        lengths.append(words)
        if checks:
            copied.append(checks["copied"])
            for name in checks["flags"]:
                flags[name] += 1
            flagged += bool(checks["flags"])
        reference = references.get(row["id"])
        if reference is None:
            continue
        score = scorer.score(reference, row["summary"])
        per_row.append(
            {
                "id": row["id"],
                **{name: round(score[name].fmeasure, DIGITS) for name in ROUGE},
                "words": words,
                "flags": checks["flags"] if checks else None,
            }
        )
    scored = len(per_row)
    return {
        "batch": batch_id,
        "done": done,
        "scored": scored,
        "references": len(references),
        "references_without_row": sum(1 for i in references if i not in seen),
        "rouge": {name: _mean([r[name] for r in per_row]) for name in ROUGE},
        "flagged": flagged,
        "flags": flags,
        "flag_rates": {name: round(n / done, DIGITS) if done else None for name, n in flags.items()},
        "flagged_rate": round(flagged / done, DIGITS) if done else None,
        "copied_mean": _mean(copied),
        "lengths": histogram(lengths),
        "rows": per_row,
    }


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), DIGITS) if values else None


def histogram(lengths: list[int], bins: int = BINS) -> dict[str, Any]:
    """The lengths in `bins` equal bars from the shortest to the longest (whole words a bar)."""
    if not lengths:
        return {"mean": None, "min": None, "max": None, "edges": [], "counts": []}
    low, high = min(lengths), max(lengths)
    width = max(1, math.ceil((high - low + 1) / bins))
    edges = [low + i * width for i in range(bins + 1) if low + i * width <= high + width]
    counts = [0] * (len(edges) - 1)
    for n in lengths:
        counts[min((n - low) // width, len(counts) - 1)] += 1
    return {"mean": round(sum(lengths) / len(lengths), 2), "min": low, "max": high, "edges": edges, "counts": counts}


def text_lines(report: dict[str, Any]) -> Iterator[str]:
    """The report as `summarize eval` prints it without --json."""
    yield f"batch {report['batch']}: {report['done']} done, {report['scored']} scored against a reference"
    if report["references_without_row"]:
        yield f"  {report['references_without_row']} reference(s) name no row of the batch"
    for name in ROUGE:
        value = report["rouge"][name]
        yield f"  {name:<7} F1 mean  {'-' if value is None else f'{value:.{DIGITS}f}'}"
    yield f"  flagged  {report['flagged']} of {report['done']}"
    for name in FLAGS:
        rate = report["flag_rates"][name]
        yield f"    {name:<9} {report['flags'][name]:>6}  {'-' if rate is None else f'{rate:.2%}'}"
    copied = report["copied_mean"]
    yield f"  copied   {'-' if copied is None else f'{copied:.{DIGITS}f}'} (mean share of bigrams from the article)"
    lengths = report["lengths"]
    if lengths["counts"]:
        yield f"  words    mean {lengths['mean']}, {lengths['min']} to {lengths['max']}"


def _svg(lengths: dict[str, Any]) -> str:
    counts, edges = lengths["counts"], lengths["edges"]
    if not counts:
        return "<p>no summaries</p>"
    w, h, pad = 480, 200, 30
    bar = (w - 2 * pad) / len(counts)
    top = max(counts) or 1
    parts = [f'<svg id="lengths" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h + 40}" role="img">']
    parts.append("<title>Summary lengths in words</title>")
    for i, n in enumerate(counts):
        bh = (h - pad) * n / top
        x, y = pad + i * bar, h - bh
        label = f"{edges[i]}-{edges[i + 1] - 1} words: {n}"
        parts.append(
            f'<rect class="bar" data-count="{n}" x="{x:.1f}" y="{y:.1f}" width="{bar - 2:.1f}" height="{bh:.1f}" '
            f'fill="#4a78b5"><title>{label}</title></rect>'
        )
        parts.append(f'<text x="{x + bar / 2:.1f}" y="{y - 4:.1f}" font-size="11" text-anchor="middle">{n}</text>')
        parts.append(f'<text x="{x:.1f}" y="{h + 16}" font-size="10">{edges[i]}</text>')
    parts.append(f'<text x="{w - pad:.1f}" y="{h + 16}" font-size="10">{edges[-1]}</text>')
    parts.append(f'<text x="{w / 2:.0f}" y="{h + 34}" font-size="12" text-anchor="middle">words</text></svg>')
    return "".join(parts)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.{DIGITS}f}"


def write_html(report: dict[str, Any], path: str) -> None:
    """A small page viewable in any browser, offline: every figure in an element with its own id."""
    esc = html.escape
    rouge = "".join(f'<tr><th>{name}</th><td id="{name}">{_num(report["rouge"][name])}</td></tr>' for name in ROUGE)
    flags = "".join(
        f'<tr><th>{name}</th><td id="flag-{name}">{report["flags"][name]}</td>'
        f'<td id="rate-{name}">{_num(report["flag_rates"][name])}</td></tr>'
        for name in FLAGS
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>summarize eval {esc(report["batch"])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}th,td{{padding:4px 10px;
border-bottom:1px solid #ddd;text-align:left}}td{{font-variant-numeric:tabular-nums}}</style></head>
<body><h1>Batch <span id="batch">{esc(report["batch"])}</span></h1>
<p><span id="done">{report["done"]}</span> done, <span id="scored">{report["scored"]}</span> scored against a
reference; <span id="flagged">{report["flagged"]}</span> flagged by the checks; mean copied share
<span id="copied">{_num(report["copied_mean"])}</span>.</p>
<h2>ROUGE (F1, mean)</h2><table>{rouge}</table>
<h2>Flags</h2><table><tr><th>check</th><th>answers</th><th>rate</th></tr>{flags}</table>
<h2>Summary lengths</h2><p>mean <span id="words-mean">{report["lengths"]["mean"]}</span> words</p>
{_svg(report["lengths"])}
</body></html>
"""
    try:
        Path(path).write_text(page, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--html {path}: {exc.strerror or exc}") from None
