"""Text classification (single sentences and pairs): labels, tokenization, batches, metrics."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from datasets import ClassLabel, DatasetDict
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

from peftkit import pooling
from peftkit.config import DataArguments
from peftkit.data import builtin_rotten_tomatoes, check_columns, load_file, read_lines, where
from peftkit.errors import PeftkitError, check
from peftkit.modeling import head_module_names, load_tokenizer
from peftkit.tasks.flags import TextClsFlags
from peftkit.tasks.labelled import example_metrics, example_rows, head_config, label_ids

logger = logging.getLogger(__name__)


@dataclass
class TextClassification(TextClsFlags):
    """Sequence classification with any number of classes; labels are discovered from the data."""
    name: ClassVar[str] = "text_cls"
    auto_class: ClassVar[type] = AutoModelForSequenceClassification
    peft_task_type: ClassVar[str] = "SEQ_CLS"
    kind: ClassVar[str] = "sequence-classification head"
    pipeline_tag: ClassVar[str] = "text-classification"  # transformers' pipeline for the saved model
    metrics: ClassVar[dict[str, str]] = {"accuracy": "max", "f1": "max", "precision": "max", "recall": "max",
                                         "loss": "min"}
    default_metric: ClassVar[str] = "accuracy"
    builtin_dataset = staticmethod(builtin_rotten_tomatoes)  # the data when none is named

    def __post_init__(self) -> None:
        check(self.pooling in pooling.POOLINGS,
              f"--pooling must be one of {', '.join(pooling.POOLINGS)}, got {self.pooling!r}.")
        self.data = DataArguments()
        self._metric = None
        self.labels: list[str] = []
        self.label_type = "str"

    # -- labels -----------------------------------------------------------------------------------
    def _label_values(self, raw: DatasetDict, split: str) -> list[Any]:
        ds = raw[split]
        feature = ds.features[self.data.label_column]
        values = ds[self.data.label_column]
        if isinstance(feature, ClassLabel):
            return [feature.int2str(v) if v is not None and v >= 0 else None for v in values]
        return values

    def discover_labels(self, raw: DatasetDict) -> list[str]:
        """Sorted label names from the training split; every evaluation label must be among them."""
        col = self.data.label_column
        check_columns(raw, {"text_column": self.data.text_column,
                            "text_pair_column": self.data.text_pair_column, "label_column": col})
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
        self.labels = [str(v) for v in labels]
        self.check_known_labels(DatasetDict({s: d for s, d in raw.items() if s != "train"}))
        return self.labels

    def discover(self, raw: DatasetDict) -> dict[str, Any]:
        """The label space of the training data, checked against every other split; saved in the run."""
        self.discover_labels(raw)
        return {"labels": self.labels, "label_type": self.label_type}

    def restore(self, state: dict[str, Any]) -> None:
        self.labels, self.label_type = list(state["labels"]), state.get("label_type", "str")
        self.pooling = state.get("pooling", "pooler")  # as resolved when the run trained

    def prepare_model(self, model, model_dir: str | None = None) -> dict[str, Any]:
        """Make the classifier read the run's pooling. Training (``model_dir`` given, after the strategy froze
        what it freezes) resolves ``auto`` against the model's files; loading a run reuses the recorded choice."""
        from peftkit.feature_cache import backbone_weights_frozen

        if model_dir is not None:
            mode, why = pooling.resolve(self.pooling, model_dir, backbone_weights_frozen(model))
            logger.info("Pooling: %s (%s).", mode, why)
            self.pooling = mode
        pooling.apply(model, self.pooling)
        return {"pooling": self.pooling}

    def not_plain_reason(self) -> str | None:
        """Why plain transformers would run a saved model of this run differently (None: it would not)."""
        if self.pooling not in pooling.HOOKED:
            return None
        return (f"this run's classifier reads {self.pooling}-pooled token vectors (--pooling {self.pooling}), while "
                "transformers' own classifier for this architecture reads its pooler or first token, so plain "
                "transformers would answer differently. Use it through peftkit (`peftkit predict`/`eval`, "
                "`peftkit.load_run`), or train with --pooling pooler for a model plain transformers serves")

    def check_known_labels(self, raw: DatasetDict) -> None:
        """Evaluation data may only hold labels the model was trained on."""
        check_columns(raw, {"text_column": self.data.text_column,
                            "text_pair_column": self.data.text_pair_column,
                            "label_column": self.data.label_column})
        for split in raw:
            values = self._label_values(raw, split)
            check(all(v is not None for v in values),
                  f"Some {split} examples have no value in label column {self.data.label_column!r}.")
            known = set(self.labels)
            unseen = sorted({str(v) for v in values} - known)
            check(not unseen, f"The {split} data has label(s) {unseen[:10]} that training never saw "
                  f"(training labels: {sorted(known)[:20]}). Add examples of them to training or drop them.")

    def model_kwargs(self) -> dict[str, Any]:
        return head_config(self.labels)

    @property
    def label2id(self) -> dict[str, int]:
        return label_ids(self.labels)

    def new_modules(self, model) -> list[str]:
        """The head (``classifier``, ``score``, ...): created for the task, trained fully."""
        return head_module_names(model)

    def load_processor(self, source):
        return load_tokenizer(source)

    # -- batches ----------------------------------------------------------------------------------
    def encode(self, tokenizer, texts: list[str], pairs: list[str] | None = None, **kwargs: Any):
        return tokenizer(texts, pairs, truncation=True, max_length=self.data.max_seq_length, **kwargs)

    def preprocess(self, raw: DatasetDict, tokenizer) -> DatasetDict:
        """Tokenize every split (no padding: the collator pads each batch) and map labels to ids."""
        args, label2id = self.data, self.label2id

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

    def loss_units(self, batch: dict[str, torch.Tensor]) -> int:
        """The model's loss is a mean over the batch's examples (those not labelled -100)."""
        return int((batch["labels"] != -100).sum())

    def loss_inputs(self, outputs, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and labels, one row per example, for losses other than the model's own."""
        return outputs.logits, batch["labels"]

    def class_counts(self, train) -> torch.Tensor:
        """Training examples per class, in label order (for --class_weights balanced)."""
        return torch.bincount(torch.tensor(train["labels"]), minlength=len(self.labels))

    # -- evaluation -------------------------------------------------------------------------------
    def eval_rows(self, outputs, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return example_rows(outputs, batch)

    def compute_metrics(self, rows: dict[str, torch.Tensor]) -> dict[str, float]:
        """Loss, accuracy and macro F1/precision/recall over all examples (computed once, not averaged)."""
        return example_metrics(self, rows)

    def parity_logits(self, outputs, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return outputs.logits.float()

    def final_evaluation(self, acc, model, tokenizer, raw, output_dir, stage: str) -> dict[str, Any] | None:
        return None  # the evaluation loop's metrics say it all

    # -- using a trained run ----------------------------------------------------------------------
    def read_inputs(self, path: str | None, columns: dict[str, str | None]) -> list[dict[str, str]]:
        """Texts (and second texts, for a sentence-pair run) from stdin, a .txt file or a data file.

        Lines of stdin or .txt are one text each; for a pair run, ``text<TAB>second text``."""
        text_column = columns.get("text_column") or self.data.text_column
        pair_column = columns.get("text_pair_column") or self.data.text_pair_column
        check(not columns.get("text_pair_column") or self.data.text_pair_column,
              f"--text_pair_column {columns.get('text_pair_column')!r}: this run classifies single texts (it was "
              "trained without --text_pair_column), so it cannot label pairs.")
        lines = read_lines(path)
        if lines is not None:
            if pair_column is None:
                return [{"text": line} for _, line in lines]
            bad = [i for i, line in lines if line.count("\t") != 1]
            source = "stdin" if path in (None, "-") else path
            check(not bad, f"This run classifies sentence pairs (--text_pair_column {pair_column!r}): each input "
                  f"line must be `text<TAB>second text`, but line(s) {', '.join(map(str, bad[:10]))}"
                  f"{' and more' if len(bad) > 10 else ''} of {source} are not. Or pass a CSV/JSON file with both "
                  "columns.")
            return [dict(zip(("text", "text_pair"), line.split("\t"), strict=True)) for _, line in lines]
        ds = load_file(path)
        check_columns(DatasetDict({"input": ds}), {"text_column": text_column, "text_pair_column": pair_column})
        texts = list(ds[text_column])
        if not pair_column:
            return [{"text": t} for t in texts]
        return [{"text": t, "text_pair": p} for t, p in zip(texts, ds[pair_column], strict=True)]

    def check_inputs(self, inputs: list[dict[str, str]]) -> None:
        """Before any model is loaded: single texts for a single-text run, pairs for a pair run."""
        check(bool(inputs), "No texts to label: the input was empty.")
        has_pairs = "text_pair" in inputs[0]
        pair_column = self.data.text_pair_column
        check(not has_pairs or pair_column, "This run classifies single texts (trained without "
              "--text_pair_column): it cannot label pairs. Pass the texts alone.")
        check(has_pairs or not pair_column, f"This run classifies sentence pairs (--text_pair_column "
              f"{pair_column!r}): pass the second text of each pair too; a text alone would be scored wrongly.")

    @torch.no_grad()
    def predict(self, model, tokenizer, inputs: list[dict[str, str]], batch_size: int = 64) -> list[dict[str, Any]]:
        """The label and class probabilities of each input (``text``, and ``text_pair`` for a pair run).
        Labels come back with the type training saw (integers stay integers)."""
        self.check_inputs(inputs)
        has_pairs = "text_pair" in inputs[0]
        as_int = self.label_type == "int"
        id2label = {i: int(label) if as_int else label for i, label in enumerate(self.labels)}
        device = next(p.device for p in model.parameters())
        out: list[dict[str, Any]] = []
        for i in range(0, len(inputs), batch_size):
            chunk = inputs[i:i + batch_size]
            pairs = [row["text_pair"] for row in chunk] if has_pairs else None
            enc = self.encode(tokenizer, [row["text"] for row in chunk], pairs, padding=True, return_tensors="pt")
            probs = torch.softmax(model(**enc.to(device)).logits.float(), dim=-1).cpu().numpy()
            for row, p in zip(chunk, probs, strict=True):
                out.append({"label": id2label[int(np.argmax(p))],
                            "probabilities": {id2label[k]: round(float(x), 6) for k, x in enumerate(p)}, **row})
        return out

    def headline(self, results: dict[str, Any]) -> str:
        test = results["test"] or {}
        return (f"validation accuracy {results['eval']['accuracy']:.4f}"
                + (f", test accuracy {test['accuracy']:.4f}" if test else ""))
