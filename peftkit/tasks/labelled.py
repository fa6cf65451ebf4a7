"""What every task with a new labelled head shares (text_cls, token_cls): the head's size and label names in
the model config, and the head as the module the strategies train in full."""

from __future__ import annotations

from typing import Any

from peftkit.modeling import head_module_names


class LabelledHead:
    """Mix-in for a task whose ``labels`` (discovered from the data, or restored with a run) name its outputs."""

    labels: list[str]

    def model_kwargs(self) -> dict[str, Any]:
        """Saved in the model config, so that plain transformers (and `pipeline`) report label names."""
        return {"num_labels": len(self.labels), "id2label": dict(enumerate(self.labels)), "label2id": self.label2id}

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    def new_modules(self, model) -> list[str]:
        """The head (``classifier``, ``score``, ...): created for the task, trained fully."""
        return head_module_names(model)
