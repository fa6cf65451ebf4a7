"""QLoRA SFT: the LoRA SFT recipe on a 4-bit NF4 base (bitsandbytes, double quantization); runs on CPU too.

    accelerate launch recipes/qlora_sft.py                       # built-in SmolLM2-135M-Instruct, review questions
    accelerate launch recipes/qlora_sft.py --model_name_or_path my/llama-dir --train_file chats.jsonl
    python recipes/qlora_sft.py --help                           # every flag, with its default

The same as `recipes/lora_sft.py --quantization nf4`; --quantization int8 for 8-bit.
"""

from peftkit.cli import train_main

if __name__ == "__main__":
    raise SystemExit(train_main(task="causal_lm", strategy="qlora", prog="qlora_sft.py"))
