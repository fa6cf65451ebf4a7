"""The few-shot rows without peftkit: the `setfit` library with its defaults, and TF-IDF + logistic regression.

    python benchmarks/reference_fewshot.py --method setfit --data_dir D --output_dir O --model_name_or_path M --seed 0

Reads D/{train,test}.csv (columns text,label; train holds the examples peftkit's --shots drew with the same seed),
trains, scores the test split and writes O/results.json with the keys the suite reads. setfit is installed for the
benchmark only (`pip install setfit`); this script imports nothing from peftkit's training code.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from datasets import load_dataset
from reference_common import peak_memory_bytes  # beside this script


def macro_f1(pred: np.ndarray, gold: np.ndarray) -> float:
    scores = []
    for c in np.unique(gold):
        tp = float(np.sum((pred == c) & (gold == c)))
        p, r = tp / max(1, np.sum(pred == c)), tp / max(1, np.sum(gold == c))
        scores.append(0.0 if p + r == 0 else 2 * p * r / (p + r))
    return float(np.mean(scores))


def setfit_predict(train, test, model_path: str, seed: int) -> np.ndarray:
    """SetFit 1.x with its defaults: contrastive fine-tuning of the body (pairs by "oversampling", one epoch,
    batch 16, 2e-5), then scikit-learn's logistic regression on the embeddings."""
    from setfit import SetFitModel, Trainer, TrainingArguments

    model = SetFitModel.from_pretrained(model_path)
    args = TrainingArguments(seed=seed, report_to="none", show_progress_bar=False, output_dir="/tmp/setfit_bench")
    Trainer(model=model, args=args, train_dataset=train).train()
    return np.asarray(model.predict(list(test["text"])))


def tfidf_predict(train, test, seed: int) -> np.ndarray:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer()
    classifier = LogisticRegression(max_iter=1000, random_state=seed)
    classifier.fit(vectorizer.fit_transform(train["text"]), np.asarray(train["label"]))
    return classifier.predict(vectorizer.transform(test["text"]))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", choices=("setfit", "tfidf"), required=True)
    ap.add_argument("--data_dir", required=True)
    ap.add_argument("--output_dir", required=True)
    ap.add_argument("--model_name_or_path", required=True)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    files = {s: str(Path(args.data_dir) / f"{s}.csv") for s in ("train", "test")}
    raw = load_dataset("csv", data_files=files, keep_default_na=False)
    labels = sorted(set(raw["train"]["label"]))
    data = raw.map(lambda row: {"label": labels.index(row["label"])})
    start = time.perf_counter()
    if args.method == "setfit":
        predicted = setfit_predict(data["train"], data["test"], args.model_name_or_path, args.seed)
    else:
        predicted = tfidf_predict(data["train"], data["test"], args.seed)
    seconds = time.perf_counter() - start
    gold = np.asarray(data["test"]["label"])
    results = {"test": {"accuracy": float(np.mean(predicted == gold)), "f1": macro_f1(predicted, gold)},
               "train_runtime_s": round(seconds, 3), "peak_memory_bytes": peak_memory_bytes(),
               "num_examples": {"train": len(data["train"]), "test": len(data["test"])}}
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.output_dir) / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results["test"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
