"""LoRA adapters on a BERT-like encoder for token classification (named-entity recognition); the new tagging
head trains fully and is saved with them.

    accelerate launch recipes/lora_token_cls.py                     # built-in MiniLM on WNUT-16 tweets (NER)
    accelerate launch recipes/lora_token_cls.py --train_file train.conll --validation_file dev.conll
    accelerate launch recipes/lora_token_cls.py --train_file ner.jsonl --text_column words --label_column tags
    python recipes/lora_token_cls.py --help                         # every flag, with its default

Tags are discovered from the training data (BIO, BIOES or plain types); the metric is entity-level F1.
"""

from peftkit.cli import train_main

if __name__ == "__main__":
    raise SystemExit(train_main(task="token_cls", strategy="lora", prog="lora_token_cls.py"))
