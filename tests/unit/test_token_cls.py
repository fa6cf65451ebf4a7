"""token_cls end to end on a tiny BERT with the built-in tokenizer: user data in JSONL (own columns, integer
tags and --label_names) and CoNLL, scoring of whole words (cut ones included), entity spans, bad input."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset, DatasetDict
from torch import nn

from peftkit.cli import train_main
from peftkit.config import DataArguments
from peftkit.tasks import get_task
from peftkit.tasks.token_cls import WORD_LABELS, WORD_STARTS, TokenCollator

TAGS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
SENTENCES = [
    (["Alice", "lives", "in", "Paris"], ["B-PER", "O", "O", "B-LOC"]),
    (["Bob", "Smith", "visited", "New", "York"], ["B-PER", "I-PER", "O", "B-LOC", "I-LOC"]),
    (["the", "weather", "is", "nice"], ["O", "O", "O", "O"]),
    (["Carol", "flew", "to", "Rome", "yesterday"], ["B-PER", "O", "O", "B-LOC", "O"]),
]


@pytest.fixture(scope="module")
def tiny_tagger_dir(tmp_path_factory, builtin_model_dir):
    """A tiny random BERT with the built-in (MiniLM) tokenizer: the whole token_cls path in seconds."""
    from conftest import TINY
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(builtin_model_dir)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_tagger")
    BertModel(BertConfig(vocab_size=len(tokenizer), **(TINY | {"max_position_embeddings": 128,
                                                                "initializer_range": 0.02}))).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_conll(path, sentences, columns=4):
    lines = ["-DOCSTART- -X- -X- O", ""]
    for words, tags in sentences:
        lines += [" ".join([w, "NN", "I-NP", t][-columns:] if columns > 2 else [w, t]) for w, t in
                  zip(words, tags, strict=True)] + [""]
    path.write_text("\n".join(lines))
    return str(path)


def train(model_dir, out, *flags):
    return train_main(["--model_name_or_path", model_dir, "--output_dir", str(out), "--report_to", "none",
                       "--max_steps", "4", "--per_device_train_batch_size", "2", "--learning_rate", "1e-3",
                       *flags], task="token_cls", strategy="lora")


def test_jsonl_with_own_columns_integer_tags_and_label_names(tiny_tagger_dir, tmp_path):
    rows = [{"words": w, "tags": [TAGS.index(t) for t in tg]} for w, tg in SENTENCES * 3]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    dev = write_jsonl(tmp_path / "dev.jsonl", rows[:4])
    code = train(tiny_tagger_dir, tmp_path / "run", "--train_file", data, "--validation_file", dev, "--test_file",
                 dev, "--text_column", "words", "--label_column", "tags", "--label_names", *TAGS)
    assert code == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["labels"] == TAGS  # the id order --label_names gave
    for key in ("f1", "precision", "recall", "accuracy", "loss"):
        assert 0 <= results["test"][key] <= (1 if key != "loss" else 100), key
    saved = json.loads((tmp_path / "run" / "peftkit_config.json").read_text())
    assert saved["task_state"]["labels"] == TAGS and saved["task_args"]["label_names"] == TAGS


def test_conll_with_pos_and_chunk_columns_trains_with_only_file_flags(tiny_tagger_dir, tmp_path):
    train_file = write_conll(tmp_path / "train.conll", SENTENCES * 3)
    dev = write_conll(tmp_path / "dev.txt", SENTENCES)
    assert train(tiny_tagger_dir, tmp_path / "run", "--train_file", train_file, "--validation_file", dev) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert sorted(results["labels"]) == sorted(TAGS) and results["labels"][0] == "O"


@pytest.mark.parametrize("rows, message", [
    ([{"tokens": ["a", "b"], "ner_tags": ["O"]}], r"different number of words and tags \(train.jsonl line 1"),
    ([{"tokens": ["a"], "ner_tags": "O"}], r"must hold a list of tags per row"),
    ([{"tokens": [], "ner_tags": []}], r"have no words \(train.jsonl line 1\)"),
])
def test_bad_rows_exit_2_naming_the_row(tiny_tagger_dir, tmp_path, capsys, rows, message):
    good = [{"tokens": w, "ner_tags": t} for w, t in SENTENCES]
    data = write_jsonl(tmp_path / "train.jsonl", rows + good)
    assert train(tiny_tagger_dir, tmp_path / "run", "--train_file", data) == 2
    assert re.search(message, capsys.readouterr().err)


def test_unknown_tags_in_evaluation_data_and_a_prose_file_are_refused(tiny_tagger_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", [{"tokens": w, "ner_tags": t} for w, t in SENTENCES])
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"tokens": ["Acme"], "ner_tags": ["B-ORG"]}])
    assert train(tiny_tagger_dir, tmp_path / "a", "--train_file", data, "--validation_file", dev) == 2
    assert "tag(s) ['B-ORG'] that training never saw" in capsys.readouterr().err
    prose = tmp_path / "notes.txt"
    prose.write_text("Some prose.\nMore prose here\n")
    assert train(tiny_tagger_dir, tmp_path / "b", "--train_file", str(prose)) == 2
    assert "not in CoNLL format: line(s) 2 do not have the 2 columns most lines have" in capsys.readouterr().err
    prose.write_text("Notes\nmore\n")
    assert train(tiny_tagger_dir, tmp_path / "c", "--train_file", str(prose)) == 2
    assert "not in CoNLL format: line(s) 1, 2 hold a single column" in capsys.readouterr().err


def task_on(tokenizer, raw, max_seq_length=128):
    task = get_task("token_cls").build(DataArguments(text_column="tokens", label_column="ner_tags",
                                                     max_seq_length=max_seq_length))
    task.discover(raw)
    return task, task.preprocess(raw, tokenizer)


def perfect_outputs(batch):
    """Logits that predict every supervised token's gold tag (and O elsewhere)."""
    labels = batch["labels"]
    logits = torch.zeros((*labels.shape, 5))
    logits[..., 0] = 1.0
    logits[labels >= 0] = torch.nn.functional.one_hot(labels[labels >= 0], 5).float() * 10
    return SimpleNamespace(logits=logits)


