"""Full fine-tuning: every weight trains. The reference the other strategies are measured against.

    accelerate launch recipes/full_text_cls.py                      # built-in MiniLM on Rotten Tomatoes
    accelerate launch recipes/full_text_cls.py --train_file my.csv --text_column review --label_column stars
    python recipes/full_text_cls.py --help                          # every flag, with its default

Flags may also come from a YAML/JSON file: --config my_run.yaml (flags on the command line win).
"""

from peftkit.cli import train_main

if __name__ == "__main__":
    raise SystemExit(train_main(task="text_cls", strategy="full", prog="full_text_cls.py"))
