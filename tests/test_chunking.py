"""Splitting long articles: linear in the text, and off the worker's event loop (issue 18, finding 5a).

Before: `_words` counted a growing run of words once per word (quadratic in a part's size: 5.5 s of CPU
per MB of unpunctuated text), on the event loop, so an 8 MB article stopped every other job of its
process for ~45 s, long enough for their leases to lapse and another worker to run them again.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.stack import Stack
from tests.conftest import isolated_group
from tests.faultserver import FaultServer
from tests.helpers import articles, write_jsonl
from worker import chunking

MIB = 1024 * 1024


class Counting:
    """A 4-characters-a-token count (the worker's estimate) that records how much text it was handed."""

    def __init__(self) -> None:
        self.calls = 0
        self.chars = 0

    def __call__(self, text: str) -> int:
        self.calls += 1
        self.chars += len(text)
        return -(-len(text) // 4) + 4


def unpunctuated(n_bytes: int, seed: int = 7) -> str:
    """Words and single spaces, no sentence end and no paragraph: the case that was quadratic."""
    rng = random.Random(seed)
    vocab = ["".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(2, 9))) for _ in range(4000)]
    out: list[str] = []
    size = 0
    while size < n_bytes:
        word = rng.choice(vocab)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)[:n_bytes].rstrip()


def test_text_handed_to_the_counter_grows_linearly_with_the_article() -> None:
    per_char = []
    for size in (MIB // 4, 2 * MIB):
        count = Counting()
        parts = chunking.split(unpunctuated(size), 7000, count, 200)
        assert len(parts) > 5 and all(count(p) <= 7000 for p in parts)
        per_char.append(count.chars / size)
    # A bounded number of looks at each character, whatever the size (the old split looked ~8,000 times
    # at each one of a quarter of a megabyte, and four times as often at 1 MB).
    assert per_char[0] < 40 and per_char[1] < 40, per_char
    assert per_char[1] < per_char[0] * 1.5, per_char


def test_runs_of_words_keep_every_word_in_order_and_share_their_last_words() -> None:
    words = [f"w{i}" for i in range(20_000)]
    count = Counting()
    parts = chunking.split(" \n ".join(words), 300, count, overlap_tokens=30)
    assert all(count(p) <= 300 for p in parts)
    seen: list[str] = []
    for part in parts:
        got = part.split()
        shared = next(k for k in range(len(got), -1, -1) if seen[len(seen) - k :] == got[:k] or k == 0)
        if seen:
            assert shared > 0, "consecutive runs of an unpunctuated text share their last words"
        seen += got[shared:]
    assert seen == words


def test_a_word_longer_than_a_part_is_cut_between_characters() -> None:
    blob = "x" * 10_000  # base64 or a URL with no space: it used to be one part over the room
    count = Counting()
    parts = chunking.split(f"before {blob} after", 100, count)
    assert all(count(p) <= 100 for p in parts) and len(parts) > 20
    assert "".join(parts).replace(" ", "") == f"before{blob}after"


def test_split_equals_the_greedy_longest_runs() -> None:
    """The same parts the word-by-word loop made: each run of words as long as the room allows."""
    rng = random.Random(3)
    text = " ".join("y" * rng.randint(1, 12) for _ in range(3000))
    count = Counting()
    for room in (20, 57, 400):
        parts = chunking.split(text, room, count)
        words = text.split()
        i = 0
        for part in parts:
            n = len(part.split())
            assert count(part) + 1 <= room or n == 1
            if i + n < len(words):  # one more word would not have fitted
                assert count(" ".join(words[i : i + n + 1])) + 1 > room
            i += n
        assert i == len(words)


# ---- a real worker: an 8 MB article beside small ones ----------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    # Each answer takes a while, so neighbours have requests in flight whenever the big one is split.
    with FaultServer(latency=0.2) as srv:
        yield srv


def test_an_8mb_article_does_not_stall_its_neighbours(
    stack: Stack, redis_url: str, server: FaultServer, tmp_path: Path
) -> None:
    """Two workers with 10 s leases: a worker whose event loop stops for seconds (the split used to take
    ~45 s there) lets the leases of every job it holds lapse, the other worker's reaper runs them again,
    and the fault server sees their requests twice. Nothing may be requested twice here."""
    # 10 s leases: the stall this catches was ~45 s; on two shared cores busy with the rest of the suite, a
    # healthy worker's loop can still lag a few seconds behind an 8 MB read, split and 300 parts (CI saw 4 s lapse).
    group = isolated_group(
        stack, redis_url, server.url, SUMMARIZE_MAX_ARTICLE_BYTES=str(16 * MIB), SUMMARIZE_LEASE_SECONDS="10"
    )
    w1, w2 = group.worker("big-w1"), group.worker("big-w2")
    big = write_jsonl(tmp_path / "big.jsonl", [{"id": "big", "text": unpunctuated(8 * MIB)}])
    small = write_jsonl(tmp_path / "small.jsonl", articles("nb", 60))
    big_id, small_id = "t-big-" + tmp_path.name[-8:], "t-nb-" + tmp_path.name[-8:]
    for src, bid in ((big, big_id), (small, small_id)):
        sub = group.cli("submit", str(src), "--batch-id", bid, "-q")
        assert sub.returncode == 0, sub.stderr
    for bid in (small_id, big_id):
        wait = group.cli("wait", bid, "--timeout", "120", "-q", timeout=150)
        assert wait.returncode == 0, (bid, wait.stderr)

    neighbours = group.results(small_id)
    assert [r["status"] for r in neighbours] == ["done"] * 60
    (row,) = group.results(big_id)
    assert row["status"] == "done" and row["chunks"] > 100, row
    stats = server.stats()
    repeated = {k: n for k, n in stats["by_article"].items() if n != 1}
    assert not repeated, f"{len(repeated)} request(s) sent more than once: a worker stalled past its leases"
    # Every request answered and seen (none timed out while its worker could not read the answer).
    assert set(stats["statuses"]) == {"200"}, stats["statuses"]
    assert stats["requests"] > 60 + row["chunks"]  # the parts, then at least one combining request
    for proc in (w1, w2):
        log = proc.log.read_text(errors="replace")
        # The reaper's line counts lapsed leases apart from messages republished after the queued grace.
        lapsed = re.findall(r"[1-9]\d* lease\(s\) lapsed|taken over by another run", log)
        assert not lapsed, "\n".join(line for line in log.splitlines() if "lapsed" in line or "taken over" in line)
