"""Head-only training (feature extraction): the backbone is frozen, its features are computed once and cached.

    accelerate launch recipes/head_text_cls.py                      # built-in MiniLM on Rotten Tomatoes
    accelerate launch recipes/head_text_cls.py --train_file my.csv --text_column review --label_column stars
    python recipes/head_text_cls.py --help                          # every flag, with its default

Flags may also come from a YAML/JSON file: --config my_run.yaml (flags on the command line win).
"""

from peftkit.cli import train_main

if __name__ == "__main__":
    raise SystemExit(train_main(task="text_cls", strategy="head", prog="head_text_cls.py"))
