"""Full SFT: every weight of the causal LM trains; the reference the adapter recipes are measured against.

    accelerate launch recipes/full_sft.py                        # built-in SmolLM2-135M-Instruct, review questions
    accelerate launch recipes/full_sft.py --train_file chats.jsonl --learning_rate 2e-5
    python recipes/full_sft.py --help                            # every flag, with its default
"""

from peftkit.cli import train_main

if __name__ == "__main__":
    raise SystemExit(train_main(task="causal_lm", strategy="full", prog="full_sft.py"))
