"""Preference data: pairs of a chosen and a rejected answer to one prompt, in TRL's formats, checked, rendered and
tokenized so that the two answers follow the very same prompt tokens.

- standard: ``prompt``, ``chosen``, ``rejected`` hold text; the answers get the end-of-sequence token.
- conversational: they hold lists of ``{role, content}`` turns (``chosen``/``rejected`` the assistant's answer);
  the chat template renders them.
- implicit prompt: no prompt column; ``chosen`` and ``rejected`` are whole texts or conversations, and the prompt
  is what they share at the start (whole turns for conversations).

Token accounting (:func:`encode_pair`): the prompt is rendered and tokenized once; each answer is the text the
template adds after the prompt's generation prompt (whatever it puts at the start of the assistant turn included),
tokenized on its own and appended. Both rows thus hold the prompt's tokens exactly, whatever the tokenizer would
merge across the boundary. Too long a pair loses the start of its prompt first, down to a quarter of
--max_seq_length, and only then the ends of its answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from datasets import Dataset

from peftkit.data import where
from peftkit.errors import PeftkitError, check
from peftkit.tasks.sft_data import ROLES

PROMPT_FLOOR = 4  # a too long pair keeps at least 1/PROMPT_FLOOR of --max_seq_length of its prompt


def extract_prompt(chosen: Any, rejected: Any) -> tuple[Any, Any, Any]:
    """``(prompt, chosen answer, rejected answer)`` from two whole examples that share their start: the turns
    before the first that differs (conversations), or the text before the first differing character, moved back to
    a word boundary (text)."""
    if isinstance(chosen, list):
        i = 0
        while i < min(len(chosen), len(rejected)) and chosen[i] == rejected[i]:
            i += 1
        return chosen[:i], chosen[i:], rejected[i:]
    i = 0
    while i < min(len(chosen), len(rejected)) and chosen[i] == rejected[i]:
        i += 1
    while i > 0 and not chosen[i - 1].isspace():  # "... is positive" / "... is negative": split before the word
        i -= 1
    while i > 0 and chosen[i - 1].isspace():  # and before its space, which tokenizers join to the word (" four")
        i -= 1
    return chosen[:i], chosen[i:], rejected[i:]


def _turns_problem(value: Any, answer: bool) -> str | None:
    if not isinstance(value, list) or not value or not all(isinstance(t, dict) for t in value):
        return "is not a non-empty list of {role, content} turns"
    if any(not isinstance(t.get("content"), str) for t in value):
        return "has a turn without text content"
    if any(t.get("role") not in ROLES for t in value):
        return f"has an unknown role (known: {', '.join(ROLES)})"
    if answer and not any(t["role"] == "assistant" and t["content"].strip() for t in value):
        return "has no assistant turn that says something"
    if not answer and value[-1]["role"] == "assistant":
        return "ends with an assistant turn (the prompt must end where the answer begins)"
    return None


def check_pairs(ds: Dataset, columns: dict[str, str | None], split: str) -> bool:
    """Every pair in one format, with an answer to learn from; return whether the data is conversational."""
    kinds = {name: {type(v).__name__ for v in ds[column]} for name, column in columns.items() if column}
    first = next(iter(kinds["chosen"]))
    conversational = first == "list"
    for name, found in kinds.items():
        check(found <= {"str", "list"}, f"Column {columns[name]!r} ({name}) of the {split} data holds "
              f"{', '.join(sorted(found - {'str', 'list'}))} values: it must hold text, or lists of "
              "{role, content} turns.")
        check(len(found) == 1 and (name == "prompt" or found == {first}), f"Column {columns[name]!r} ({name}) of "
              f"the {split} data mixes text and conversations (lists of turns): give every pair in one format.")
        check(name != "prompt" or found <= {"str", first}, f"Column {columns[name]!r} (prompt) of the {split} data "
              "holds conversations while the answers are text: give the answers as the assistant's turns "
              '([{"role": "assistant", "content": "..."}]), or the prompt as text.')
    implicit = columns.get("prompt") is None
    problems: dict[str, list[int]] = {}
    for i, row in enumerate(ds.select_columns([c for c in columns.values() if c]).to_list()):
        for name in ("chosen", "rejected") + (() if implicit else ("prompt",)):
            value = row[columns[name]]
            if isinstance(value, list):
                problem = _turns_problem(value, answer=name != "prompt")
            else:
                problem = None if value.strip() else "is empty"
            if problem:
                problems.setdefault(f"{name} ({columns[name]!r}) {problem}", []).append(i)
    for what, rows in problems.items():
        raise PeftkitError(f"The {split} data: {len(rows)} pair(s) whose {what}: {where(ds, rows)}. Fix or drop those "
                           "rows.")
    return conversational


@dataclass
class Counts:
    """What encoding a split did to its pairs: reported, never silent."""

    pairs: int = 0
    prompt_cut: int = 0
    answer_cut: int = 0
    same: list[int] = field(default_factory=list)  # chosen and rejected identical (after any cut)
    empty: list[int] = field(default_factory=list)  # an answer left without tokens


def render(tokenizer, prompt: Any, chosen: Any, rejected: Any) -> tuple[str, str, str]:
    """The prompt as the model reads it, and each answer as the text that follows it. Conversations: the template
    renders the prompt with its generation prompt, and each answer is what rendering prompt + answer adds after
    it (refused when the whole does not begin with the prompt's rendering)."""
    if not isinstance(chosen, list):
        return prompt, chosen, rejected
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    start = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    answers = []
    for answer in (chosen, rejected):
        whole = tokenizer.apply_chat_template(prompt + answer, tokenize=False)
        if not whole.startswith(start):
            raise PeftkitError("This chat template renders a conversation's prompt differently once an answer follows "
                               f"it (prompt {start[-60:]!r} is not the start of {whole[:len(start) + 20][-80:]!r}), "
                               "so the answer's tokens cannot be told from the prompt's. Give the data as plain text "
                               "(prompt, chosen and rejected strings), or use a template that keeps earlier turns.")
        answers.append(whole[len(start):])
    return start, answers[0], answers[1]


def encode_pair(tokenizer, prompt: Any, chosen: Any, rejected: Any, max_length: int,
                counts: Counts | None = None) -> dict[str, list[int]]:
    """``{"input_ids": prompt ids, "chosen_ids", "rejected_ids"}``, at most ``max_length`` tokens per row."""
    conversational = isinstance(chosen, list)
    prompt_text, chosen_text, rejected_text = render(tokenizer, prompt, chosen, rejected)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"] if prompt_text else []
    eos = [] if conversational or tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    answers = [tokenizer(text, add_special_tokens=False)["input_ids"] + eos for text in (chosen_text, rejected_text)]
    longest = max(map(len, answers))
    if len(prompt_ids) + longest > max_length:
        keep = max(max_length - longest, min(len(prompt_ids), max_length // PROMPT_FLOOR))
        if keep < len(prompt_ids):
            prompt_ids = prompt_ids[len(prompt_ids) - keep:] if keep else []
            if counts is not None:
                counts.prompt_cut += 1
        room = max_length - len(prompt_ids)
        if longest > room:
            answers = [ids[:room] for ids in answers]
            if counts is not None:
                counts.answer_cut += 1
    return {"input_ids": prompt_ids, "chosen_ids": answers[0], "rejected_ids": answers[1]}
