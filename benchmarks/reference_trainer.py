"""The route a user takes without peftkit: stock transformers `Trainer` + peft LoRA, on the same data.

    python benchmarks/reference_trainer.py --data_dir D --output_dir O --model_name_or_path M \
        --learning_rate 2e-3 --num_train_epochs 2 --per_device_train_batch_size 32 --seed 42

Reads D/{train,validation,test}.csv (columns text,label) written by the suite, trains LoRA (r=8, alpha=16,
dropout 0.1, peft's default target modules, the classifier in modules_to_save) with the same
hyper-parameters as peftkit's lora strategy, keeps the best epoch by validation accuracy, and writes
O/results.json with the keys the suite reads. It deliberately imports nothing from peftkit.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from reference_common import (  # beside this script
    StepTimer,
    lora_text_cls,
    parser,
    peak_memory_bytes,
    resident_bytes,
    training_settings,
)
from transformers import (
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from peftkit.metrics import macro_f1


def compute_metrics(pred):
    preds = pred.predictions.argmax(-1)
    return {"accuracy": float((preds == pred.label_ids).mean()), "f1": macro_f1(preds, pred.label_ids)}


def main() -> int:
    args = parser(__doc__.splitlines()[0], epochs=2, batch=32, eval_batch=64, max_seq_length=128).parse_args()

    data, tokenizer, model = lora_text_cls(args)
    loaded = resident_bytes()
    timer = StepTimer()
    training_args = TrainingArguments(**training_settings(args), metric_for_best_model="accuracy", logging_steps=10,
                                      disable_tqdm=False)
    trainer = Trainer(model=model, args=training_args, train_dataset=data["train"], eval_dataset=data["validation"],
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=compute_metrics,
                      callbacks=[timer])
    train_metrics = trainer.train().metrics
    test = trainer.evaluate(data["test"], metric_key_prefix="test")
    model.save_pretrained(args.output_dir)
    tokens = sum(len(ids) for ids in data["train"]["input_ids"]) * args.num_train_epochs
    peak = peak_memory_bytes()
    results = {
        "strategy": "reference", "test": {"accuracy": test["test_accuracy"], "f1": test["test_f1"],
                                          "loss": test["test_loss"]},
        "train_runtime_s": train_metrics["train_runtime"],
        "train_samples_per_s": train_metrics["train_samples_per_second"],
        "train_tokens_per_s": tokens / train_metrics["train_runtime"],
        "step_time_median_s": statistics.median(timer.times) if timer.times else None,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "peak_memory_bytes": int(peak), "loaded_memory_bytes": loaded,
    }
    (Path(args.output_dir) / "results.json").write_text(json.dumps(results, indent=2))
    print(f"reference: test accuracy {results['test']['accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
