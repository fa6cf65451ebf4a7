"""`peftkit predict` on a sentence-pair run: it reads both texts, refuses inputs of the wrong shape, and its
probabilities are the adapter's as plain peft computes them."""

from __future__ import annotations

import csv
import io
import json
import sys

import pytest
import torch
from helpers import run_recipe

from peftkit.cli import main

pytestmark = pytest.mark.e2e
FIRST = ["the film is a delight", "a tedious, joyless mess", "warm and funny", "flat and lifeless", "a triumph"]
SECOND = ["i loved every minute", "i was bored stiff", "i laughed a lot", "it put me to sleep", "see it twice"]


@pytest.fixture(scope="module")
def pair_run(tmp_path_factory):
    """A LoRA run on sentence pairs with integer labels (1: the second text agrees with the first)."""
    tmp = tmp_path_factory.mktemp("pairs")
    rows = [(a, b, int(i == j)) for i, a in enumerate(FIRST) for j, b in enumerate(SECOND)]
    data = tmp / "pairs.csv"
    with open(data, "w", newline="") as fh:
        csv.writer(fh).writerows([("premise", "reply", "agrees"), *rows])
    out = tmp / "run"
    code = run_recipe("lora_text_cls.py", ["--train_file", str(data), "--validation_file", str(data), "--text_column",
                                           "premise", "--text_pair_column", "reply", "--label_column", "agrees",
                                           "--max_steps", "4", "--per_device_train_batch_size", "8",
                                           "--learning_rate", "0.01", "--report_to", "none", "--output_dir", str(out)])
    assert code == 0
    return out, data


def plain_peft_probabilities(run_dir, builtin_model_dir, texts, pairs):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = AutoModelForSequenceClassification.from_pretrained(builtin_model_dir, num_labels=2)
    model = PeftModel.from_pretrained(base, run_dir).eval()
    enc = AutoTokenizer.from_pretrained(run_dir)(texts, pairs, truncation=True, max_length=128, padding=True,
                                                  return_tensors="pt")
    with torch.no_grad():
        return torch.softmax(model(**enc).logits, dim=-1)


def predict(args, capsys, stdin: str | None = None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(["predict", *args])
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines()] if code == 0 else captured.err


def test_pairs_from_a_file_and_from_stdin_score_as_plain_peft_does(pair_run, builtin_model_dir, capsys, monkeypatch):
    run, data = pair_run
    code, rows = predict([str(run), "--input_file", str(data)], capsys)
    assert code == 0 and len(rows) == 25
    texts = [r["text"] for r in rows]
    pairs = [r["text_pair"] for r in rows]
    assert texts[:2] == [FIRST[0], FIRST[0]] and pairs[:2] == SECOND[:2]
    expected = plain_peft_probabilities(run, builtin_model_dir, texts, pairs)
    got = torch.tensor([[r["probabilities"]["0"], r["probabilities"]["1"]] for r in rows])
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=0)  # predict rounds to 6 decimals
    assert {r["label"] for r in rows} <= {0, 1} and all(isinstance(r["label"], int) for r in rows)  # ints stay ints
    # The second text matters: the same first texts alone would give other probabilities.
    alone = plain_peft_probabilities(run, builtin_model_dir, texts[:5], None)
    assert not torch.allclose(alone, expected[:5], atol=1e-3)

    code, lines = predict([str(run)], capsys, stdin=f"{FIRST[1]}\t{SECOND[1]}\n\n{FIRST[2]}\t{SECOND[0]}\n",
                          monkeypatch=monkeypatch)
    assert code == 0 and [(r["text"], r["text_pair"]) for r in lines] == [(FIRST[1], SECOND[1]), (FIRST[2], SECOND[0])]
    torch.testing.assert_close(torch.tensor([list(r["probabilities"].values()) for r in lines]),
                               plain_peft_probabilities(run, builtin_model_dir, [FIRST[1], FIRST[2]],
                                                        [SECOND[1], SECOND[0]]), atol=2e-6, rtol=0)


def test_inputs_of_the_wrong_shape_are_refused(pair_run, tmp_path, capsys, monkeypatch):
    run, _ = pair_run
    code, err = predict([str(run)], capsys, stdin="a text alone\nanother\tpair\n", monkeypatch=monkeypatch)
    assert code == 2 and "This run classifies sentence pairs" in err and "line(s) 1 of stdin" in err
    single = tmp_path / "single.csv"
    single.write_text("premise\nonly one text\n")
    code, err = predict([str(run), "--input_file", str(single)], capsys)
    assert code == 2 and "Column 'reply' (--text_pair_column) is not in the input data" in err
    # A single-text run refuses pairs.
    cfg = json.loads((run / "peftkit_config.json").read_text())
    cfg["data"]["text_pair_column"] = None
    solo = tmp_path / "solo"
    solo.mkdir()
    (solo / "peftkit_config.json").write_text(json.dumps(cfg))
    code, err = predict([str(solo), "--text_pair_column", "reply"], capsys, stdin="x\ty\n", monkeypatch=monkeypatch)
    assert code == 2 and "this run classifies single texts" in err
    from peftkit.errors import PeftkitError
    from peftkit.run_dir import predict_texts

    with pytest.raises(PeftkitError, match="This run classifies single texts"):
        predict_texts(solo, ["x"], ["y"])
    with pytest.raises(PeftkitError, match="pass the second text of each pair too"):
        predict_texts(run, ["x"])
