"""Partial freezing: the top --num_trainable_layers transformer layers (default 2) and the head train.

    accelerate launch recipes/partial_text_cls.py                      # built-in MiniLM on Rotten Tomatoes
    accelerate launch recipes/partial_text_cls.py --train_file my.csv --text_column review --label_column stars
    python recipes/partial_text_cls.py --help                          # every flag, with its default

Flags may also come from a YAML/JSON file: --config my_run.yaml (flags on the command line win).
"""

from peftkit.cli import train_main

if __name__ == "__main__":
    raise SystemExit(train_main(task="text_cls", strategy="partial", prog="partial_text_cls.py"))
