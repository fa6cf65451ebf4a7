"""LoRA preference tuning (DPO) of a causal LM on pairs of a chosen and a rejected answer.

    accelerate launch recipes/lora_dpo.py                        # built-in SmolLM2-135M-Instruct, review pairs
    accelerate launch recipes/lora_dpo.py --train_file pairs.jsonl --chosen_column good --rejected_column bad
    accelerate launch recipes/lora_dpo.py --loss_type simpo      # or ipo; --beta sets the strength
    python recipes/lora_dpo.py --help                            # every flag, with its default

Data: prompt / chosen / rejected as text or as conversations (lists of {role, content} turns, rendered by the
model's chat template); without a prompt column the prompt is what chosen and rejected share. The reference
is the base model with the adapters switched off. At the end the base model and the tuned one are scored on
the held-out pairs (how often each finds the chosen answer more likely) and answer the held-out prompts; both
go to results.json.
"""

from peftkit.cli import train_main

if __name__ == "__main__":
    raise SystemExit(train_main(task="preference", strategy="lora", prog="lora_dpo.py"))
