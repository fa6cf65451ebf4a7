"""LoRA supervised fine-tuning (SFT) of a causal LM on chat, prompt/completion or plain-text data.

    accelerate launch recipes/lora_sft.py                        # built-in SmolLM2-135M-Instruct, review questions
    accelerate launch recipes/lora_sft.py --train_file chats.jsonl --messages_column conversation
    accelerate launch recipes/lora_sft.py --train_file pairs.csv --prompt_column question --completion_column answer
    python recipes/lora_sft.py --help                            # every flag, with its default

The loss falls on assistant turns / completions only (--train_on_prompt for all tokens); --packing packs
short examples into --max_seq_length rows. At the end the base model and the fine-tuned one answer the
held-out prompts, and both scores are printed and saved in results.json.
"""

from peftkit.cli import train_main

if __name__ == "__main__":
    raise SystemExit(train_main(task="causal_lm", strategy="lora", prog="lora_sft.py"))
