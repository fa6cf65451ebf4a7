"""Accuracy and macro-averaged F1, precision and recall, as an offline `evaluate` metric module.

`evaluate.load("accuracy")` fetches its script from the Hub; this local module works without it. The scores
themselves are computed in ``peftkit.metrics``, the one place for every caller.
"""

import datasets
import evaluate

from peftkit.metrics import classification_scores

_DESCRIPTION = "Accuracy plus macro F1, precision and recall over the labels seen in references or predictions."


class ClassificationReport(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description="predictions and references: lists of integer class ids",
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        return classification_scores(predictions, references)
