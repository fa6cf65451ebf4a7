"""What the tasks with a new labelled head (text_cls, token_cls, image_cls) share, as plain functions (the tasks
call them; no base class): the label maps saved in the model config, and one label per example's evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

METRIC_MODULE = Path(__file__).resolve().parent.parent / "metrics" / "classification_report.py"


def label_ids(labels: list[str]) -> dict[str, int]:
    return {label: i for i, label in enumerate(labels)}


def head_config(labels: list[str]) -> dict[str, Any]:
    """Model-config kwargs for a head over ``labels``: plain transformers (and `pipeline`) report their names."""
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)), "label2id": label_ids(labels)}


def example_rows(outputs, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One label per example: its prediction, label and loss (gathered across processes, then scored once)."""
    logits, labels = outputs.logits.float(), batch["labels"].long()
    loss = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    return {"prediction": logits.argmax(-1), "label": labels, "loss": loss}


def example_metrics(task, rows: dict[str, torch.Tensor]) -> dict[str, float]:
    """Loss, accuracy and macro F1/precision/recall over all examples (computed once, not averaged); the metric
    module is loaded once per task object."""
    import evaluate

    if getattr(task, "_metric", None) is None:
        task._metric = evaluate.load(str(METRIC_MODULE), keep_in_memory=True)
    loss = rows["loss"].double().mean().item() if len(rows["loss"]) else float("nan")
    scores = task._metric.compute(predictions=rows["prediction"].tolist(), references=rows["label"].tolist())
    return {"loss": loss, **scores}
