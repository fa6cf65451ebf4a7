"""Imbalanced classes: class weights and focal loss raise macro F1 over plain cross-entropy (same seed)."""

from __future__ import annotations

import csv
import json

import pytest

pytestmark = pytest.mark.e2e


def write(raw, split, counts, path):
    rows, seen = [], dict.fromkeys(counts, 0)
    for text, label in zip(raw[split]["text"], raw[split]["label"], strict=True):
        if seen[label] < counts[label]:
            rows.append((text, label))
            seen[label] += 1
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([("text", "label"), *rows])
    return str(path)


@pytest.fixture(scope="module")
def skewed(tmp_path_factory):
    """The built-in reviews with 19 fresh for every rotten one in training; balanced evaluation splits."""
    from peftkit.data import builtin_rotten_tomatoes

    raw, root = builtin_rotten_tomatoes(), tmp_path_factory.mktemp("skewed")
    return ["--train_file", write(raw, "train", {"fresh": 380, "rotten": 20}, root / "train.csv"),
            "--validation_file", write(raw, "validation", {"fresh": 100, "rotten": 100}, root / "val.csv"),
            "--test_file", write(raw, "test", {"fresh": 100, "rotten": 100}, root / "test.csv")]


def macro_f1(skewed, tmp_path, *flags):
    from peftkit.cli import train_main

    out = tmp_path / "_".join(flags or ("plain",))
    assert train_main([*skewed, *flags, "--output_dir", str(out), "--report_to", "none"], task="text_cls",
                      strategy="head") == 0
    return json.loads((out / "results.json").read_text())["test"]["f1"]


def test_class_weights_and_focal_loss_lift_macro_f1_on_skewed_data(skewed, tmp_path):
    plain = macro_f1(skewed, tmp_path)
    balanced = macro_f1(skewed, tmp_path, "--class_weights", "balanced")
    focal = macro_f1(skewed, tmp_path, "--loss", "focal")
    # Measured when written: 0.374 plain, 0.586 balanced, 0.478 focal.
    assert balanced > plain + 0.1 and focal > plain + 0.05, (plain, balanced, focal)
