"""Accuracy and macro-averaged F1, precision and recall, as an offline `evaluate` metric module.

`evaluate.load("accuracy")` fetches its script from the Hub; this local module works without it.
"""

import datasets
import evaluate
import numpy as np

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
        preds = np.asarray(predictions)
        refs = np.asarray(references)
        if refs.size == 0:
            return {"accuracy": float("nan"), "f1": float("nan"), "precision": float("nan"), "recall": float("nan")}
        precisions, recalls, f1s = [], [], []
        for label in np.union1d(preds, refs):
            tp = float(np.sum((preds == label) & (refs == label)))
            predicted = float(np.sum(preds == label))
            actual = float(np.sum(refs == label))
            p = tp / predicted if predicted else 0.0
            r = tp / actual if actual else 0.0
            precisions.append(p)
            recalls.append(r)
            f1s.append(2 * p * r / (p + r) if p + r else 0.0)
        return {
            "accuracy": float(np.mean(preds == refs)),
            "f1": float(np.mean(f1s)),
            "precision": float(np.mean(precisions)),
            "recall": float(np.mean(recalls)),
        }
