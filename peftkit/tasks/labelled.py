"""What the tasks with a new labelled head (text_cls, token_cls) share, as plain functions (the tasks call
them; no base class): the label maps saved in the model config."""

from __future__ import annotations

from typing import Any


def label_ids(labels: list[str]) -> dict[str, int]:
    return {label: i for i, label in enumerate(labels)}


def head_config(labels: list[str]) -> dict[str, Any]:
    """Model-config kwargs for a head over ``labels``: plain transformers (and `pipeline`) report their names."""
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)), "label2id": label_ids(labels)}
