"""The DPO route a user takes without peftkit: TRL's `DPOTrainer` with a peft LoRA config, on the same pairs.

    python benchmarks/reference_dpo.py --data_dir D --output_dir O --model_name_or_path M \
        --learning_rate 5e-4 --num_train_epochs 1 --per_device_train_batch_size 8 --beta 0.1 --seed 42

Reads D/{train,validation,test}.jsonl (conversational prompt/chosen/rejected rows, written by the suite), trains
LoRA (r=8, alpha=16, dropout 0.1, peft's default target modules) with the hyper-parameters of peftkit's run and
TRL's defaults for the rest (the reference: the base with the adapter off, computed at every step), keeps the best
epoch by validation loss, evaluates the test pairs and writes O/results.json with the keys the suite reads. It
imports nothing from peftkit.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch
from datasets import load_dataset
from peft import LoraConfig
from reference_common import StepTimer, parser, peak_memory_bytes, resident_bytes, training_settings
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

NAMES = {"rewards/accuracies": "reward_accuracy", "rewards/margins": "reward_margin", "logps/chosen": "logps_chosen",
         "logps/rejected": "logps_rejected", "loss": "loss"}


def metrics(found: dict, prefix: str) -> dict:
    """TRL's evaluation metrics under peftkit's names. TRL logs its own metrics (rewards, log-probabilities) of any
    evaluation as ``eval_...`` whatever the prefix (they are those of the evaluation just made: it clears them
    after each log), and averages them over batches, so a smaller last batch weighs more than its pairs would."""
    return {ours: found.get(f"{prefix}_{theirs}", found.get(f"eval_{theirs}")) for theirs, ours in NAMES.items()}


def main() -> int:
    ap = parser(__doc__.splitlines()[0], epochs=1, batch=8, eval_batch=16, max_seq_length=512)
    ap.add_argument("--beta", type=float, default=0.1)
    # The suite passes what it passes every language-model reference; TRL's DPO is scored on the pairs alone.
    ap.add_argument("--max_generation_samples", type=int, default=0, help="unused")
    ap.add_argument("--generation_max_new_tokens", type=int, default=0, help="unused")
    args = ap.parse_args()

    files = {s: str(Path(args.data_dir) / f"{s}.jsonl") for s in ("train", "validation", "test")}
    raw = load_dataset("json", data_files=files)
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path, dtype=torch.float32)
    loaded = resident_bytes()
    timer = StepTimer()
    config = DPOConfig(**training_settings(args), metric_for_best_model="eval_loss", logging_steps=10,
                       max_length=args.max_seq_length, beta=args.beta, bf16=False, gradient_checkpointing=False)
    trainer = DPOTrainer(model=model, args=config, train_dataset=raw["train"], eval_dataset=raw["validation"],
                         processing_class=tokenizer, callbacks=[timer],
                         peft_config=LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.1))
    train_metrics = trainer.train().metrics
    validation = trainer.evaluate()
    test = trainer.evaluate(raw["test"], metric_key_prefix="test")
    trainer.model.save_pretrained(args.output_dir)
    data = trainer.train_dataset
    tokens = sum(2 * len(p) + len(c) + len(r) for p, c, r in zip(data["prompt_ids"], data["chosen_ids"],
                                                                   data["rejected_ids"], strict=True))
    runtime = train_metrics["train_runtime"]
    results = {
        "strategy": "reference", "eval": metrics(validation, "eval"), "test": metrics(test, "test"),
        "train_runtime_s": runtime, "train_samples_per_s": train_metrics["train_samples_per_second"],
        "train_tokens_per_s": tokens * args.num_train_epochs / runtime,
        "step_time_median_s": statistics.median(timer.times) if timer.times else None,
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "peak_memory_bytes": int(peak_memory_bytes()), "loaded_memory_bytes": loaded,
    }
    (Path(args.output_dir) / "results.json").write_text(json.dumps(results, indent=2))
    print(f"reference: validation loss {results['eval']['loss']:.4f}, test reward accuracy "
          f"{results['test']['reward_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
