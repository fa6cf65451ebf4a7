"""The contrastive stage's parts: SetFit's pairs, the losses, the per-class draw of --shots."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from datasets import Dataset

from peftkit import fewshot
from peftkit.config import DataArguments
from peftkit.contrastive import PairCollator, draw_pairs, pair_counts, supervised_contrastive
from peftkit.data import draw_per_class, load_raw_datasets
from peftkit.fewshot import default_pairs


def test_pairs_are_setfits_oversampling():
    """Every unordered pair (an example with itself included) once, the smaller kind repeated up to the larger's
    size, positive and negative in turn; a function of the seed."""
    classes = [0, 0, 0, 1, 1, 2]
    positive, negative = pair_counts(classes)
    assert (positive, negative) == (6 + 3 + 1, 21 - 10)
    pairs = draw_pairs(classes, seed=3)
    assert len(pairs) == 2 * max(positive, negative)
    kinds = [classes[a] == classes[b] for a, b in pairs]
    assert kinds[0::2] == [True] * negative and kinds[1::2] == [False] * negative  # alternating
    every = {(a, b) for a, b in itertools.combinations_with_replacement(range(len(classes)), 2)}
    assert set(pairs) == every and all(a <= b for a, b in pairs)
    assert pairs == draw_pairs(classes, seed=3) and pairs != draw_pairs(classes, seed=4)
    assert draw_pairs(classes, seed=3, count=5) == pairs[:5]
    more = draw_pairs(classes, seed=3, count=3 * len(pairs))  # each kind repeated in its shuffled order
    assert len(more) == 3 * len(pairs) and more[:len(pairs)] == pairs and set(more) == every


def test_default_pairs_are_40_per_example_or_setfits_count_where_more():
    def per_class(*sizes):
        return [c for c, k in enumerate(sizes) for _ in range(k)]

    n, why = default_pairs(per_class(8, 8))
    assert n == 640 and why.startswith("40 per training example") and "72 positive and 64 negative" in why
    assert default_pairs(per_class(32, 32))[0] == 2560  # SetFit's 2 * 1,056 is fewer
    n, why = default_pairs(per_class(64, 64))
    assert n == 2 * 4160 and why.startswith("SetFit's count")  # 2 * (64 * 65 / 2) positive pairs
    assert default_pairs(per_class(64, 64, 64))[0] == 2 * 12288  # 3 * 64 * 64 negative pairs
    n, why = default_pairs(per_class(100, 100, 100))  # SetFit's 60,000, capped
    assert n == fewshot.SETFIT_PAIRS_CAP and why.startswith("SetFit's count of 60000, capped")
    assert default_pairs(per_class(1000, 1000))[0] == 80_000  # 40 per example: more than the cap


def test_supervised_contrastive_prefers_classes_together():
    classes = torch.tensor([0, 0, 1, 1])
    together = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])
    assert supervised_contrastive(together, classes) < supervised_contrastive(mixed, classes)
    alone = supervised_contrastive(torch.randn(3, 4, requires_grad=True), torch.tensor([0, 1, 2]))
    assert alone.item() == 0.0 and alone.requires_grad  # no positives: zero, still a graph


def test_pair_collator_keeps_both_sides_and_the_pair_label():
    examples = Dataset.from_dict({"input_ids": [[1, 2], [3], [4, 5, 6]], "labels": [0, 0, 1]})

    def collate(rows):
        width = max(len(r["input_ids"]) for r in rows)
        return {"input_ids": torch.tensor([r["input_ids"] + [0] * (width - len(r["input_ids"])) for r in rows]),
                "labels": torch.tensor([r["labels"] for r in rows])}

    batch = PairCollator(examples, collate)([{"first": 0, "second": 1}, {"first": 0, "second": 2}])
    assert batch["labels"].tolist() == [1.0, 0.0]
    assert batch["input_ids"].tolist() == [[1, 2], [1, 2]]
    assert batch["pair_input_ids"].tolist() == [[3, 0, 0], [4, 5, 6]] and batch["classes"].tolist() == [0, 0]
    assert batch["pair_classes"].tolist() == [0, 1]


def test_shots_draw_k_per_class_with_the_seed():
    ds = Dataset.from_dict({"text": [f"t{i}" for i in range(30)], "label": ["a"] * 20 + ["b"] * 7 + ["c"] * 3})
    drawn, record = draw_per_class(ds, "label", 5, seed=1)
    assert record["counts"] == {"a": 5, "b": 5, "c": 3} and len(drawn) == 13
    assert sorted(record["rows"]) == record["rows"] and [ds[i]["text"] for i in record["rows"]] == drawn["text"]
    assert draw_per_class(ds, "label", 5, seed=1)[1]["rows"] == record["rows"]
    assert draw_per_class(ds, "label", 5, seed=2)[1]["rows"] != record["rows"]


def test_shots_refuse_a_missing_label():
    from peftkit.errors import PeftkitError

    ds = Dataset.from_dict({"text": ["x", "y"], "label": ["a", None]})
    with pytest.raises(PeftkitError, match="no label"):
        draw_per_class(ds, "label", 1, seed=0)


def test_guidance_names_the_best_row_at_the_nearest_measured_size(tmp_path, monkeypatch):
    """The log line of a run with few examples per class: the largest benchmarked size at or below its smallest
    class, on the result whose number of classes is nearest; nothing above the largest size."""
    def rows(best):
        return [{"row": best, "how": f"--strategy {best}", "mean": 70.0, "sd": 1.0, "worst": 68.0, "seeds": 5},
                {"row": "head", "how": "--strategy head", "mean": 60.0, "sd": 2.0, "worst": 57.0, "seeds": 5}]

    guide = {"page": "docs/benchmarks/fewshot.md", "sets": [
        {"dataset": "builtin:two", "classes": 2, "shots": {"8": rows("full"), "32": rows("lora")}},
        {"dataset": "builtin:three", "classes": 3, "shots": {"8": rows("partial")}}]}
    monkeypatch.setattr(fewshot, "GUIDE", tmp_path / "guide.json")
    assert fewshot.guidance({"a": 8, "b": 8}, "head", False) is None  # no guide: nothing said
    fewshot.GUIDE.write_text(json.dumps(guide))
    said = fewshot.guidance({"a": 20, "b": 31}, "head", False)
    assert said.startswith("Few examples per class: 20 of 'a', the fewest. On peftkit's few-shot benchmark at 8 per")
    assert "(builtin:two, 2 classes, 5 seeds; docs/benchmarks/fewshot.md)" in said
    assert "best first: --strategy full 70.0 +- 1.0 (worst seed 68.0); --strategy head 60.0" in said
    assert said.endswith("This run: --strategy head.")
    assert "--strategy lora 70.0" in fewshot.guidance({"a": 40, "b": 32}, "full", True)
    assert fewshot.guidance({"a": 4, "b": 5}, "full", True).endswith("This run: --strategy full --contrastive.")
    assert "builtin:three" in fewshot.guidance({"a": 8, "b": 8, "c": 9, "d": 8}, "head", False)
    assert fewshot.guidance({"a": 33, "b": 40}, "head", False) is None  # more than the benchmark measured
    assert "at 8 per class, the smallest size it measured, (builtin:two" in fewshot.guidance({"a": 4, "b": 5}, "full",
                                                                                           False)
    fewshot.GUIDE.write_text('{"sets": [{"shots": {"8": []}}]}')  # not as peftkit writes it: nothing said, no error
    assert fewshot.guidance({"a": 8, "b": 8}, "head", False) is None


def shots_file(tmp_path, per_class: dict[str, int]):
    rows = [(f"{label} example {i}", label) for label, n in per_class.items() for i in range(n)]
    path = tmp_path / "reviews.csv"
    path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    return path


def test_shots_draw_from_the_whole_file_before_validation_is_carved(tmp_path):
    """A training file without a validation split: the draw keeps K per class, and validation comes from the
    examples it left; the record's rows are rows of the file."""
    path = shots_file(tmp_path, {"good": 12, "bad": 10})
    args = DataArguments(train_file=str(path), shots=8, validation_split_percentage=10)
    raw, _, record = load_raw_datasets(args, seed=0, per_class=True)
    assert record["counts"] == {"bad": 8, "good": 8} and len(raw["train"]) == 16
    assert len(raw["validation"]) == 3  # 10% of the 22 examples, rounded up
    assert not set(raw["train"]["text"]) & set(raw["validation"]["text"])
    lines = path.read_text().splitlines()[1:]
    assert [lines[i].split(",")[0] for i in record["rows"]] == raw["train"]["text"]
    again = load_raw_datasets(args, seed=0, per_class=True)
    assert again[0]["validation"]["text"] == raw["validation"]["text"] and again[2] == record
    assert load_raw_datasets(args, seed=1, per_class=True)[2]["rows"] != record["rows"]


