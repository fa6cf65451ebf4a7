"""Head-only tagging: the backbone is frozen, its per-token features are computed once and cached, and only
the new tagging layer trains.

    accelerate launch recipes/head_token_cls.py                     # built-in MiniLM on WNUT-16 tweets (NER)
    accelerate launch recipes/head_token_cls.py --train_file train.conll --validation_file dev.conll
    python recipes/head_token_cls.py --help                         # every flag, with its default

Flags may also come from a YAML/JSON file: --config my_run.yaml (flags on the command line win).
"""

from peftkit.cli import train_main

if __name__ == "__main__":
    raise SystemExit(train_main(task="token_cls", strategy="head", prog="head_token_cls.py"))
