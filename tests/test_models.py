"""contract/models.py: the model table's context windows and prices."""

from __future__ import annotations


def test_the_model_table_knows_dated_and_prefixed_names() -> None:
    from contract.models import known_context, known_price

    assert known_context("gpt-4o-mini-2024-07-18") == 128000 and known_context("openai/gpt-4o") == 128000
    assert known_context("my-own-model") is None and known_price("my-own-model") is None
    price = known_price("gpt-4o-mini")
    assert price is not None and price.cost(1_000_000, 0) == price.input
