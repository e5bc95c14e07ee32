"""contract/record.py: packed records round-trip and stay small."""

from __future__ import annotations

from contract.record import Article, Final, digest


def test_records_round_trip_and_stay_small() -> None:
    text = "The council voted on the harbour bridge. " * 100
    a = Article(digest(text), "0:12", text)
    assert Article.unpack(a.pack()) == a and len(a.pack()) < len(text) / 3
    f = Final(
        "done",
        a.digest,
        a.origin,
        summary="Short summary.",
        model="m",
        prompt_tokens=5,
        completion_tokens=3,
        attempts=2,
        cost_usd=0.5,
    )
    assert Final.unpack(f.pack()) == f
    assert Final.unpack(Final("failed", error="x").pack()).cost_usd is None
    assert digest("a  b\n") == digest("a b") != digest("a c")
