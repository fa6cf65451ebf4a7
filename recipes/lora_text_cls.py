"""LoRA adapters (peft) on the attention projections; the new head trains fully and is saved with them.

    accelerate launch recipes/lora_text_cls.py                      # built-in MiniLM on Rotten Tomatoes
    accelerate launch recipes/lora_text_cls.py --train_file my.csv --text_column review --label_column stars
    python recipes/lora_text_cls.py --help                          # every flag, with its default

Flags may also come from a YAML/JSON file: --config my_run.yaml (flags on the command line win).
"""

from peftkit.cli import train_main

if __name__ == "__main__":
    raise SystemExit(train_main(task="text_cls", strategy="lora", prog="lora_text_cls.py"))
