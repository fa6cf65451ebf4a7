"""One computation of classification scores (peftkit.metrics) for the tasks, analyze and the benchmarks."""

from __future__ import annotations

import pytest

from peftkit import metrics


def test_scores_by_hand():
    # labels 0 0 0 1 1 2, predictions 0 0 1 1 1 0: class 0 P 2/3 R 2/3, class 1 P 2/3 R 1, class 2 P 0 R 0
    preds, refs = [0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 2]
    scores = metrics.classification_scores(preds, refs)
    f1 = [2 / 3, 0.8, 0.0]
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["f1"] == pytest.approx(sum(f1) / 3)
    assert scores["precision"] == pytest.approx((2 / 3 + 2 / 3) / 3)
    assert scores["recall"] == pytest.approx((2 / 3 + 1) / 3)
    per = metrics.per_class_scores(preds, refs)
    assert [per[c]["support"] for c in (0, 1, 2)] == [3, 2, 1] and per[2]["predicted"] == 0


def test_a_class_absent_from_labels_and_predictions_does_not_count():
    # classes 0 and 1 only: naming class 2 as well (never seen) would pull the macro mean down
    assert metrics.macro_f1([0, 1, 1], [0, 1, 0]) == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert metrics.per_class_scores([0, 1, 1], [0, 1, 0], classes=range(3))[2]["f1"] == 0.0


def test_the_offline_evaluate_module_gives_the_same_scores():
    import evaluate

    from peftkit.tasks.classification import METRIC_MODULE

    preds, refs = [0, 2, 1, 1, 0, 2, 2], [0, 1, 1, 2, 0, 2, 1]
    module = evaluate.load(str(METRIC_MODULE), keep_in_memory=True)
    assert module.compute(predictions=preds, references=refs) == metrics.classification_scores(preds, refs)


def test_no_examples_gives_nan_not_an_error():
    assert all(v != v for v in metrics.classification_scores([], []).values())
