"""`peftkit analyze` for token_cls: entity-level scores per type, which types are mistaken for which (word by
word), and the sentences with the most wrongly tagged words."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from peftkit.data import ORIGIN
from peftkit.evaluation import in_order
from peftkit.tasks.token_data import as_prefixed, entities, word_tags


def split_word_tags(task, model, collator, data, batch_size: int) -> tuple[list[list[str]], list[list[str]]]:
    """Gold and predicted tag of every word of every sentence, in data order."""
    golds, preds = [], []
    for outputs, batch in in_order(model, data, collator, batch_size):
        rows = task.eval_rows(outputs, batch)
        gold, pred = word_tags(task.labels, rows["label"].tolist(), rows["prediction"].tolist())
        golds += gold
        preds += pred
    return golds, preds


def entity_type(tag: str) -> str:
    return tag.split("-", 1)[1] if tag != "O" and tag[:2] in ("B-", "I-", "E-", "S-", "L-", "U-") else tag


def per_type(golds, preds, scheme: str) -> dict[str, dict[str, float]]:
    from seqeval.metrics import classification_report

    report = classification_report([as_prefixed(g, scheme) for g in golds], [as_prefixed(p, scheme) for p in preds],
                                   output_dict=True, zero_division=0)
    return {kind: {"precision": round(float(s["precision"]), 4), "recall": round(float(s["recall"]), 4),
                   "f1": round(float(s["f1-score"]), 4), "support": int(s["support"])}
            for kind, s in report.items()}


def spans(words: list[str], tags: list[str], scheme: str) -> str:
    return "; ".join(f"{kind}: {' '.join(words[a:b + 1])}" for kind, a, b in entities(tags, scheme))  # b: last


def analyze(task, model, tokenizer, raw, data, batch_size: int, out: Path, top_k: int) -> dict[str, Any]:
    """Entity scores per type, the word-level confusion of types and the worst sentences, for analysis.py to write
    (see its ``classification`` for the keys)."""
    golds, preds = split_word_tags(task, model, task.collator(tokenizer), data, batch_size)
    types = sorted({entity_type(t) for t in task.labels} - {"O"})
    names = ["O", *types]
    index = {n: i for i, n in enumerate(names)}
    confusion = torch.zeros(len(names), len(names), dtype=torch.long)
    for gold, pred in zip(golds, preds, strict=True):
        for g, p in zip(gold, pred, strict=True):
            confusion[index[entity_type(g)], index[entity_type(p)]] += 1
    scores = per_type(golds, preds, task.scheme)
    words_column = task.data.text_column
    wrong = [sum(g != p for g, p in zip(gold, pred, strict=True)) for gold, pred in zip(golds, preds, strict=True)]
    errors = []
    for i in sorted(range(len(wrong)), key=lambda i: -wrong[i])[:top_k]:
        if not wrong[i]:
            break
        words = [str(w) for w in raw[i][words_column]][:len(golds[i])]
        errors.append({"kind": "most wrong words", "example": raw[i].get(ORIGIN, f"example {i}"),
                       "input": " ".join(words), "label": spans(words, golds[i], task.scheme),
                       "predicted": spans(words, preds[i], task.scheme), "wrong_words": wrong[i]})
    micro = scores.get("micro avg", {})
    result = {"examples": len(golds), "words": sum(map(len, golds)),
              "word_accuracy": round(sum(len(g) - w for g, w in zip(golds, wrong, strict=True))
                                     / max(sum(map(len, golds)), 1), 4),
              "entity_f1": micro.get("f1", 0.0), "entity_precision": micro.get("precision", 0.0),
              "entity_recall": micro.get("recall", 0.0),
              "per_type": {k: v for k, v in scores.items() if not k.endswith(" avg")},
              "confusion_matrix": {"labels": names, "counts": confusion.tolist(), "rows": "true type (word)",
                                   "columns": "predicted type (word)"}}
    pairs = sorted(((confusion[i, j].item(), names[i], names[j]) for i in range(len(names))
                    for j in range(len(names)) if i != j and confusion[i, j]), reverse=True)[:8]
    lines = [f"{result['examples']} sentences, {result['words']} words: entity F1 {result['entity_f1']:.4f} "
             f"(precision {result['entity_precision']:.4f}, recall {result['entity_recall']:.4f}), word accuracy "
             f"{result['word_accuracy']:.4f}.", "", "| entity type | precision | recall | F1 | support |",
             "|---|---|---|---|---|"]
    lines += [f"| {k} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | {v['support']} |"
              for k, v in result["per_type"].items()]
    lines += ["", "![confusion matrix](confusion_matrix.png)", "",
              "Words most often given the wrong type (true -> predicted; O is no entity): "
              + ("; ".join(f"{a} -> {b} ({n})" for n, a, b in pairs) or "none") + ".", "",
              f"errors.csv: the {len(errors)} sentences with the most wrongly tagged words, with their entities and "
              "the predicted ones."]
    return {"result": result, "errors": errors, "confusion": confusion, "names": names, "markdown": lines,
            "check": ("f1", result["entity_f1"]), "headline": f"entity F1 {result['entity_f1']:.4f}"}