def test_a_file_with_at_most_k_per_class_gives_validation_from_the_draw(tmp_path, caplog):
    path = shots_file(tmp_path, {"good": 8, "bad": 8})
    with caplog.at_level("WARNING"):
        raw, _, record = load_raw_datasets(DataArguments(train_file=str(path), shots=8), seed=0, per_class=True)
    assert len(raw["validation"]) == 2 and len(raw["train"]) == 14
    assert sum(record["counts"].values()) == 14 and len(record["rows"]) == 14
    assert not set(raw["train"]["text"]) & set(raw["validation"]["text"])
    assert "Pass --validation_file" in caplog.text


def test_shots_with_a_validation_file_draw_from_the_training_file_only(tmp_path):
    train = shots_file(tmp_path, {"good": 12, "bad": 10})
    valid = tmp_path / "valid.csv"
    valid.write_text("text,label\nfine,good\nawful,bad\n")
    raw, _, record = load_raw_datasets(DataArguments(train_file=str(train), validation_file=str(valid), shots=4),
                                       seed=0, per_class=True)
    assert record["counts"] == {"bad": 4, "good": 4} and raw["validation"]["text"] == ["fine", "awful"]
    assert load_raw_datasets(DataArguments(train_file=str(train), shots=4), seed=0)[2] is None  # the task draws
