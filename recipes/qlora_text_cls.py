"""QLoRA: the same LoRA on a 4-bit NF4 base (bitsandbytes, double quantization); runs on CPU too.

    accelerate launch recipes/qlora_text_cls.py                      # built-in MiniLM on Rotten Tomatoes
    accelerate launch recipes/qlora_text_cls.py --train_file my.csv --text_column review --label_column stars
    python recipes/qlora_text_cls.py --help                          # every flag, with its default

Flags may also come from a YAML/JSON file: --config my_run.yaml (flags on the command line win).
"""

from peftkit.cli import train_main

if __name__ == "__main__":
    raise SystemExit(train_main(task="text_cls", strategy="qlora", prog="qlora_text_cls.py"))
