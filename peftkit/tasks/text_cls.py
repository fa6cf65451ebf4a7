"""Text classification (single sentences and pairs): labels, tokenization, batches, metrics."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import ClassLabel, DatasetDict
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

from peftkit.config import DataArguments
from peftkit.data import check_columns, where
from peftkit.errors import PeftkitError, check

METRIC_MODULE = Path(__file__).resolve().parent.parent / "metrics" / "classification_report.py"

logger = logging.getLogger(__name__)


class TextClassification:
    """Sequence classification with any number of classes; labels are discovered from the data."""

    name = "text_cls"
    auto_class = AutoModelForSequenceClassification
    peft_task_type = "SEQ_CLS"
    kind = "sequence-classification"
    metric_names = ("accuracy", "f1", "precision", "recall", "loss")  # what compute_metrics returns
    pipeline_tag = "text-classification"  # transformers' pipeline for the saved model, and the model card's tag

    def __init__(self, data_args: DataArguments):
        self.data_args = data_args
        self._metric = None
        self.label_type = "str"

    # -- labels -----------------------------------------------------------------------------------
    def _label_values(self, raw: DatasetDict, split: str) -> list[Any]:
        ds = raw[split]
        feature = ds.features[self.data_args.label_column]
        values = ds[self.data_args.label_column]
        if isinstance(feature, ClassLabel):
            return [feature.int2str(v) if v is not None and v >= 0 else None for v in values]
        return values

    def discover_labels(self, raw: DatasetDict) -> list[str]:
        """Sorted label names from the training split; every evaluation label must be among them."""
        col = self.data_args.label_column
        check_columns(raw, {"text_column": self.data_args.text_column,
                            "text_pair_column": self.data_args.text_pair_column, "label_column": col})
        values = self._label_values(raw, "train")
        missing = [i for i, v in enumerate(values) if v is None]
        check(not missing, f"{len(missing)} training example(s) have no value in label column {col!r} "
              f"({where(raw['train'], missing)}). Fill or drop them.")
        kinds = {type(v) for v in values}
        if kinds & {float}:
            sample = next(v for v in values if isinstance(v, float))
            raise PeftkitError(f"Label column {col!r} holds floats (e.g. {sample}); text_cls needs class labels "
                               "(strings or integers). For a numeric target, round or bin it into classes.")
        check(len(kinds) == 1, f"Label column {col!r} mixes types ({', '.join(sorted(k.__name__ for k in kinds))}). "
              "Use one type: all strings or all integers.")
        self.label_type = "int" if kinds == {int} else "str"  # predict gives integer labels back as integers
        labels = sorted(set(values))
        check(len(labels) >= 2, f"Label column {col!r} has a single class ({labels[0]!r}) in training data: "
              "a classifier needs at least two.")
        labels = [str(v) for v in labels]
        self.check_known_labels(DatasetDict({s: d for s, d in raw.items() if s != "train"}), set(labels))
        return labels

    def check_known_labels(self, raw: DatasetDict, known: set[str]) -> None:
        """Evaluation data may only hold labels the model was trained on."""
        check_columns(raw, {"text_column": self.data_args.text_column,
                            "text_pair_column": self.data_args.text_pair_column,
                            "label_column": self.data_args.label_column})
        for split in raw:
            values = self._label_values(raw, split)
            check(all(v is not None for v in values),
                  f"Some {split} examples have no value in label column {self.data_args.label_column!r}.")
            unseen = sorted({str(v) for v in values} - known)
            check(not unseen, f"The {split} data has label(s) {unseen[:10]} that training never saw "
                  f"(training labels: {sorted(known)[:20]}). Add examples of them to training or drop them.")

    def model_kwargs(self, labels: list[str]) -> dict[str, Any]:
        return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                "label2id": {label: i for i, label in enumerate(labels)}}

    # -- batches ----------------------------------------------------------------------------------
    def encode(self, tokenizer, texts: list[str], pairs: list[str] | None = None, **kwargs: Any):
        return tokenizer(texts, pairs, truncation=True, max_length=self.data_args.max_seq_length, **kwargs)

    def preprocess(self, raw: DatasetDict, tokenizer, label2id: dict[str, int]) -> DatasetDict:
        """Tokenize every split (no padding: the collator pads each batch) and map labels to ids."""
        args = self.data_args

        def convert(batch: dict[str, list]) -> dict[str, list]:
            texts, pairs = batch[args.text_column], batch[args.text_pair_column] if args.text_pair_column else None
            encoded = self.encode(tokenizer, texts, pairs)
            encoded["labels"] = [label2id.get(str(v), -1) for v in batch[args.label_column]]
            return encoded

        out = DatasetDict()
        for split, ds in raw.items():
            for column in filter(None, (args.text_column, args.text_pair_column)):
                self._check_texts(split, column, ds)
            values = self._label_values(raw, split)
            ds = ds.remove_columns(args.label_column).add_column(args.label_column, [str(v) for v in values])
            out[split] = ds.map(convert, batched=True, remove_columns=ds.column_names,
                                desc=f"Tokenizing {split}")
            cut = sum(n >= args.max_seq_length for n in map(len, out[split]["input_ids"]))
            if cut:
                logger.warning("%d of %d %s texts reached --max_seq_length %d tokens and were cut there; raise "
                               "--max_seq_length to keep more of each text.", cut, len(ds), split,
                               args.max_seq_length)
        return out

    @staticmethod
    def _check_texts(split: str, column: str, ds) -> None:
        values = ds[column]
        bad = [i for i, v in enumerate(values) if v is not None and not isinstance(v, str)]
        check(not bad, f"Text column {column!r} of the {split} data holds {len(bad)} non-text value(s) (e.g. "
              f"{values[bad[0]]!r} at {where(ds, bad, 1)}). Pick the right --text_column, or convert that column "
              "to text." if bad else "")
        empty = [i for i, v in enumerate(values) if v is None or not v.strip()]
        check(not empty, f"Text column {column!r} of the {split} data holds {len(empty)} missing or empty text(s) "
              f"({where(ds, empty)}): no label can be learnt or predicted from nothing. Drop or fill those rows.")

    def collator(self, tokenizer):
        return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=None)

    # -- metrics ----------------------------------------------------------------------------------
    def compute_metrics(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Loss, accuracy and macro F1/precision/recall over all examples (computed once, not averaged)."""
        import evaluate

        if self._metric is None:
            self._metric = evaluate.load(str(METRIC_MODULE), keep_in_memory=True)
        logits, labels = logits.float(), labels.long()
        loss = torch.nn.functional.cross_entropy(logits, labels).item() if len(labels) else float("nan")
        scores = self._metric.compute(predictions=logits.argmax(-1).tolist(), references=labels.tolist())
        return {"loss": loss, **scores}

    def predictions(self, logits: torch.Tensor, id2label: dict[int, str]) -> list[dict[str, Any]]:
        probs = torch.softmax(logits.float(), dim=-1).numpy()
        return [{"label": id2label[int(np.argmax(p))],
                 "probabilities": {id2label[i]: round(float(x), 6) for i, x in enumerate(p)}} for p in probs]
