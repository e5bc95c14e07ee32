"""worker/chunking.py: parts fit their room, are cut on paragraphs and overlap (test_chunking.py
has the long-article scenarios through real workers)."""

from __future__ import annotations


def test_chunks_fit_their_room_cut_on_paragraphs_and_overlap() -> None:
    from worker import chunking

    def count(t: str) -> int:
        return -(-len(t) // 4)

    text = "\n\n".join(
        f"Paragraph {p}. " + " ".join(f"Sentence {p}.{s} about the port." for s in range(12)) for p in range(30)
    )
    parts = chunking.split(text, 300, count, overlap_tokens=40)
    assert len(parts) > 5 and all(count(p) <= 300 for p in parts)
    assert all(p.startswith("Paragraph") or p.startswith("Sentence") for p in parts)
    last = [p.rsplit(". ", 1)[-1] for p in parts]
    assert all(last[i] in parts[i + 1] for i in range(len(parts) - 1))  # consecutive parts share sentences
    huge = "word " * 5000  # no sentence or paragraph to cut on: cut between words
    assert all(count(p) <= 100 for p in chunking.split(huge, 100, count))
