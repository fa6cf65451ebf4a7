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


def render_prompt(tokenizer, prompt: Any, chat: bool) -> str:
    """A prompt as the model reads it: a conversation so far (its last turn dropped when it is the assistant's
    answer), or with ``chat`` a string as the user's turn, through the chat template with the generation prompt;
    other strings as they are."""
    from peftkit.tasks.sft_data import require_template

    if isinstance(prompt, str) and chat:
        prompt = [{"role": "user", "content": prompt}]
    if isinstance(prompt, list):
        require_template(tokenizer)
        if prompt and prompt[-1].get("role") == "assistant":
            prompt = prompt[:-1]  # a conversation with its answer: generate the answer again
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return prompt


def read_prompts(path: str | None, column: str | None, candidates: list[str | None]) -> list[dict[str, Any]]:
    """What `peftkit predict` generates for: lines of stdin or a .txt file (each a user message), or a data file's
    ``column`` (default: the first of ``candidates`` it has)."""
    from peftkit.data import ORIGIN, load_file, read_lines
    from peftkit.errors import check

    lines = read_lines(path)
    if lines is not None:
        return [{"prompt": line} for _, line in lines]
    ds = load_file(path)
    if column is None:
        column = next((c for c in candidates if c and c in ds.column_names), None)
    check(column is not None and column in ds.column_names, f"{path} has no prompt column (columns: "
          f"{', '.join(c for c in ds.column_names if c != ORIGIN)}); pass --text_column with the one to use.")
    return [{"prompt": value} for value in ds[column]]
