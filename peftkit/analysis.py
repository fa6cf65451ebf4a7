"""`peftkit analyze RUN`: what a trained classifier gets wrong, on a split of its data or a file.

Writes, into OUTPUT_DIR (default RUN/analysis_<split>): ``analysis.json`` (per-class precision, recall, F1 and
support, the confusion matrix's counts, calibration), ``confusion_matrix.png``, ``reliability.png``, ``errors.csv``
(the most confident mistakes and the least confident correct answers, with their input and probabilities) and
``analysis.md``, which ties them together. For tasks with one label per example (text_cls, image_cls).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from peftkit.data import ORIGIN
from peftkit.errors import check
from peftkit.evaluation import model_inputs, own_generator

TOP_PAIRS = 5  # confused pairs named in analysis.md


def predict_split(task, model, collator, data, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labels, probabilities)`` of every example, in data order (no sampler: row i is example i)."""
    loader = DataLoader(data, batch_size=batch_size, collate_fn=collator, generator=own_generator())
    device = next(p.device for p in model.parameters())
    labels, probs = [], []
    with torch.no_grad():
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = task.parity_logits(model(**model_inputs(batch)), batch)
            check(batch["labels"].dim() == 1 and logits.shape[0] == batch["labels"].shape[0],
                  f"peftkit analyze reads one label per example (text_cls, image_cls); task {task.name!r} labels "
                  "parts of examples. Use `peftkit eval` for its metrics.")
            labels.append(batch["labels"].cpu())
            probs.append(logits.float().softmax(-1).cpu())
    return torch.cat(labels), torch.cat(probs)


def per_class(confusion: torch.Tensor, names: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support of each class from the confusion matrix (rows: true, columns: predicted)."""
    out = {}
    for i, name in enumerate(names):
        tp, predicted, support = confusion[i, i].item(), confusion[:, i].sum().item(), confusion[i].sum().item()
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[name] = {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
                     "support": int(support)}
    return out


def calibration(confidence: torch.Tensor, correct: torch.Tensor, bins: int) -> dict[str, Any]:
    """Expected calibration error over ``bins`` equal-width confidence bins, and each bin's figures."""
    edges = torch.linspace(0, 1, bins + 1)
    rows, ece = [], 0.0
    for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True):
        inside = (confidence > lo) & (confidence <= hi) if lo > 0 else (confidence >= lo) & (confidence <= hi)
        n = int(inside.sum())
        if n:
            conf, acc = confidence[inside].mean().item(), correct[inside].float().mean().item()
            ece += n / len(confidence) * abs(conf - acc)
            rows.append({"low": round(lo, 3), "high": round(hi, 3), "count": n, "confidence": round(conf, 4),
                         "accuracy": round(acc, 4)})
    return {"expected_calibration_error": round(ece, 4), "bins": rows}


def error_rows(raw, labels, probs, names: list[str], text_column: str | None, top_k: int) -> list[dict[str, Any]]:
    """The ``top_k`` most confident mistakes and the ``top_k`` least confident correct answers."""
    confidence, predicted = probs.max(-1)
    correct = predicted == labels
    mistakes = [i for i in confidence.argsort(descending=True).tolist() if not correct[i]][:top_k]
    unsure = [i for i in confidence.argsort().tolist() if correct[i]][:top_k]
    shown = text_column if text_column and text_column in raw.column_names else None
    rows = []
    for kind, indices in (("confident mistake", mistakes), ("unsure correct", unsure)):
        for i in indices:
            top = probs[i].argsort(descending=True)[:3].tolist()
            rows.append({"kind": kind, "example": raw[i][ORIGIN] if ORIGIN in raw.column_names else f"example {i}",
                         "input": raw[i][shown] if shown else raw[i][ORIGIN] if ORIGIN in raw.column_names else "",
                         "label": names[labels[i]], "predicted": names[predicted[i]],
                         "p_predicted": round(confidence[i].item(), 4), "p_label": round(probs[i, labels[i]].item(), 4),
                         "top3": "; ".join(f"{names[j]} {probs[i, j].item():.3f}" for j in top)})
    return rows


