"""contract/keys.py: batch ids."""

from __future__ import annotations

from contract.keys import BATCH_ID_RE


def test_batch_ids_do_not_accept_a_trailing_newline() -> None:
    assert BATCH_ID_RE.match("news-0601")
    assert not BATCH_ID_RE.match("news-0601\n") and not BATCH_ID_RE.match("a:b") and not BATCH_ID_RE.match("")
