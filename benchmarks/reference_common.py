"""What the stock reference scripts share (they import nothing from peftkit): step timing and peak memory."""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path

import torch
from transformers import TrainerCallback


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step, as the Trainer reports its begin and end."""

    def __init__(self):
        self.times, self.last = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self.last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.last)


def peak_memory_bytes() -> int:
    """CUDA max allocated on GPU; otherwise the process's peak resident set size (as peftkit reports it)."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024))


def lora_text_cls(args):
    """The suite's text_cls splits (D/{train,validation,test}.csv, columns text,label) tokenized as peftkit does,
    and the model as peftkit's lora strategy builds it: r=8, alpha=16, dropout 0.1, peft's default target modules,
    the classifier trained in full. Returns (tokenized splits, tokenizer, peft model)."""
    from datasets import load_dataset
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    files = {s: str(Path(args.data_dir) / f"{s}.csv") for s in ("train", "validation", "test")}
    raw = load_dataset("csv", data_files=files)
    labels = sorted(set(raw["train"]["label"]))
    label2id = {label: i for i, label in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)

    def encode(batch):
        enc = tokenizer(batch["text"], truncation=True, max_length=args.max_seq_length)
        enc["labels"] = [label2id[v] for v in batch["label"]]
        return enc

    data = raw.map(encode, batched=True, remove_columns=raw["train"].column_names)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model_name_or_path, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id,
        dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.1))
    return data, tokenizer, model


def resident_bytes() -> int | None:
    """The process's resident memory now (Linux; None elsewhere and on GPU, where peak memory has no interpreter
    baseline to see past). As peftkit.runner.resident_bytes, which these scripts must not import."""
    if torch.cuda.is_available():
        return None
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def parser(description: str, epochs: float, batch: int, eval_batch: int, max_seq_length: int):
    """The flags both reference scripts take, with the defaults of the peftkit recipe they stand beside."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--data_dir", required=True)
    ap.add_argument("--output_dir", required=True)
    ap.add_argument("--model_name_or_path", required=True)
    ap.add_argument("--learning_rate", type=float, default=2e-3)  # peftkit's lora default
    ap.add_argument("--num_train_epochs", type=float, default=epochs)
    ap.add_argument("--per_device_train_batch_size", type=int, default=batch)
    ap.add_argument("--per_device_eval_batch_size", type=int, default=eval_batch)
    ap.add_argument("--max_seq_length", type=int, default=max_seq_length)
    ap.add_argument("--seed", type=int, default=42)
    return ap


def training_settings(args) -> dict:
    """Trainer settings shared with peftkit's defaults: AdamW, 0.01 decay, 6% warm-up then linear decay,
    clipping at 1, an evaluation per epoch whose best is kept."""
    return dict(output_dir=args.output_dir, learning_rate=args.learning_rate, num_train_epochs=args.num_train_epochs,
                per_device_train_batch_size=args.per_device_train_batch_size,
                # warmup_steps below 1 is a ratio in transformers 5 (warmup_ratio is gone).
                per_device_eval_batch_size=args.per_device_eval_batch_size, weight_decay=0.01, warmup_steps=0.06,
                lr_scheduler_type="linear", max_grad_norm=1.0, seed=args.seed, eval_strategy="epoch",
                save_strategy="epoch", save_total_limit=1, load_best_model_at_end=True, report_to=[],
                use_cpu=not torch.cuda.is_available())
