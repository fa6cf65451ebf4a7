"""The SFT route a user takes without peftkit: TRL's `SFTTrainer` with a peft LoRA config, on the same data.

    python benchmarks/reference_sft.py --data_dir D --output_dir O --model_name_or_path M \
        --learning_rate 2e-3 --num_train_epochs 1 --per_device_train_batch_size 8 --seed 42

Reads D/{train,validation,test}.jsonl (conversational prompt/completion rows, written by the suite), trains
LoRA (r=8, alpha=16, dropout 0.1, peft's default target modules) with the hyper-parameters of peftkit's lora
strategy and TRL's defaults for the rest (completion-only loss), keeps the best epoch by validation loss,
greedily answers the first --max_generation_samples test prompts and writes O/predictions.jsonl and
O/results.json with the keys the suite reads. It deliberately imports nothing from peftkit (the suite scores
the predictions with the same exact-match and token-F1 code as peftkit's runs).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch
from datasets import load_dataset
from peft import LoraConfig
from reference_common import StepTimer, parser, peak_memory_bytes, training_settings  # beside this script
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer


@torch.no_grad()
def answer(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, batch_size: int = 16) -> list[str]:
    """Greedy answers, left-padded batches, the chat template's generation prompt appended."""
    tokenizer.padding_side = "left"
    model.eval()
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(model.device)
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        out += [t.strip() for t in tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)]
    return out


def main() -> int:
    ap = parser(__doc__.splitlines()[0], epochs=1, batch=8, eval_batch=16, max_seq_length=512)
    ap.add_argument("--max_generation_samples", type=int, default=200)
    ap.add_argument("--generation_max_new_tokens", type=int, default=32)
    args = ap.parse_args()

    files = {s: str(Path(args.data_dir) / f"{s}.jsonl") for s in ("train", "validation", "test")}
    raw = load_dataset("json", data_files=files)
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path, dtype=torch.float32)
    timer = StepTimer()
    # TRL's SFTConfig turns bf16 autocast and gradient checkpointing on by default; peftkit's runs use
    # neither unless asked, so the reference does the same job.
    config = SFTConfig(**training_settings(args), metric_for_best_model="eval_loss", logging_steps=10,
                       max_length=args.max_seq_length, bf16=False, gradient_checkpointing=False)
    trainer = SFTTrainer(model=model, args=config, train_dataset=raw["train"], eval_dataset=raw["validation"],
                         processing_class=tokenizer, callbacks=[timer],
                         peft_config=LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.1))
    train_metrics = trainer.train().metrics
    validation = trainer.evaluate()
    test = raw["test"].select(range(min(args.max_generation_samples, len(raw["test"]))))
    outputs = answer(trainer.model, tokenizer, test["prompt"], args.generation_max_new_tokens)
    rows = [{"prompt": p, "reference": c[-1]["content"], "output": o}
            for p, c, o in zip(test["prompt"], test["completion"], outputs, strict=True)]
    (Path(args.output_dir) / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    trainer.model.save_pretrained(args.output_dir)
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"]) * args.num_train_epochs
    peak = peak_memory_bytes()
    results = {
        "strategy": "reference", "eval": {"loss": validation["eval_loss"]},
        "train_runtime_s": train_metrics["train_runtime"],
        "train_samples_per_s": train_metrics["train_samples_per_second"],
        "train_tokens_per_s": tokens / train_metrics["train_runtime"],
        "step_time_median_s": statistics.median(timer.times) if timer.times else None,
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "peak_memory_bytes": int(peak),
    }
    (Path(args.output_dir) / "results.json").write_text(json.dumps(results, indent=2))
    print(f"reference: validation loss {validation['eval_loss']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
