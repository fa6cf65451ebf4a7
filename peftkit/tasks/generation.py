"""Greedy generation on held-out prompts, scored by exact match and token F1 (SQuAD-style normalisation)."""

from __future__ import annotations

import collections
import re
import string
from typing import Any

import torch
from tqdm.auto import tqdm

ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces: how SQuAD compares answers."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def score(rows: list[dict[str, Any]]) -> dict[str, float]:
    n = len(rows)
    return {"exact_match": sum(exact_match(r["output"], r["reference"]) for r in rows) / n,
            "token_f1": sum(token_f1(r["output"], r["reference"]) for r in rows) / n, "samples": n}


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 16,
             show_progress: bool = True) -> list[str]:
    """Greedy continuations of ``prompts`` (already rendered: chat template applied where there is one)."""
    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues the last real token of every row
    was_training = model.training
    model.eval()
    stops = [t for t in {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")
                         if "<|im_end|>" in tokenizer.get_vocab() else None} if t is not None]
    outputs: list[str] = []
    try:
        for i in tqdm(range(0, len(prompts), batch_size), desc="Generating", disable=not show_progress):
            enc = tokenizer(prompts[i:i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = enc.to(device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=stops or None,
                                 temperature=None, top_p=None, top_k=None)
            new = out[:, enc["input_ids"].shape[1]:]
            outputs += [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return outputs
