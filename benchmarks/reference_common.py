"""What the stock reference scripts share (they import nothing from peftkit): step timing and peak memory."""

from __future__ import annotations

import resource
import sys
import time

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
