"""The model card's results table."""

from __future__ import annotations

from peftkit.model_card import _metrics_table


def test_a_metric_one_split_lacks_is_shown_as_a_dash():
    # per-entity-type scores exist only for the types a split's sentences hold (or its predictions name)
    table = _metrics_table({"eval": {"f1": 0.5, "f1_product": 0.25}, "test": {"f1": 0.4, "f1_person": 0.1}})
    assert table.splitlines() == ["| split | f1 | f1_product | f1_person |", "|---|---|---|---|",
                                  "| validation | 0.5000 | 0.2500 | - |", "| test | 0.4000 | - | 0.1000 |"]
