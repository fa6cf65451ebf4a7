"""Defaults derived from the data: small data gets enough optimizer steps; flags still win."""

from __future__ import annotations

import json

import pytest

from peftkit.config import MIN_STEPS, TrainingArguments, derive_batch_size


@pytest.mark.parametrize("n,epochs,procs,expected", [
    (8530, 2, 1, 32),   # the built-in training split: 534 steps at 32, as before
    (2000, 1, 1, 16),   # 63 steps at 32, 125 at 16
    (2000, 1, 2, 8),    # the global batch counts: 2 x 16 would give 63
    (500, 2, 1, 8),
    (100, 2, 1, 8),     # 26 steps even at 8: the smallest batch, not fewer examples per step
])
def test_batch_size_gives_small_data_enough_steps(n, epochs, procs, expected):
    size, why = derive_batch_size(TrainingArguments(num_train_epochs=epochs), n, procs)
    assert size == expected
    assert f"{n:,} training examples" in why and ("would give" in why) == (expected != 32)


def test_a_set_batch_size_or_max_steps_is_not_second_guessed():
    assert derive_batch_size(TrainingArguments(per_device_train_batch_size=64), 100, 1) is None
    assert derive_batch_size(TrainingArguments(max_steps=5), 100, 1)[0] == 32


def test_gradient_accumulation_counts_toward_the_steps():
    size, _ = derive_batch_size(TrainingArguments(num_train_epochs=1, gradient_accumulation_steps=2), 4000, 1)
    assert size == 16 and 4000 / (16 * 2) >= MIN_STEPS


def test_a_run_records_the_derived_batch_size_and_why(tmp_path, builtin_model_dir):
    from peftkit.cli import train_main

    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"text number {i},{'ab'[i % 2]}\n" for i in range(40)))
    code = train_main(["--model_name_or_path", builtin_model_dir, "--train_file", str(data), "--num_train_epochs",
                       "1", "--output_dir", str(tmp_path / "run"), "--report_to", "none"], task="text_cls",
                      strategy="head")
    assert code == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["per_device_train_batch_size"] == 8 and results["global_step"] == 5  # 36 examples (4 held out) at 8
    derived = results["derived"]["per_device_train_batch_size"]
    assert derived["value"] == 8 and derived["why"].startswith("36 training examples, 1 epoch(s), 1 process(es): 5 ")
    config = json.loads((tmp_path / "run" / "peftkit_config.json").read_text())
    assert config["training"]["per_device_train_batch_size"] is None  # what the user passed: nothing
