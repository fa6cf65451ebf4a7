"""`peftkit analyze RUN`: what a trained classifier gets wrong, on a split of its data or a file.

Writes, into OUTPUT_DIR (default RUN/analysis_<split>): ``analysis.json`` (per-class precision, recall, F1 and
support, the confusion matrix's counts, calibration), ``confusion_matrix.png``, ``reliability.png``, ``errors.csv``
(the most confident mistakes and the least confident correct answers, with their input and probabilities) and
``analysis.md``, which ties them together. For tasks with one label per example (text_cls, image_cls); a task may
bring its own (``analyze_split``: token_cls by entity type, causal_lm by its worst generations).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from peftkit import metrics
from peftkit.data import ORIGIN
from peftkit.errors import check, require
from peftkit.evaluation import in_order

TOP_PAIRS = 5  # confused pairs named in analysis.md


def predict_split(task, model, collator, data, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labels, probabilities)`` of every example, in data order (no sampler: row i is example i)."""
    labels, probs = [], []
    for outputs, batch in in_order(model, data, collator, batch_size):
        logits = task.parity_logits(outputs, batch)
        check(batch["labels"].dim() == 1 and logits.shape[0] == batch["labels"].shape[0],
              f"peftkit analyze reads one label per example (text_cls, image_cls); task {task.name!r} labels "
              "parts of examples. Use `peftkit eval` for its metrics.")
        labels.append(batch["labels"].cpu())
        probs.append(logits.float().softmax(-1).cpu())
    return torch.cat(labels), torch.cat(probs)


