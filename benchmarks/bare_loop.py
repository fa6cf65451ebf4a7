"""The floor under every training tool: a bare torch loop training the same LoRA model on the same batches.

    python benchmarks/bare_loop.py --data_dir D --output_dir O --model_name_or_path M \
        --learning_rate 2e-3 --num_train_epochs 2 --per_device_train_batch_size 32 --seed 42

No Accelerate, no Trainer, no peftkit engine: tokenize D/{train,validation,test}.csv (columns text,label), wrap
the model in peft LoRA as peftkit's lora strategy does (r=8, alpha=16, dropout 0.1, peft's default target
modules, the classifier trained in full), and run AdamW (decay 0.01, none on biases and norms) with 6% warm-up
and linear decay, clipping at 1, one validation pass per epoch keeping the best weights, and the test split at
the end. The batches are peftkit's: the only things imported from peftkit are its samplers (pure torch, seeded the
same way), so that the engine's overhead over this loop is measured on identical work. Writes
O/results.json with the keys the suite reads.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import torch
from reference_common import lora_text_cls, parser, peak_memory_bytes, resident_bytes  # beside this script
from torch.utils.data import DataLoader
from transformers import (
    DataCollatorWithPadding,
    get_linear_schedule_with_warmup,
)

from peftkit.metrics import macro_f1
from peftkit.sampling import LengthGroupedSampler, LengthSortedSampler


@torch.no_grad()
def evaluate(model, loader) -> dict[str, float]:
    """Accuracy, macro F1 and mean loss over the split."""
    model.eval()
    preds, refs, loss_sum = [], [], 0.0
    for batch in loader:
        out = model(**batch)
        loss_sum += out.loss.item() * len(batch["labels"])
        preds += out.logits.argmax(-1).tolist()
        refs += batch["labels"].tolist()
    model.train()
    return {"accuracy": sum(p == r for p, r in zip(preds, refs, strict=True)) / len(refs),
            "f1": macro_f1(preds, refs), "loss": loss_sum / len(refs)}


def main() -> int:
    ap = parser(__doc__.splitlines()[0], epochs=2, batch=32, eval_batch=64, max_seq_length=128)
    ap.add_argument("--group_by_length", default="true", choices=["true", "false"],
                    help="batches as peftkit's --group_by_length makes them (its default), or random ones")
    args = ap.parse_args()
    torch.manual_seed(args.seed)

    data, tokenizer, model = lora_text_cls(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).train()
    loaded = resident_bytes()

    collate = DataCollatorWithPadding(tokenizer)
    generator = torch.Generator().manual_seed(args.seed)
    train = data["train"]
    if args.group_by_length == "true":
        sampler = LengthGroupedSampler([len(ids) for ids in train["input_ids"]], args.per_device_train_batch_size,
                                       generator)
        # generator= as peftkit passes it: the loader then draws its per-epoch base seed from it (before the
        # sampler's draws) instead of from the global RNG that dropout uses, so both loops see the same batches.
        train_loader = DataLoader(train, batch_size=args.per_device_train_batch_size, sampler=sampler,
                                  collate_fn=collate, generator=generator)
    else:
        train_loader = DataLoader(train, batch_size=args.per_device_train_batch_size, shuffle=True,
                                  generator=generator, collate_fn=collate)
    # Evaluation batches as peftkit orders them (longest first; pure torch, like the sampler above).
    eval_loader = {s: DataLoader(data[s], batch_size=args.per_device_eval_batch_size, collate_fn=collate,
                                 sampler=LengthSortedSampler([len(ids) for ids in data[s]["input_ids"]]))
                   for s in ("validation", "test")}

    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trainable if p.ndim >= 2 and "norm" not in n.lower()]
    no_decay = [p for n, p in trainable if not (p.ndim >= 2 and "norm" not in n.lower())]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.learning_rate)
    total = math.ceil(args.num_train_epochs * len(train_loader))
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(0.06 * total), total)

    def to_device(batch):
        return {k: v.to(device) for k, v in batch.items()}

    step, step_times, samples, tokens, best, best_state = 0, [], 0, 0, -1.0, None
    start = time.perf_counter()
    for _epoch in range(math.ceil(args.num_train_epochs)):
        last = time.perf_counter()
        for batch in train_loader:
            batch = to_device(batch)
            tokens += int(batch["attention_mask"].sum())
            samples += len(batch["labels"])
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in trainable], 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            now = time.perf_counter()
            step_times.append(now - last)
            last = now
            if step >= total:
                break
        metrics = evaluate(model, (to_device(b) for b in eval_loader["validation"]))
        if metrics["accuracy"] > best:
            best, best_state = metrics["accuracy"], {n: p.detach().clone() for n, p in trainable}
        if step >= total:
            break
    runtime = time.perf_counter() - start
    with torch.no_grad():
        for n, p in trainable:
            p.copy_(best_state[n])
    test = evaluate(model, (to_device(b) for b in eval_loader["test"]))
    peak = peak_memory_bytes()
    results = {
        "strategy": "bare_loop", "test": test, "best_validation_accuracy": best,
        "train_runtime_s": runtime, "train_samples_per_s": samples / runtime,
        "train_tokens_per_s": tokens / runtime, "global_step": step,
        "step_time_median_s": statistics.median(step_times) if step_times else None,
        "trainable_params": sum(p.numel() for _, p in trainable),
        "peak_memory_bytes": int(peak), "loaded_memory_bytes": loaded,
    }
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.output_dir) / "results.json").write_text(json.dumps(results, indent=2))
    print(f"bare loop: test accuracy {test['accuracy']:.4f}, {runtime:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
