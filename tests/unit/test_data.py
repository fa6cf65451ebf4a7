"""Data loading, splits and label discovery."""

from __future__ import annotations

import json

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from peftkit.config import DataArguments
from peftkit.data import load_file, load_raw_datasets
from peftkit.errors import PeftkitError
from peftkit.tasks import get_task


def write_csv(path, header, rows):
    path.write_text("\n".join([header] + rows) + "\n")
    return str(path)


def load(tmp_path, rows, header="review,sentiment", **kwargs):
    args = DataArguments(train_file=write_csv(tmp_path / "train.csv", header, rows), text_column="review",
                         label_column="sentiment", **kwargs)
    raw, _, _ = load_raw_datasets(args, seed=0)
    return raw, get_task("text_cls").build(args)


def test_string_labels_are_discovered_sorted_and_validation_is_carved(tmp_path):
    rows = [f"text {i},{['pos', 'neg', 'neutral'][i % 3]}" for i in range(30)]
    raw, task = load(tmp_path, rows)
    assert set(raw) == {"train", "validation"} and len(raw["validation"]) == 3
    assert task.discover(raw)["labels"] == ["neg", "neutral", "pos"]
    again, _ = load(tmp_path, rows)
    assert again["validation"]["review"] == raw["validation"]["review"]  # seeded, reproducible


def test_int_labels_keep_their_names(tmp_path):
    raw, task = load(tmp_path, [f"t{i},{i % 4}" for i in range(20)])
    labels = task.discover(raw)["labels"]
    assert labels == ["0", "1", "2", "3"]
    assert task.model_kwargs()["id2label"] == {0: "0", 1: "1", 2: "2", 3: "3"}


def test_classlabel_feature_uses_its_names():
    features = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    raw = DatasetDict({s: Dataset.from_dict({"text": ["a", "b", "c"], "label": [1, 0, 1]}, features=features)
                       for s in ("train", "validation")})
    assert get_task("text_cls").build(DataArguments()).discover(raw)["labels"] == ["neg", "pos"]


def test_pairs_and_json_lines(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps({"q": f"q{i}", "a": f"a{i}", "label": i % 2 == 0}) for i in range(10)))
    args = DataArguments(train_file=str(path), text_column="q", text_pair_column="a")
    raw, _, _ = load_raw_datasets(args, seed=0)
    task = get_task("text_cls").build(args)
    task.discover(raw)["labels"]
    from transformers import AutoTokenizer

    from peftkit.assets import builtin_model_path

    tok = AutoTokenizer.from_pretrained(builtin_model_path())
    data = task.preprocess(raw, tok)
    first = data["train"][0]
    assert first["token_type_ids"].count(1) > 0  # the pair is encoded as a second segment
    assert set(data["train"]["labels"]) <= {0, 1}


def test_max_samples_after_seeded_shuffle(tmp_path):
    rows = [f"t{i},{'a' if i < 50 else 'b'}" for i in range(100)]  # sorted by label, as files often are
    raw, task = load(tmp_path, rows, max_train_samples=20, max_eval_samples=5)
    assert len(raw["train"]) == 20 and len(raw["validation"]) == 5
    assert set(raw["train"]["sentiment"]) == {"a", "b"}


def test_builtin_rotten_tomatoes_is_split_deterministically():
    raw, desc, _ = load_raw_datasets(DataArguments(), seed=0)
    assert desc == "builtin:rotten_tomatoes"
    sizes = {s: len(d) for s, d in raw.items()}
    assert sum(sizes.values()) == 12752  # 12,808 fresh/rotten rows less 56 duplicate texts
    assert sizes == {"train": 10186, "validation": 1258, "test": 1308}  # fixed by a hash of each text
    assert not set(raw["train"]["text"]) & set(raw["test"]["text"])
    assert get_task("text_cls").build(DataArguments()).discover(raw)["labels"] == ["fresh", "rotten"]


def test_builtin_debates_is_a_three_class_task_split_by_hash():
    task = get_task("text_cls").cls
    raw, desc, _ = load_raw_datasets(DataArguments(dataset_name="builtin:debates"), seed=0,
                                     builtin=task.builtin_dataset, others=task.builtin_datasets)
    assert desc == "builtin:debates"
    sizes = {s: len(d) for s, d in raw.items()}
    assert sum(sizes.values()) == 875  # statements of five words or more, each once
    assert sizes["test"] > 2 * sizes["validation"]  # 60/10/30: a test split large enough to compare tools on
    texts = {s: set(d["text"]) for s, d in raw.items()}
    assert not texts["train"] & texts["test"] and not texts["validation"] & texts["test"]
    assert all(len(t.split()) >= 5 for d in raw.values() for t in d["text"])
    assert get_task("text_cls").build(DataArguments()).discover(raw)["labels"] == ["Democratic", "Moderator",
                                                                                  "Republican"]
    again, _, _ = load_raw_datasets(DataArguments(dataset_name="builtin:debates"), seed=1,
                                    builtin=task.builtin_dataset, others=task.builtin_datasets)
    assert again["test"]["text"] == raw["test"]["text"]  # the split does not depend on the seed