def test_words_cut_by_max_seq_length_count_as_predicted_o(builtin_model_dir, caplog):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(builtin_model_dir)
    words, tags = SENTENCES[1]  # the entity New York at words 3-4
    raw = DatasetDict({"train": Dataset.from_dict({"tokens": [w for w, _ in SENTENCES],
                                                   "ner_tags": [t for _, t in SENTENCES]})})
    task, data = task_on(tokenizer, raw)
    batch = TokenCollator(tokenizer)([data["train"][i] for i in range(len(SENTENCES))])
    assert task.compute_metrics(task.eval_rows(perfect_outputs(batch), batch))["f1"] == 1.0
    # 5 tokens: [CLS] bob smith visited [SEP] -> New York never reaches the model
    task, data = task_on(tokenizer, raw, max_seq_length=5)
    assert "lie beyond --max_seq_length 5 tokens" in caplog.text
    batch = TokenCollator(tokenizer)([data["train"][1]])
    assert batch[WORD_LABELS].shape == (1, 5) and int(batch[WORD_STARTS].sum()) == 3
    scores = task.compute_metrics(task.eval_rows(perfect_outputs(batch), batch))
    assert scores["recall"] == pytest.approx(1 / 2) and scores["precision"] == 1.0  # PER found, LOC missed
    assert scores["accuracy"] == pytest.approx(3 / 5)


class Tagger(nn.Module):
    """Tags the tokens of chosen words: a stand-in model whose answer the test knows."""

    def __init__(self, tag_of_id: dict[int, int]):
        super().__init__()
        self.tag_of_id = tag_of_id
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, **_):
        logits = torch.zeros((*input_ids.shape, len(TAGS)))
        logits[..., 0] = 1.0
        for token, tag in self.tag_of_id.items():
            logits[input_ids == token] = torch.nn.functional.one_hot(torch.tensor(tag), len(TAGS)).float() * 5
        return SimpleNamespace(logits=logits)


def test_predicted_spans_cut_the_text_at_the_entity(builtin_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(builtin_model_dir)
    task = get_task("token_cls").build(DataArguments())
    task.restore({"labels": TAGS, "scheme": "prefixed"})
    ids = {w: tokenizer.convert_tokens_to_ids(w) for w in ("new", "york", "alice")}
    model = Tagger({ids["new"]: 1, ids["york"]: 2, ids["alice"]: 3})
    text = "Yesterday  Alice moved to New York, happily."
    [out] = task.predict(model, tokenizer, [{"text": text}])
    spans = {(e["type"], e["text"]) for e in out["entities"]}
    assert spans == {("PER", "Alice"), ("LOC", "New York")}
    for entity in out["entities"]:
        assert text[entity["start"]:entity["end"]] == entity["text"] and 0 < entity["score"] <= 1
