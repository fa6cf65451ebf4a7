"""Classification scores, computed one way for every caller: the tasks' evaluation (through the offline `evaluate`
module beside this file), `peftkit analyze`, the benchmark references and the bare loop.

Macro averages run over the classes seen among the labels or the predictions: a class absent from both would only
pull the mean down.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def per_class_scores(predictions: Sequence[int], references: Sequence[int],
                     classes: Sequence[int] | None = None) -> dict[int, dict[str, float]]:
    """Precision, recall, F1, support (true examples) and predicted count of each class id (default: those seen)."""
    preds, refs = np.asarray(predictions), np.asarray(references)
    out = {}
    for label in (np.union1d(preds, refs) if classes is None else classes):
        tp = float(np.sum((preds == label) & (refs == label)))
        predicted, actual = float(np.sum(preds == label)), float(np.sum(refs == label))
        p = tp / predicted if predicted else 0.0
        r = tp / actual if actual else 0.0
        out[int(label)] = {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
                           "support": int(actual), "predicted": int(predicted)}
    return out


def classification_scores(predictions: Sequence[int], references: Sequence[int]) -> dict[str, float]:
    """Accuracy and macro-averaged F1, precision and recall (NaN for no examples)."""
    preds, refs = np.asarray(predictions), np.asarray(references)
    if refs.size == 0:
        return {"accuracy": float("nan"), "f1": float("nan"), "precision": float("nan"), "recall": float("nan")}
    scores = list(per_class_scores(preds, refs).values())
    return {"accuracy": float(np.mean(preds == refs)), "f1": float(np.mean([s["f1"] for s in scores])),
            "precision": float(np.mean([s["precision"] for s in scores])),
            "recall": float(np.mean([s["recall"] for s in scores]))}


def macro_f1(predictions: Sequence[int], references: Sequence[int]) -> float:
    return classification_scores(predictions, references)["f1"]
