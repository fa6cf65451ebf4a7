"""SFT data: the three formats TRL users know, checked, rendered, tokenized with a loss mask, and packed.

- ``messages``: a list of ``{role, content}`` turns, rendered by the tokenizer's chat template; the loss
  falls on the assistant turns (their end-of-turn token included).
- ``prompt_completion``: two columns of text (concatenated, EOS after the completion; no template, as TRL
  does for plain strings) or of turns (conversational: rendered by the template); the loss falls on the
  completion.
- ``text``: plain text for continued pre-training; every token carries loss, EOS appended.

An example becomes ``input_ids`` and ``labels`` (-100 where no loss falls). ``--train_on_prompt`` puts the
loss on every token.
"""

from __future__ import annotations

import logging
from typing import Any

from datasets import Dataset

from peftkit.data import where
from peftkit.errors import PeftkitError, check

logger = logging.getLogger(__name__)
ROLES = ("system", "user", "assistant")
IGNORE = -100


def check_conversations(ds: Dataset, column: str, split: str) -> None:
    """Every value a list of turns with a known role and text content, with at least one assistant turn that
    says something."""
    problems: dict[str, list[int]] = {}
    for i, turns in enumerate(ds[column]):
        if not isinstance(turns, list) or not turns or not all(isinstance(t, dict) for t in turns):
            problems.setdefault("is not a list of {role, content} turns", []).append(i)
            continue
        if any(not isinstance(t.get("content"), str) for t in turns):
            problems.setdefault("has a turn without text content", []).append(i)
        elif any(t.get("role") not in ROLES for t in turns):
            bad = sorted({str(t.get("role")) for t in turns if t.get("role") not in ROLES})
            problems.setdefault(f"has unknown role(s) {', '.join(bad)} (known: {', '.join(ROLES)})", []).append(i)
        elif not any(t["role"] == "assistant" for t in turns):
            problems.setdefault("has no assistant turn (nothing to learn)", []).append(i)
        elif any(t["role"] == "assistant" and not t["content"].strip() for t in turns):
            problems.setdefault("has an empty assistant turn", []).append(i)
    for what, rows in problems.items():
        raise PeftkitError(f"Column {column!r} of the {split} data: {len(rows)} conversation(s) {what}: "
                           f"{where(ds, rows)}. Each value must be a list like [{{\"role\": \"user\", \"content\": "
                           "\"...\"}, {\"role\": \"assistant\", \"content\": \"...\"}]. Fix or drop those rows.")


def check_texts(ds: Dataset, column: str, split: str, what: str, allow_turns: bool = False) -> None:
    values = ds[column]
    bad = [i for i, v in enumerate(values) if not (isinstance(v, str) or (allow_turns and isinstance(v, list)))]
    check(not bad, f"Column {column!r} ({what}) of the {split} data holds {len(bad)} value(s) that are not text "
          f"({where(ds, bad)}; e.g. {values[bad[0]]!r}). Pick the right column or convert it to text." if bad else "")
    empty = [i for i, v in enumerate(values) if not v or (isinstance(v, str) and not v.strip())]
    check(not empty, f"Column {column!r} ({what}) of the {split} data holds {len(empty)} empty value(s) "
          f"({where(ds, empty)}): an empty {what} teaches nothing. Drop or fill those rows.")


def require_template(tokenizer) -> None:
    check(getattr(tokenizer, "chat_template", None) is not None,
          "This model's tokenizer has no chat template, so conversations (a messages column, or prompt/completion "
          "given as turns) cannot be rendered. Use a chat model (e.g. an -Instruct one), give the data as plain "
          "--prompt_column/--completion_column text, or add a template to the tokenizer (tokenizer.chat_template) "
          "and pass that directory as --tokenizer_name.")


def render_conversation(tokenizer, turns: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The conversation as the chat template writes it, and the character spans of its assistant turns (each
    from the end of the generation prompt before it to the end of the turn, end-of-turn token included)."""
    full = tokenizer.apply_chat_template(turns, tokenize=False)
    spans = []
    for i, turn in enumerate(turns):
        if turn["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(turns[:i], tokenize=False, add_generation_prompt=True) if i else ""
        through = tokenizer.apply_chat_template(turns[:i + 1], tokenize=False)
        if not (full.startswith(through) and through.startswith(before)):
            raise PeftkitError("This chat template does not render a conversation's beginning the same way as the "
                               "whole (it rewrites earlier turns), so the assistant turns cannot be located for the "
                               "loss. Give the data as prompt/completion columns, or pass --train_on_prompt.")
        spans.append((len(before), len(through)))
    return full, spans


def tokenize_with_mask(tokenizer, text: str, spans: list[tuple[int, int]] | None, max_length: int,
                       add_eos: bool) -> tuple[list[int], list[int], bool]:
    """``(input_ids, labels, truncated)``. ``spans``: character ranges that carry loss (None: all of it)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=spans is not None)
    ids = list(enc["input_ids"])
    if spans is None:
        mask = [True] * len(ids)
    else:
        mask = [any(start < end and a <= start < b for a, b in spans) for start, end in enc["offset_mapping"]]
    if add_eos and tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
        mask.append(True)
    truncated = len(ids) > max_length
    ids, mask = ids[:max_length], mask[:max_length]
    return ids, [t if m else IGNORE for t, m in zip(ids, mask, strict=True)], truncated


def encode_example(tokenizer, fmt: str, row: dict[str, Any], columns: dict[str, str], max_length: int,
                   train_on_prompt: bool) -> tuple[list[int], list[int], bool]:
    """One raw example as ``(input_ids, labels, truncated)``."""
    if fmt == "messages":
        text, spans = render_conversation(tokenizer, row[columns["messages"]])
        return tokenize_with_mask(tokenizer, text, None if train_on_prompt else spans, max_length, add_eos=False)
    if fmt == "text":
        return tokenize_with_mask(tokenizer, row[columns["text"]], None, max_length, add_eos=True)
    prompt, completion = row[columns["prompt"]], row[columns["completion"]]
    if isinstance(prompt, list):  # conversational prompt/completion: the template renders both
        turns = prompt + (completion if isinstance(completion, list) else
                          [{"role": "assistant", "content": completion}])
        text, _ = render_conversation(tokenizer, turns)
        start = len(tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True))
        spans = [(start, len(text))]
        return tokenize_with_mask(tokenizer, text, None if train_on_prompt else spans, max_length, add_eos=False)
    text = prompt + completion
    spans = [(len(prompt), len(text) + 1)]
    return tokenize_with_mask(tokenizer, text, None if train_on_prompt else spans, max_length, add_eos=True)


def pack(rows: list[dict[str, list[int]]], max_length: int) -> list[dict[str, list[int]]]:
    """Greedy, in data order: examples are appended to the current row until the next would overflow it.
    ``position_ids`` restart at 0 with each example: transformers builds a block-diagonal causal mask from
    them, so attention never crosses an example boundary. No example is split between rows."""
    packed: list[dict[str, list[int]]] = []
    current: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    for row in rows:
        n = len(row["input_ids"])
        if current["input_ids"] and len(current["input_ids"]) + n > max_length:
            packed.append(current)
            current = {"input_ids": [], "labels": [], "position_ids": []}
        current["input_ids"] += row["input_ids"]
        # The first label of each example would be predicted from the previous example's last token.
        current["labels"] += [IGNORE] + row["labels"][1:]
        current["position_ids"] += list(range(n))
    if current["input_ids"]:
        packed.append(current)
    return packed
