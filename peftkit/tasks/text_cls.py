"""Text classification (single sentences and pairs): labels, tokenization, batches, metrics."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from datasets import DatasetDict
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

from peftkit import pooling
from peftkit.config import DataArguments
from peftkit.data import builtin_debates, builtin_rotten_tomatoes, check_columns, load_file, read_lines, where
from peftkit.errors import check
from peftkit.modeling import load_tokenizer
from peftkit.tasks.classification import SingleLabelClassification
from peftkit.tasks.flags import TextClsFlags

logger = logging.getLogger(__name__)


@dataclass
class TextClassification(TextClsFlags, SingleLabelClassification):
    """Sequence classification with any number of classes; labels are discovered from the data."""
    name: ClassVar[str] = "text_cls"
    auto_class: ClassVar[type] = AutoModelForSequenceClassification
    peft_task_type: ClassVar[str] = "SEQ_CLS"
    kind: ClassVar[str] = "sequence-classification head"
    pipeline_tag: ClassVar[str] = "text-classification"  # transformers' pipeline for the saved model
    builtin_dataset = staticmethod(builtin_rotten_tomatoes)  # the data when none is named
    builtin_datasets = (builtin_debates,)  # three classes: who said it in the 2016 US debates
    pairs_stage: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check(self.pooling in pooling.POOLINGS,
              f"--pooling must be one of {', '.join(pooling.POOLINGS)}, got {self.pooling!r}.")
        super().__post_init__()
        self.data = DataArguments()
        self.trains_embeddings = False

    def train_embeddings(self) -> None:
        self.trains_embeddings = True

    def input_columns(self, raw: DatasetDict) -> dict[str, str | None]:
        return {"text_column": self.data.text_column, "text_pair_column": self.data.text_pair_column}

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        self.pooling = state.get("pooling", "pooler")  # as resolved when the run trained

    def prepare_model(self, model, model_dir: str | None = None) -> dict[str, Any]:
        """Make the classifier read the run's pooling. Training (``model_dir`` given, after the strategy froze
        what it freezes) resolves ``auto`` against the model's files; loading a run reuses the recorded choice."""
        from peftkit.feature_cache import backbone_weights_frozen

        if model_dir is not None:
            mode, why = pooling.resolve(self.pooling, model_dir, backbone_weights_frozen(model),
                                        self.trains_embeddings)
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
            values = self._label_values(ds)
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
        device = next(p.device for p in model.parameters())
        out: list[dict[str, Any]] = []
        for i in range(0, len(inputs), batch_size):
            chunk = inputs[i:i + batch_size]
            pairs = [row["text_pair"] for row in chunk] if has_pairs else None
            enc = self.encode(tokenizer, [row["text"] for row in chunk], pairs, padding=True, return_tensors="pt")
            out += [{"label": r["label"], "probabilities": r["probabilities"], **row} for row, r in zip(
                chunk, self.probability_rows(chunk, model(**enc.to(device)).logits), strict=True)]
        return out
