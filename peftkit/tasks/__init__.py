"""Task registry: what is learned (model class, batches, metrics)."""

from __future__ import annotations

from peftkit.errors import PeftkitError
from peftkit.tasks.text_cls import TextClassification

TASKS = {TextClassification.name: TextClassification}


def get_task(name: str):
    """The task class registered under ``name``."""
    if name not in TASKS:
        raise PeftkitError(f"Unknown task {name!r}. Available: {', '.join(sorted(TASKS))}.")
    return TASKS[name]
