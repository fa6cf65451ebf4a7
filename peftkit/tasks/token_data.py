"""Token classification data: CoNLL files, word tags checked and aligned to sub-word tokens, entity spans.

Pure functions of lists and files; the ``token_cls`` task wires them to datasets, tokenizers and models.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from peftkit.errors import check

IGNORE_INDEX = -100  # the label transformers' token-classification losses skip
OUTSIDE = -1  # a word the model never saw (cut by --max_seq_length): scored as predicted O


def check_rows(tokens: Sequence[Any], tags: Sequence[Any], where: list[str], text_column: str,
               label_column: str) -> None:
    """Each row: a non-empty list of words and a list of tags of the same length. ``where[i]`` names row i for
    the message (file and row or line)."""
    def listed(indices: list[int]) -> str:
        return ", ".join(where[i] for i in indices[:5]) + (f" and {len(indices) - 5} more" if len(indices) > 5
                                                            else "")

    not_words = [i for i, t in enumerate(tokens) if not isinstance(t, list | tuple)]
    check(not not_words, f"Column {text_column!r} must hold a list of words per row (e.g. [\"Paris\", \"is\", "
          f"\"nice\"]), but {listed(not_words)} hold(s) {type(tokens[not_words[0]]).__name__ if not_words else ''}"
          f". Pick the word-list column with --text_column.")
    not_tags = [i for i, t in enumerate(tags) if not isinstance(t, list | tuple)]
    check(not not_tags, f"Column {label_column!r} must hold a list of tags per row, one per word (e.g. "
          f"[\"B-LOC\", \"O\", \"O\"]), but {listed(not_tags)} hold(s) "
          f"{type(tags[not_tags[0]]).__name__ if not_tags else ''}. Pick the tag-list column with --label_column.")
    empty = [i for i, t in enumerate(tokens) if not t]
    check(not empty, f"{len(empty)} row(s) have no words ({listed(empty)}): drop empty sentences.")
    uneven = [i for i, (w, t) in enumerate(zip(tokens, tags, strict=True)) if len(w) != len(t)]
    check(not uneven, f"{len(uneven)} row(s) have a different number of words and tags ({listed(uneven)}; the "
          f"first: {len(tokens[uneven[0]]) if uneven else 0} words, {len(tags[uneven[0]]) if uneven else 0} tags). "
          "Each word needs exactly one tag.")


def word_tags(labels: Sequence[str], gold_rows: list[list[int]], pred_rows: list[list[int]]
              ) -> tuple[list[list[str]], list[list[str]]]:
    """Gold and predicted tag names of every word, from the fixed-width id rows that evaluation gathers (gold
    padded with IGNORE_INDEX; a word the model never saw predicted OUTSIDE, read as O)."""
    golds, preds = [], []
    for gold, pred in zip(gold_rows, pred_rows, strict=True):
        n = sum(g != IGNORE_INDEX for g in gold)
        golds.append([labels[g] for g in gold[:n]])
        preds.append(["O" if p == OUTSIDE else labels[p] for p in pred[:n]])
    return golds, preds


def inside_tag(tag: str) -> str:
    """The tag a word's later sub-tokens get with --label_all_tokens: B-X becomes I-X (as transformers'
    run_ner does), so that one word does not read as several entities; other tags stay."""
    return "I-" + tag[2:] if tag.startswith("B-") else tag


def align_labels(word_ids: Sequence[int | None], word_label_ids: Sequence[int], label_all_tokens: bool,
                 inside_ids: Sequence[int] | None = None) -> list[int]:
    """One label per token: a word's first sub-token carries the word's tag; special tokens and (unless
    ``label_all_tokens``) later sub-tokens get IGNORE_INDEX. ``inside_ids[k]``: the id of ``inside_tag`` of tag
    k, used for later sub-tokens when ``label_all_tokens``."""
    labels: list[int] = []
    previous = None
    for word in word_ids:
        if word is None:
            labels.append(IGNORE_INDEX)
        elif word != previous:
            labels.append(word_label_ids[word])
        elif label_all_tokens:
            tag = word_label_ids[word]
            labels.append(inside_ids[tag] if inside_ids is not None else tag)
        else:
            labels.append(IGNORE_INDEX)
        previous = word
    return labels


def scheme_of(tags: Sequence[str]) -> str:
    """``prefixed`` when every tag but O carries a B-/I-/E-/S-/L-/U- prefix (BIO, BIOES, IOB1), ``plain`` when
    none does (tags are entity types, a run of equal tags one entity)."""
    named = [t for t in tags if t != "O"]
    prefixed = [t for t in named if len(t) > 2 and t[1] == "-" and t[0] in "BIESLU"]
    if named and not prefixed:
        return "plain"
    bad = sorted(set(named) - set(prefixed))
    check(not bad, f"Tags {bad[:10]} have no B-/I-/E-/S- prefix while others do: use one tag scheme (BIO, BIOES, "
          "or plain entity types without prefixes).")
    return "prefixed"


def as_prefixed(tags: Sequence[str], scheme: str) -> list[str]:
    """Tags in a prefixed scheme for entity extraction: plain types become I-type (IO), the rest stay."""
    return [t if scheme == "prefixed" or t == "O" else "I-" + t for t in tags]


def entities(tags: Sequence[str], scheme: str) -> list[tuple[str, int, int]]:
    """Entities as (type, first word, last word), in the seqeval sense (the conlleval rules)."""
    from seqeval.metrics.sequence_labeling import get_entities

    return [(kind, start, end) for kind, start, end in get_entities(as_prefixed(list(tags), scheme))]


def entity_scores(references: list[list[str]], predictions: list[list[str]], scheme: str) -> dict[str, float]:
    """Entity-level micro precision, recall and F1 (seqeval, default conlleval mode), per-type F1, and token
    accuracy over the scored words."""
    from seqeval.metrics import classification_report

    refs = [as_prefixed(r, scheme) for r in references]
    preds = [as_prefixed(p, scheme) for p in predictions]
    words = sum(len(r) for r in refs)
    correct = sum(a == b for r, p in zip(refs, preds, strict=True) for a, b in zip(r, p, strict=True))
    out = {"accuracy": correct / words if words else float("nan")}
    if not any(t != "O" for r in refs for t in r) and not any(t != "O" for p in preds for t in p):
        return out | {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    report = classification_report(refs, preds, output_dict=True, zero_division=0)
    micro = report["micro avg"]
    out |= {"precision": float(micro["precision"]), "recall": float(micro["recall"]),
            "f1": float(micro["f1-score"])}
    for kind, scores in report.items():
        if not kind.endswith(" avg"):
            out[f"f1_{kind}"] = float(scores["f1-score"])
    return out