def analyze(run_dir: str, split: str = "test", eval_file: str | None = None, eval_dir: str | None = None,
            output_dir: str | None = None, top_k: int = 20, bins: int = 10,
            overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Analyse a trained run on ``split`` of its data (or ``eval_file`` / image folder ``eval_dir``); returns
    analysis.json's content and writes the files listed in the module's docstring."""
    from peftkit.run_dir import eval_data, load_run

    check(top_k > 0 and bins > 0, "--top_k and --bins must be positive.")
    model, processor, cfg, task = load_run(run_dir, overrides)
    raw, data = eval_data(task, cfg, processor, split, eval_file, eval_dir)
    check(len(data[split]) > 0, f"The {split} data holds no examples.")
    batch_size = cfg["training"].get("per_device_eval_batch_size", 64)
    labels, probs = predict_split(task, model, task.collator(processor), data[split], batch_size)
    check(bool((labels >= 0).all()), "Some examples carry no known label; peftkit analyze needs every label.")
    names = [str(n) for n in task.labels]
    confidence, predicted = probs.max(-1)
    confusion = torch.zeros(len(names), len(names), dtype=torch.long)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    out = Path(output_dir or Path(run_dir) / f"analysis_{split if not (eval_file or eval_dir) else 'file'}")
    out.mkdir(parents=True, exist_ok=True)
    scores = per_class(confusion, names)
    source = eval_file or eval_dir or f"the run's {split} split"
    result = {
        "run_dir": str(run_dir), "data": source, "examples": len(labels),
        "accuracy": round((predicted == labels).float().mean().item(), 4),
        "macro_f1": round(sum(s["f1"] for s in scores.values()) / len(scores), 4), "per_class": scores,
        "confusion_matrix": {"labels": names, "counts": confusion.tolist(), "rows": "true label",
                             "columns": "predicted label"},
        "calibration": calibration(confidence, predicted == labels, bins),
    }
    errors = error_rows(raw[split], labels, probs, names, getattr(task.data, "text_column", None), top_k)
    write_errors(out / "errors.csv", errors)
    from peftkit import analysis_plots

    analysis_plots.confusion_matrix(out / "confusion_matrix.png", confusion, names, f"{Path(run_dir).name}: {source}")
    analysis_plots.reliability(out / "reliability.png", result["calibration"], confidence, bins)
    (out / "analysis.json").write_text(json.dumps(result, indent=2))
    (out / "analysis.md").write_text(markdown(result, errors, cfg, split if not (eval_file or eval_dir) else None,
                                              run_dir))
    return result | {"output_dir": str(out)}


def write_errors(path: Path, rows: list[dict[str, Any]]) -> None:
    fields = ["kind", "example", "input", "label", "predicted", "p_predicted", "p_label", "top3"]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def markdown(result: dict[str, Any], errors: list[dict], cfg: dict, split: str | None, run_dir: str) -> str:
    names, counts = result["confusion_matrix"]["labels"], result["confusion_matrix"]["counts"]
    pairs = sorted(((counts[i][j], names[i], names[j]) for i in range(len(names)) for j in range(len(names))
                    if i != j and counts[i][j]), reverse=True)[:TOP_PAIRS]
    lines = [f"# Analysis of {run_dir} on {result['data']}", "",
             f"{result['examples']} examples: accuracy {result['accuracy']:.4f}, macro F1 {result['macro_f1']:.4f}, "
             f"expected calibration error {result['calibration']['expected_calibration_error']:.4f} "
             f"({len(result['calibration']['bins'])} confidence bins with examples).", ""]
    recorded = _recorded_accuracy(run_dir, split)
    if recorded is not None:
        same = abs(recorded - result["accuracy"]) < 5e-4
        lines += [f"The run's results.json records {split} accuracy {recorded:.4f} "
                  f"({'the same' if same else 'DIFFERENT: the data or the model changed since'}).", ""]
    lines += ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {s['precision']:.4f} | {s['recall']:.4f} | {s['f1']:.4f} | {s['support']} |"
              for n, s in result["per_class"].items()]
    lines += ["", "![confusion matrix](confusion_matrix.png)", ""]
    if pairs:
        lines += ["Most frequent confusions (true -> predicted): "
                  + "; ".join(f"{a} -> {b} ({n})" for n, a, b in pairs) + ".", ""]
    lines += ["![reliability](reliability.png)", "",
              "Confidence is the probability of the predicted class; a calibrated model is right that often. Bars "
              "under the diagonal: over-confident.", ""]
    mistakes = [e for e in errors if e["kind"] == "confident mistake"][:5]
    if mistakes:
        lines += ["Most confident mistakes (all in errors.csv, with the least confident correct answers):", "",
                  "| example | input | label | predicted | p(predicted) |", "|---|---|---|---|---|"]
        lines += [f"| {e['example']} | {str(e['input'])[:120].replace('|', '/')} | {e['label']} | {e['predicted']} | "
                  f"{e['p_predicted']:.3f} |" for e in mistakes]
    return "\n".join(lines) + "\n"


def _recorded_accuracy(run_dir: str, split: str | None) -> float | None:
    path = Path(run_dir) / "results.json"
    if split not in ("test", "validation") or not path.is_file():
        return None
    metrics = json.loads(path.read_text()).get("test" if split == "test" else "eval") or {}
    return metrics.get("accuracy")
