"""`peftkit analyze`'s arithmetic on hand-made predictions: per-class scores, calibration, the error rows."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from peftkit.analysis import calibration, error_rows, per_class, predict_split
from peftkit.data import ORIGIN
from peftkit.errors import PeftkitError


def test_per_class_scores():
    # 3 a (2 right, 1 called b), 2 b (both right), 1 c (called a)
    labels, predicted = torch.tensor([0, 0, 0, 1, 1, 2]), torch.tensor([0, 0, 1, 1, 1, 0])
    scores = per_class(labels, predicted, ["a", "b", "c"])
    assert scores["a"] == {"precision": round(2 / 3, 4), "recall": round(2 / 3, 4), "f1": round(2 / 3, 4),
                           "support": 3}
    assert scores["b"] == {"precision": round(2 / 3, 4), "recall": 1.0, "f1": 0.8, "support": 2}
    assert scores["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_calibration_error_is_the_weighted_gap_between_confidence_and_accuracy():
    confidence = torch.tensor([0.95, 0.95, 0.95, 0.95, 0.55, 0.55])
    correct = torch.tensor([True, True, True, False, True, False])
    result = calibration(confidence, correct, bins=10)
    # bin (0.9, 1]: confidence 0.95, accuracy 0.75, 4 of 6; bin (0.5, 0.6]: 0.55 against 0.5, 2 of 6
    assert result["expected_calibration_error"] == pytest.approx(4 / 6 * 0.2 + 2 / 6 * 0.05, abs=1e-4)
    assert [b["count"] for b in result["bins"]] == [2, 4]
    perfect = calibration(torch.tensor([1.0, 1.0]), torch.tensor([True, True]), bins=10)
    assert perfect["expected_calibration_error"] == 0


def test_error_rows_rank_confident_mistakes_and_unsure_answers():
    raw = Dataset.from_dict({"text": ["w", "x", "y", "z"], ORIGIN: [f"f.csv row {i}" for i in range(2, 6)]})
    labels = torch.tensor([0, 0, 1, 1])
    probs = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.45, 0.55], [0.2, 0.8]])  # x wrong (0.7), the rest right
    rows = error_rows(raw, labels, probs, ["neg", "pos"], "text", top_k=2)
    mistakes = [r for r in rows if r["kind"] == "confident mistake"]
    unsure = [r for r in rows if r["kind"] == "unsure correct"]
    assert [(r["input"], r["label"], r["predicted"], r["p_predicted"]) for r in mistakes] == [("x", "neg", "pos", 0.7)]
    assert [r["input"] for r in unsure] == ["y", "z"] and unsure[0]["example"] == "f.csv row 4"
    assert mistakes[0]["top3"] == "pos 0.700; neg 0.300"


def test_a_task_that_labels_parts_of_examples_is_refused():
    class Tokens:
        name = "token_cls"

        def parity_logits(self, outputs, batch):
            return outputs.logits.reshape(-1, 3)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, labels):
            return type("Out", (), {"logits": torch.zeros(*input_ids.shape, 3)})()

    data = [{"input_ids": torch.ones(4, dtype=torch.long), "labels": torch.zeros(4, dtype=torch.long)}] * 2

    def collate(rows):
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}

    with pytest.raises(PeftkitError, match="reads one label per example"):
        predict_split(Tokens(), Model(), collate, data, batch_size=2)
