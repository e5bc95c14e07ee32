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


def test_public_columns_are_public_row_column_by_column() -> None:
    """The Parquet export's columnar path (public_columns) says what public_row says of every kind of record:
    done (with usage and a price), failed, cancelled, an unknown price (-1), a cached answer, an older record
    missing its last fields, an unfinished job (its status from the job hash), a structured answer."""
    import json

    import orjson

    from contract.record import COLUMNS, JobResult, pack, public_columns, public_row, unpack
    from contract.schema import FINAL

    finals: list[bytes | None] = [
        Final(
            "done",
            "d1",
            "0:1",
            summary="Résumé.",
            model="m",
            prompt_tokens=5,
            completion_tokens=3,
            attempts=1,
            cost_usd=0.25,
        ).pack(),
        Final("failed", "d2", "0:2", error="HTTP 400: bad", error_type="PermanentLLMError", attempts=2).pack(),
        Final("cancelled", "d3", "0:3").pack(),
        Final("done", "d4", "0:4", summary="x", model="m", prompt_tokens=1, cost_usd=-1, cached=True, chunks=3).pack(),
        pack(unpack(Final("done", "d5", "0:5", summary="old", attempts=1).pack())[: FINAL.at("finished_ms")]),
        None,
        None,
        Final("done", "d8", "0:8", summary='{"h": "Héad", "n": [1, 2]}', model="m", attempts=1).pack(),
    ]
    ids = [f"j{i}".encode() for i in range(len(finals))]
    metas: list[bytes | None] = [b'{"desk":"Z\xc3\xbcrich"}', None, b"", b"{}", None, b'{"n":1}', None, None]
    states = {"j5": "running"}  # j6 has no state: "missing", as the row path says
    # A structured batch's done answers are JSON (the worker accepts no other): its plain-text ones left out.
    structured_finals = [f if i in (1, 2, 5, 6, 7) else None for i, f in enumerate(finals)]
    for structured, page in ((False, finals), (True, structured_finals)):
        cols = public_columns(ids, page, metas, states, structured)
        assert list(cols) == list(COLUMNS) and all(len(v) == len(ids) for v in cols.values())
        for i, (raw_id, final, meta) in enumerate(zip(ids, page, metas, strict=True)):
            job_id = raw_id.decode()
            metadata = orjson.loads(meta) if meta else {}
            if final is None:
                want = JobResult(job_id, states.get(job_id, "missing"), None, None, None, None, 0, metadata).to_dict()
            else:
                want = public_row(job_id, final, metadata, structured)
            usage = want.pop("usage") or {}
            want.update({k: usage.get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")})
            got = {name: values[i] for name, values in cols.items()}
            got = {k: v.decode() if isinstance(v, bytes) else v for k, v in got.items()}
            got["metadata"] = json.loads(got["metadata"])
            assert got == want, (i, structured)
    assert public_columns([], [], [], {}) == {name: [] for name in COLUMNS}
