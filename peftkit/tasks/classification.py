"""What the tasks with a new labelled head share: the label maps saved in the model config (text_cls, token_cls,
image_cls), and the single-label classifier base of text_cls and image_cls (one label per example: label discovery
and checks, losses, evaluation rows and metrics, probabilities in `predict`)."""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from datasets import ClassLabel, DatasetDict

from peftkit.data import check_columns, where
from peftkit.errors import PeftkitError, check
from peftkit.modeling import head_module_names
from peftkit.tasks.base import Task

METRIC_MODULE = Path(__file__).resolve().parent.parent / "metrics" / "classification_report.py"


def label_ids(labels: list[str]) -> dict[str, int]:
    return {label: i for i, label in enumerate(labels)}


def head_config(labels: list[str]) -> dict[str, Any]:
    """Model-config kwargs for a head over ``labels``: plain transformers (and `pipeline`) report their names."""
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)), "label2id": label_ids(labels)}


class LabelledHead(Task):
    """A task that adds a new output layer over its labels (text_cls, token_cls, image_cls): the label maps go into
    the model config, so that plain transformers (and `pipeline`) report label names, and the head trains fully."""

    def model_kwargs(self) -> dict[str, Any]:
        return head_config(self.labels)

    @property
    def label2id(self) -> dict[str, int]:
        return label_ids(self.labels)

    def new_modules(self, model) -> list[str]:
        """The head (``classifier``, ``score``, ...): created for the task, trained fully."""
        return head_module_names(model)


class SingleLabelClassification(LabelledHead):
    """One label per example, from a label column; the classes are discovered from the training data and
    labels keep their type (integers come back from `predict` as integers). A subclass names its input columns
    (:meth:`input_columns`) and writes how examples become model inputs."""

    metrics: ClassVar[dict[str, str]] = {"accuracy": "max", "f1": "max", "precision": "max", "recall": "max",
                                         "loss": "min"}
    default_metric: ClassVar[str] = "accuracy"
    draws_per_class: ClassVar[bool] = True
    example_noun: ClassVar[str] = "example"
    """What one example is called in messages ("image")."""
    single_class_hint: ClassVar[str] = ""
    """Added to the message refusing training data of a single class."""

    def __post_init__(self) -> None:
        self._metric = None
        self.labels: list[str] = []
        self.label_type = "str"

    @abstractmethod
    def input_columns(self, raw: DatasetDict) -> dict[str, str | None]:
        """The input columns the data must hold, as {flag name: column} (None: not used)."""

    def class_names(self, feature, values: list[Any]) -> list[Any]:
        """The classes, from the training split's label feature and values (default: the values seen, sorted)."""
        return sorted(set(values))

    def _label_values(self, ds) -> list[Any]:
        col = self.data.label_column
        feature, values = ds.features[col], ds[col]
        if isinstance(feature, ClassLabel):
            return [feature.int2str(v) if v is not None and v >= 0 else None for v in values]
        return values

    def discover(self, raw: DatasetDict) -> dict[str, Any]:
        """Sorted class names of the training data, checked against every other split; saved in the run."""
        col = self.data.label_column
        check_columns(raw, self.input_columns(raw) | {"label_column": col})
        values = self._label_values(raw["train"])
        missing = [i for i, v in enumerate(values) if v is None]
        check(not missing, f"{len(missing)} training {self.example_noun}(s) have no value in label column {col!r} "
              f"({where(raw['train'], missing)}). Fill or drop them.")
        kinds = {type(v) for v in values}
        if kinds & {float}:
            sample = next(v for v in values if isinstance(v, float))
            raise PeftkitError(f"Label column {col!r} holds floats (e.g. {sample}); {self.name} needs class labels "
                               "(strings or integers). For a numeric target, round or bin it into classes.")
        check(len(kinds) == 1, f"Label column {col!r} mixes types ({', '.join(sorted(k.__name__ for k in kinds))}). "
              "Use one type: all strings or all integers.")
        self.label_type = "int" if kinds == {int} else "str"  # predict gives integer labels back as integers
        classes = self.class_names(raw["train"].features[col], values)
        check(len(classes) >= 2, f"Label column {col!r} has a single class ({classes[0]!r}) in training data: a "
              f"classifier needs at least two.{self.single_class_hint}")
        self.labels = [str(v) for v in classes]
        self.check_known_labels(DatasetDict({s: d for s, d in raw.items() if s != "train"}))
        return {"labels": self.labels, "label_type": self.label_type}

    def restore(self, state: dict[str, Any]) -> None:
        self.labels, self.label_type = list(state["labels"]), state.get("label_type", "str")

    def check_known_labels(self, raw: DatasetDict) -> None:
        """Evaluation data may only hold labels the model was trained on."""
        if not raw:
            return
        col = self.data.label_column
        check_columns(raw, self.input_columns(raw) | {"label_column": col})
        for split, ds in raw.items():
            values = self._label_values(ds)
            check(all(v is not None for v in values), f"Some {split} examples have no value in label column {col!r}.")
            unseen = sorted({str(v) for v in values} - set(self.labels))
            check(not unseen, f"The {split} data has label(s) {unseen[:10]} that training never saw (training "
                  f"labels: {self.labels[:20]}). Add examples of them to training or drop them.")

    def id2label(self) -> dict[int, Any]:
        """Label of each class id, with the type training saw."""
        return {i: int(label) if self.label_type == "int" else label for i, label in enumerate(self.labels)}

    def probability_rows(self, rows: list[dict[str, Any]], logits: torch.Tensor) -> list[dict[str, Any]]:
        """``rows`` with the predicted label and every class's probability (6 decimals)."""
        id2label = self.id2label()
        probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        return [{**row, "label": id2label[int(np.argmax(p))],
                 "probabilities": {id2label[k]: round(float(x), 6) for k, x in enumerate(p)}}
                for row, p in zip(rows, probs, strict=True)]

    # -- training and evaluation ------------------------------------------------------------------------
    def loss_units(self, batch: dict[str, torch.Tensor]) -> int:
        """The model's loss is a mean over the batch's examples (those not labelled -100)."""
        return int((batch["labels"] != -100).sum())

    def loss_inputs(self, outputs, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and labels, one row per example, for losses other than the model's own."""
        return outputs.logits, batch["labels"]

    def class_counts(self, train) -> torch.Tensor:
        """Training examples per class, in label order (for --class_weights balanced)."""
        return torch.bincount(torch.tensor(train["labels"]), minlength=len(self.labels))

    def eval_rows(self, outputs, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One label per example: its prediction, label and loss (gathered across processes, then scored once)."""
        logits, labels = outputs.logits.float(), batch["labels"].long()
        loss = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        return {"prediction": logits.argmax(-1), "label": labels, "loss": loss}

    def compute_metrics(self, rows: dict[str, torch.Tensor]) -> dict[str, float]:
        """Loss, accuracy and macro F1/precision/recall over all examples (computed once, not averaged); the
        metric module (``peftkit/metrics``) is loaded once per task object."""
        import evaluate

        if self._metric is None:
            self._metric = evaluate.load(str(METRIC_MODULE), keep_in_memory=True)
        loss = rows["loss"].double().mean().item() if len(rows["loss"]) else float("nan")
        scores = self._metric.compute(predictions=rows["prediction"].tolist(), references=rows["label"].tolist())
        return {"loss": loss, **scores}