def per_class(labels: torch.Tensor, predicted: torch.Tensor, names: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support of each class, rounded for the report (``peftkit.metrics``)."""
    scores = metrics.per_class_scores(predicted.tolist(), labels.tolist(), range(len(names)))
    return {name: {"precision": round(s["precision"], 4), "recall": round(s["recall"], 4), "f1": round(s["f1"], 4),
                   "support": s["support"]} for name, s in zip(names, scores.values(), strict=True)}


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


def analyze(run_dir: str, split: str | None = None, eval_file: str | None = None, eval_dir: str | None = None,
            output_dir: str | None = None, top_k: int = 20, bins: int = 10,
            overrides: dict[str, Any] | None = None, trust=None) -> dict[str, Any]:
    """Analyse a trained run on ``split`` of its data (None: ``run_dir.default_split``; or ``eval_file`` / image
    folder ``eval_dir``); returns analysis.json's content and writes the files listed in the module's docstring. A
    task with its own analysis (``analyze_split``: token_cls, causal_lm) gives its figures; the rest read one label
    per example."""
    from peftkit.run_dir import Trust, default_split, eval_data, load_run

    check(top_k > 0 and bins > 0, "--top_k and --bins must be positive.")
    require("peftkit analyze", {"matplotlib": "matplotlib>=3.8"})  # its plots; checked before any work
    model, processor, cfg, task = load_run(run_dir, overrides, trust or Trust())
    split = split or ("test" if eval_file or eval_dir else default_split(cfg))
    raw, data = eval_data(task, cfg, processor, split, eval_file, eval_dir)
    check(len(data[split]) > 0, f"The {split} data holds no examples.")
    named = split if not (eval_file or eval_dir) else None
    out = Path(output_dir or Path(run_dir) / f"analysis_{named or 'file'}")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _write_analysis(run_dir, task, model, processor, cfg, raw[split], data[split], named,
                               eval_file or eval_dir or f"the run's {split} split", out, top_k, bins)
    except BaseException:
        if created:  # no half-written folder left behind
            shutil.rmtree(out, ignore_errors=True)
        raise


def _write_analysis(run_dir: str, task, model, processor, cfg: dict[str, Any], raw, data, named: str | None,
                    source: str, out: Path, top_k: int, bins: int) -> dict[str, Any]:
    batch_size = cfg["training"].get("per_device_eval_batch_size", 64)
    part = task.analyze_split(model, processor, raw, data, batch_size, out, top_k)
    if part is None:  # the task has no analysis of its own: one label per example
        part = classification(task, model, processor, raw, data, batch_size, top_k, bins, out)
    from peftkit import analysis_plots

    if part.get("confusion") is not None:
        analysis_plots.confusion_matrix(out / "confusion_matrix.png", part["confusion"], part["names"],
                                        f"{Path(run_dir).name}: {source}")
    write_errors(out / "errors.csv", part["errors"])
    result = {"run_dir": str(run_dir), "data": source} | part["result"]
    (out / "analysis.json").write_text(json.dumps(result, indent=2))
    metric, value = part["check"]
    lines = [f"# Analysis of {run_dir} on {source}", ""]
    recorded = _recorded(run_dir, named, metric)
    if recorded is not None:
        same = abs(recorded - value) < 5e-4
        lines += [f"The run's results.json records {named} {metric} {recorded:.4f}; this analysis finds {value:.4f} "
                  f"({'the same' if same else 'DIFFERENT: the data or the model changed since'}).", ""]
    (out / "analysis.md").write_text("\n".join(lines + part["markdown"]) + "\n")
    return result | {"output_dir": str(out), "headline": part["headline"]}


def classification(task, model, processor, raw, data, batch_size: int, top_k: int, bins: int,
                   out: Path) -> dict[str, Any]:
    """One label per example (text_cls, image_cls): per-class scores, confusion, calibration, error rows."""
    from peftkit import analysis_plots

    labels, probs = predict_split(task, model, task.collator(processor), data, batch_size)
    check(bool((labels >= 0).all()), "Some examples carry no known label; peftkit analyze needs every label.")
    names = [str(n) for n in task.labels]
    confidence, predicted = probs.max(-1)
    confusion = torch.zeros(len(names), len(names), dtype=torch.long)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    result = {
        "examples": len(labels), "accuracy": round((predicted == labels).float().mean().item(), 4),
        "macro_f1": round(metrics.macro_f1(predicted.tolist(), labels.tolist()), 4) if len(labels) else 0.0,
        "per_class": per_class(labels, predicted, names),
        "confusion_matrix": {"labels": names, "counts": confusion.tolist(), "rows": "true label",
                             "columns": "predicted label"},
        "calibration": calibration(confidence, predicted == labels, bins),
    }
    analysis_plots.reliability(out / "reliability.png", result["calibration"], confidence, bins)
    errors = error_rows(raw, labels, probs, names, task.data.text_column, top_k)
    return {"result": result, "errors": errors, "confusion": confusion, "names": names,
            "markdown": markdown(result, errors), "check": ("accuracy", result["accuracy"]),
            "headline": f"accuracy {result['accuracy']:.4f}, macro F1 {result['macro_f1']:.4f}, expected "
                        f"calibration error {result['calibration']['expected_calibration_error']:.4f}"}


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """A cell a spreadsheet shows as text: user text starting like a formula (``=HYPERLINK(...)``) gets a leading
    apostrophe, as OWASP advises for CSV exports; numbers are left as they are."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def write_errors(path: Path, rows: list[dict[str, Any]]) -> None:
    fields = list(rows[0]) if rows else ["kind", "example", "input", "label", "predicted"]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: spreadsheet_safe(v) for k, v in row.items()} for row in rows)


def markdown(result: dict[str, Any], errors: list[dict]) -> list[str]:
    names, counts = result["confusion_matrix"]["labels"], result["confusion_matrix"]["counts"]
    pairs = sorted(((counts[i][j], names[i], names[j]) for i in range(len(names)) for j in range(len(names))
                    if i != j and counts[i][j]), reverse=True)[:TOP_PAIRS]
    lines = [f"{result['examples']} examples: accuracy {result['accuracy']:.4f}, macro F1 {result['macro_f1']:.4f}, "
             f"expected calibration error {result['calibration']['expected_calibration_error']:.4f} "
             f"({len(result['calibration']['bins'])} confidence bins with examples).", ""]
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
    return lines


def _recorded(run_dir: str, split: str | None, metric: str) -> float | None:
    """``metric`` on ``split`` as the run's results.json recorded it (None where it has none)."""
    path = Path(run_dir) / "results.json"
    if split not in ("test", "validation") or not path.is_file():
        return None
    return (json.loads(path.read_text()).get("test" if split == "test" else "eval") or {}).get(metric)