def test_an_unknown_builtin_names_the_ones_there_are():
    task = get_task("text_cls").cls
    with pytest.raises(PeftkitError, match="builtin:rotten_tomatoes, builtin:debates"):
        load_raw_datasets(DataArguments(dataset_name="builtin:debate"), seed=0, builtin=task.builtin_dataset,
                          others=task.builtin_datasets)


@pytest.mark.parametrize("rows,message", [
    (["t1,1.5", "t2,0.5", "t3,2.5"], "holds floats"),
    (["t1,a", "t2,a", "t3,a"], "single class"),
])
def test_bad_labels(tmp_path, rows, message):
    raw, task = load(tmp_path, rows * 4)
    with pytest.raises(PeftkitError, match=message):
        task.discover(raw)


def test_mixed_label_types(monkeypatch):
    # Arrow columns hold one type, so mixed labels reach us only from Python objects; simulate that.
    raw = DatasetDict({"train": Dataset.from_dict({"text": ["a", "b"], "label": ["x", "y"]})})
    task = get_task("text_cls").build(DataArguments())
    monkeypatch.setattr(task, "_label_values", lambda ds: [1, "y"])
    with pytest.raises(PeftkitError, match="mixes types"):
        task.discover(raw)


def test_unseen_evaluation_labels_are_named(tmp_path):
    args = DataArguments(train_file=write_csv(tmp_path / "tr.csv", "text,label", ["a,x", "b,y"] * 3),
                         validation_file=write_csv(tmp_path / "va.csv", "text,label", ["c,x", "d,z"]))
    raw, _, _ = load_raw_datasets(args, seed=0)
    with pytest.raises(PeftkitError, match=r"validation data has label\(s\) \['z'\] that training never saw"):
        get_task("text_cls").build(args).discover(raw)


def test_missing_column_lists_the_columns_there_are(tmp_path):
    raw, task = load(tmp_path, ["a,x", "b,y"] * 3, header="review,mood")
    with pytest.raises(PeftkitError, match=r"'sentiment' \(--label_column\) is not in the train data. "
                                           r"Its columns are: review, mood"):
        task.discover(raw)


@pytest.mark.parametrize("content,message", [
    (None, "does not exist"), ("", "is empty"), ("text,label\n", "holds no examples"),
])
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "data.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(PeftkitError, match=message):
        load_raw_datasets(DataArguments(train_file=str(path)), seed=0)


def test_unknown_format(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_text("x")
    with pytest.raises(PeftkitError, match="Cannot tell the format"):
        load_raw_datasets(DataArguments(train_file=str(path)), seed=0)


@pytest.mark.parametrize("name,content,message", [
    ("chats.jsonl", '{"text": "a", "label": "x"}\n\n{"text": "b", "label": "y"}\n{"text": "c" "label": "y"}\n',
     r"'chats.jsonl': line 4 is not valid JSON \(Expecting ',' delimiter at column 14\)"),
    ("rows.json", '[{"text": "a", "label": 1},\n {"text": "b" "label": 2}]\n',
     r"'rows.json': it is not valid JSON at line 2, column 15 \(Expecting ',' delimiter\)"),
    # a broken line that does not even start with "{", after a text holding U+2028 (not a line end)
    ("more.jsonl", '{"text": "a\u2028b", "label": "x"}\n{"text": "b", "label": "y"}\nlabel: y\n',
     r"'more.jsonl': line 3 is not valid JSON"),
    ("lines.json", '{"text": "a", "label": "x"}\n{"text": "b" "label": "y"}\n',
     r"'lines.json': line 2 is not valid JSON"),
])
def test_a_broken_json_file_names_its_line(tmp_path, monkeypatch, caplog, name, content, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_text(content)
    with pytest.raises(PeftkitError, match=message):
        load_raw_datasets(DataArguments(train_file=name), seed=0)
    assert "row" not in caplog.text  # the reader's own 0-based "row 2" is not shown


def test_na_none_and_null_in_a_csv_are_labels_not_missing_values(tmp_path):
    """A label column of NA / None / null (e.g. 'no answer') was read as missing: 54 examples 'had no value'."""
    path = tmp_path / "d.csv"
    path.write_text("text,label\nfirst,NA\nsecond,None\nthird,null\nfourth,N/A\nfifth,yes\nsixth,\n")
    ds = load_file(str(path))
    assert ds["label"] == ["NA", "None", "null", "N/A", "yes", None]  # only the empty cell is missing
