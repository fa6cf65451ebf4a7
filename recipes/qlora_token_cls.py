"""QLoRA for token classification (NER): LoRA on a 4-bit NF4 base (bitsandbytes); runs on CPU too. The
tagging head trains fully and is saved with the adapter.

    accelerate launch recipes/qlora_token_cls.py                     # built-in MiniLM on WNUT-16 tweets (NER)
    accelerate launch recipes/qlora_token_cls.py --train_file train.conll --validation_file dev.conll
    python recipes/qlora_token_cls.py --help                         # every flag, with its default

Flags may also come from a YAML/JSON file: --config my_run.yaml (flags on the command line win).
"""

from peftkit.cli import train_main

if __name__ == "__main__":
    raise SystemExit(train_main(task="token_cls", strategy="qlora", prog="qlora_token_cls.py"))
