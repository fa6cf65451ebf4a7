"""The route a user takes for NER without peftkit: stock transformers `Trainer` + peft LoRA, run_ner-style.

    python benchmarks/reference_ner.py --data_dir D --output_dir O --model_name_or_path M \
        --learning_rate 2e-3 --num_train_epochs 6 --per_device_train_batch_size 32 --seed 42

Reads D/{train,validation,test}.jsonl (`tokens`: a list of words, `ner_tags`: a list of tag names) and
D/labels.json (the tag names in id order) written by the suite. Aligns tags as transformers' `run_ner` example
does (a word's first sub-token carries its tag, the others and the special tokens are -100), trains LoRA (r=8,
alpha=16, dropout 0.1, peft's default target modules, the classifier in modules_to_save) with the same
hyper-parameters as peftkit's lora strategy, keeps the best epoch by validation entity F1 (seqeval, default
mode) and writes O/results.json with the keys the suite reads. It deliberately imports nothing from peftkit.

Scoring as run_ner: over the words the model saw (a word cut by --max_seq_length is dropped from the score,
where peftkit counts it as predicted O; none of the built-in sentences is that long).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch
from reference_common import (  # beside this script
    StepTimer,
    parser,
    peak_memory_bytes,
    resident_bytes,
    training_settings,
)
from transformers import DataCollatorForTokenClassification, Trainer, TrainingArguments


def lora_token_cls(args):
    """The suite's splits tokenized and aligned as run_ner does, and the model as peftkit's lora strategy builds it.
    Returns (tokenized splits, tokenizer, peft model, tag names)."""
    from datasets import load_dataset
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    data_dir = Path(args.data_dir)
    labels = json.loads((data_dir / "labels.json").read_text())
    label2id = {label: i for i, label in enumerate(labels)}
    raw = load_dataset("json", data_files={s: str(data_dir / f"{s}.jsonl") for s in ("train", "validation", "test")})
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)

    def encode(batch):
        enc = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=args.max_seq_length)
        enc["labels"] = []
        for i, tags in enumerate(batch["ner_tags"]):
            previous, row = None, []
            for word in enc.word_ids(i):
                row.append(-100 if word is None or word == previous else label2id[tags[word]])
                previous = word
            enc["labels"].append(row)
        return enc

    data = raw.map(encode, batched=True, remove_columns=raw["train"].column_names)
    model = AutoModelForTokenClassification.from_pretrained(
        args.model_name_or_path, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id,
        dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.TOKEN_CLS, r=8, lora_alpha=16, lora_dropout=0.1))
    return data, tokenizer, model, labels


def metrics_for(labels: list[str]):
    from seqeval.metrics import classification_report

    def compute_metrics(pred):
        predictions = pred.predictions.argmax(-1)
        refs, preds = [], []
        for p_row, l_row in zip(predictions, pred.label_ids, strict=True):
            keep = l_row != -100
            refs.append([labels[i] for i in l_row[keep]])
            preds.append([labels[i] for i in p_row[keep]])
        micro = classification_report(refs, preds, output_dict=True, zero_division=0)["micro avg"]
        words = sum(len(r) for r in refs)
        correct = sum(a == b for r, p in zip(refs, preds, strict=True) for a, b in zip(r, p, strict=True))
        return {"f1": float(micro["f1-score"]), "precision": float(micro["precision"]),
                "recall": float(micro["recall"]), "accuracy": correct / max(words, 1)}

    return compute_metrics


def main() -> int:
    args = parser(__doc__.splitlines()[0], epochs=6, batch=32, eval_batch=64, max_seq_length=128).parse_args()

    data, tokenizer, model, labels = lora_token_cls(args)
    loaded = resident_bytes()
    timer = StepTimer()
    training_args = TrainingArguments(**training_settings(args), metric_for_best_model="f1", logging_steps=10,
                                      disable_tqdm=False)
    trainer = Trainer(model=model, args=training_args, train_dataset=data["train"], eval_dataset=data["validation"],
                      data_collator=DataCollatorForTokenClassification(tokenizer), compute_metrics=metrics_for(labels),
                      callbacks=[timer])
    train_metrics = trainer.train().metrics
    test = trainer.evaluate(data["test"], metric_key_prefix="test")
    model.save_pretrained(args.output_dir)
    tokens = sum(len(ids) for ids in data["train"]["input_ids"]) * args.num_train_epochs
    results = {
        "strategy": "reference",
        "test": {k: test[f"test_{k}"] for k in ("f1", "precision", "recall", "accuracy", "loss")},
        "train_runtime_s": train_metrics["train_runtime"],
        "train_samples_per_s": train_metrics["train_samples_per_second"],
        "train_tokens_per_s": tokens / train_metrics["train_runtime"],
        "step_time_median_s": statistics.median(timer.times) if timer.times else None,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "peak_memory_bytes": int(peak_memory_bytes()), "loaded_memory_bytes": loaded,
    }
    (Path(args.output_dir) / "results.json").write_text(json.dumps(results, indent=2, default=float))
    print(f"reference: test entity F1 {results['test']['f1']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
