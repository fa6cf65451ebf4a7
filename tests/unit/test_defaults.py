"""Defaults derived from the data: small data gets enough optimizer steps; flags still win."""

from __future__ import annotations

import json

import pytest

from peftkit.config import MAX_AUTO_EPOCHS, MAX_CLASS_EPOCHS, MIN_CLASS_VISITS, MIN_STEPS, TrainingArguments
from peftkit.defaults import (
    derive_batch_size,
    derive_defaults,
    derive_epochs,
    derive_eval_every_epochs,
    derive_learning_rate,
    epochs_for_classes,
    too_few_steps,
)


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


@pytest.mark.parametrize("n,batch,expected_epochs", [
    (8530, 32, 2),    # large data: the default 2 epochs
    (500, 8, 2),      # 63 steps an epoch: 2 epochs give 126
    (300, 8, 3),      # 38 an epoch: 3 epochs for 114 steps
    (100, 8, 8),      # 13 an epoch: 8 epochs for 104 steps
    (20, 8, 34),      # 3 an epoch: 34 epochs for 102 steps (the former cap of 10 gave 30)
    (4, 8, MAX_AUTO_EPOCHS),  # 1 an epoch: the cap, 100 steps
])
def test_small_data_gets_more_epochs_up_to_a_cap(n, batch, expected_epochs):
    epochs, why = derive_epochs(TrainingArguments(per_device_train_batch_size=batch), n, 1)
    assert epochs == expected_epochs
    assert ("needs at least" in why) == (expected_epochs > 2)


def test_a_tiny_ner_set_gets_the_steps_its_task_asks_for():
    """24 sentences (the issue's case): batch 8, 3 steps an epoch; the derived schedule reaches token_cls's 300
    steps (it was 10 epochs, 30 steps, and learned nothing), and nothing warns."""
    args, _ = derive_defaults(TrainingArguments(), 24, 60, 1, num_classes=7, min_steps=300)
    assert (args.per_device_train_batch_size, args.num_train_epochs) == (8, 100)
    assert too_few_steps(args, 24, 1, 300) is None


def test_data_too_small_even_for_the_cap_is_warned_about():
    args, derived = derive_defaults(TrainingArguments(), 12, 60, 1, num_classes=7, min_steps=300)
    assert derived["num_train_epochs"]["why"].endswith(f"(at most {MAX_AUTO_EPOCHS} epochs): 200 steps")
    warning = too_few_steps(args, 12, 1, 300)
    assert warning.startswith("Only 12 training examples: 100 epochs at batch 8 give 200 optimizer steps, under "
                              "the 300") and "label more examples" in warning
    # a schedule the user chose is theirs
    assert too_few_steps(TrainingArguments(max_steps=10, per_device_train_batch_size=8), 12, 1, 300) is None


def test_the_class_visit_rule_keeps_its_own_cap():
    """Many classes in little data: the class-visit rule stops at MAX_CLASS_EPOCHS; only the steps rule goes
    beyond it (300 examples in 21 classes: 10 epochs at batch 32 are already 100 steps)."""
    assert epochs_for_classes(300, 21) == MAX_CLASS_EPOCHS
    assert epochs_for_classes(24, 2) == MAX_CLASS_EPOCHS


def test_set_epochs_are_not_second_guessed_and_decide_the_batch_size():
    assert derive_epochs(TrainingArguments(num_train_epochs=1, per_device_train_batch_size=8), 100, 1) is None
    assert derive_epochs(TrainingArguments(max_steps=5, per_device_train_batch_size=8), 100, 1)[0] == 2
    # 1,000 examples: 2 epochs (the default) fit batch 16; a user's 1 epoch needs batch 8 for 100 steps
    assert derive_batch_size(TrainingArguments(), 1000, 1)[0] == 16
    assert derive_batch_size(TrainingArguments(num_train_epochs=1), 1000, 1)[0] == 8


@pytest.mark.parametrize("n,epochs,n_val,expected", [
    (8530, 2, 1258, 1),   # the built-in data: every epoch, as before
    (300, 3, 1258, 1),    # evaluating 3 times costs about as much as training
    (100, 8, 1258, 4),    # 100 examples against 1,258: twice (epochs 4 and 8)
    (20, 10, 1258, 10),   # once, at the end
    (36, 10, 4, 1),       # a carved 10% validation split is cheap
])
def test_evaluation_is_spaced_when_validation_dwarfs_training(n, epochs, n_val, expected):
    every, why = derive_eval_every_epochs(TrainingArguments(num_train_epochs=epochs), n, n_val)
    assert every == expected and (("every epoch" in why) == (expected == 1))


def test_evaluation_frequency_set_or_without_validation_is_left_alone():
    assert derive_eval_every_epochs(TrainingArguments(num_train_epochs=8, eval_every_epochs=1), 100, 1258) is None
    assert derive_eval_every_epochs(TrainingArguments(num_train_epochs=8), 100, 0) is None


def test_the_three_derive_in_order_each_from_the_one_before():
    asked = TrainingArguments()
    args, derived = derive_defaults(asked, 100, 1258, 1)  # 100 examples: batch 8, so 13 steps an epoch, so 8 epochs
    assert {k: v["value"] for k, v in derived.items()} == {"per_device_train_batch_size": 8, "num_train_epochs": 8,
                                                           "eval_every_epochs": 4}
    assert (args.per_device_train_batch_size, args.num_train_epochs, args.eval_every_epochs) == (8, 8, 4)
    assert asked == TrainingArguments()  # new arguments; what was asked for is left as it was
    set_by_user = TrainingArguments(per_device_train_batch_size=32, num_train_epochs=1, eval_every_epochs=1)
    assert derive_defaults(set_by_user, 100, 1258, 1) == (set_by_user, {})


@pytest.mark.parametrize("n, classes, batch, epochs", [
    (432, 5, 16, 6),      # the long documents: 86 per class, 2 epochs left the validation loss falling
    (1000, 2, 16, 2),     # 500 per class: 2 epochs, as before
    (8530, 2, 32, 2),     # the built-in data: unchanged
    (300, 2, 8, 4),       # 150 per class: 4 epochs (the step floor alone gave 3)
    (100, 2, 8, 10),      # 50 per class: the cap
    (100, 0, 8, 8),       # no classes (a language model): the step floor alone
])
def test_classification_epochs_show_each_class_often_enough(n, classes, batch, epochs):
    args, derived = derive_defaults(TrainingArguments(), n, 100, 1, num_classes=classes)
    assert (args.per_device_train_batch_size, args.num_train_epochs) == (batch, epochs)
    assert args.num_train_epochs * n / max(classes, 1) >= MIN_CLASS_VISITS or epochs in (2, MAX_AUTO_EPOCHS) \
        or not classes
    if classes and epochs > 2:
        assert f"{classes} classes" in derived["num_train_epochs"]["why"]
    assert derive_defaults(TrainingArguments(num_train_epochs=1), n, 100, 1, num_classes=classes)[1].get(
        "num_train_epochs") is None  # a set value stands


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
    assert "num_train_epochs" not in results["derived"] and results["num_train_epochs"] == 1  # passed
    config = json.loads((tmp_path / "run" / "peftkit_config.json").read_text())
    assert config["training"]["per_device_train_batch_size"] is None  # what the user passed: nothing


def test_a_tiny_run_gets_more_epochs_and_says_why(tmp_path, builtin_model_dir):
    from peftkit.cli import train_main

    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"text number {i},{'ab'[i % 2]}\n" for i in range(40)))
    code = train_main(["--model_name_or_path", builtin_model_dir, "--train_file", str(data), "--output_dir",
                       str(tmp_path / "run"), "--report_to", "none", "--keep_checkpoints", "--save_total_limit", "0"],
                      task="text_cls", strategy="head")
    assert code == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    # many short epochs write a checkpoint every other epoch (at most about 10), not one per epoch
    steps = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "run").glob("checkpoint-*"))
    assert steps == list(range(10, 100, 10)), steps
    # 36 examples at batch 8: 5 steps an epoch, so 20 epochs for MIN_STEPS, evaluated after each one
    assert results["num_train_epochs"] == 20 and results["global_step"] == 5 * 20 == MIN_STEPS
    assert results["derived"]["num_train_epochs"]["why"].startswith("5 optimizer steps per epoch at batch 8")
    assert [h["epoch"] for h in results["history"]] == list(range(1, 21))


@pytest.mark.parametrize("epochs,every,evaluated", [(4, 2, [2, 4]), (3, 2, [2, 3])])
def test_eval_every_epochs_evaluates_then_and_at_the_end(tmp_path, builtin_model_dir, epochs, every, evaluated):
    from peftkit.cli import train_main

    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"text number {i},{'ab'[i % 2]}\n" for i in range(40)))
    code = train_main(["--model_name_or_path", builtin_model_dir, "--train_file", str(data), "--output_dir",
                       str(tmp_path / "run"), "--report_to", "none", "--num_train_epochs", str(epochs),
                       "--eval_every_epochs", str(every)], task="text_cls", strategy="head")
    assert code == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [h["epoch"] for h in results["history"]] == evaluated
    assert "eval_every_epochs" not in results["derived"]


@pytest.mark.parametrize("n,min_steps,expected", [
    (300, MIN_STEPS, (32, 10)),   # the general rule: 100 steps at batch 32 (full fine-tuning stayed at all-`O`)
    (300, 300, (8, 10)),          # token_cls: 380 steps
    (1891, 300, (32, 6)),         # the whole built-in NER data keeps batch 32: 360 steps
])
def test_a_task_can_ask_for_more_steps(n, min_steps, expected):
    args, derived = derive_defaults(TrainingArguments(), n, 200, 1, num_classes=21, min_steps=min_steps)
    assert (args.per_device_train_batch_size, args.num_train_epochs) == expected
    if expected[0] != 32:
        assert f"at least {min_steps}" in derived["per_device_train_batch_size"]["why"]


def test_token_cls_runs_derive_their_batch_and_lora_rate_from_the_data(tmp_path, builtin_model_dir):
    from peftkit.cli import train_main
    from peftkit.tasks.token_cls import TokenClassification

    assert TokenClassification.defaults.min_steps == 300 > MIN_STEPS
    data = tmp_path / "d.jsonl"
    rows = [{"tokens": ["visit", f"city{i}", "today"], "ner_tags": ["O", "B-LOC", "O"]} for i in range(200)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["--model_name_or_path", builtin_model_dir, "--train_file", str(data), "--output_dir",
            str(tmp_path / "run"), "--report_to", "none", "--keep_checkpoints"]
    assert train_main(argv, task="token_cls", strategy="lora") == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    # 180 sentences (20 held out): batch 16 would give the general 100 steps, the task wants 300
    derived = results["derived"]["per_device_train_batch_size"]
    assert derived["value"] == 8 and "at least 300" in derived["why"]
    assert results["global_step"] >= 200
    # ... and LoRA's rate follows the derived batch: 2e-3 x sqrt(8 / 32), the rate the run trained at
    assert results["derived"]["learning_rate"]["value"] == results["learning_rate"] == 1e-3
    assert 0.8e-3 < max(h["learning_rate"] for h in results["train_history"]) <= 1e-3
    # config.json keeps the rate asked for (the strategy's), what a resumption is checked against
    config = json.loads((tmp_path / "run" / "peftkit_config.json").read_text())
    assert config["training"]["learning_rate"] == 2e-3 and config["derived"]["learning_rate"]["value"] == 1e-3
    # A resumption derives the same rate and accepts the saved settings: it ends where the whole run did.
    (tmp_path / "run" / "results.json").unlink()
    middle = min((tmp_path / "run").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    step = int(middle.name.split("-")[1])
    assert step < results["global_step"]
    assert train_main([*argv, "--resume_from_checkpoint", str(middle)], task="token_cls", strategy="lora") == 0
    resumed = json.loads((tmp_path / "run" / "results.json").read_text())
    assert resumed["resumed_from_step"] == step and resumed["learning_rate"] == 1e-3
    assert resumed["train_history"] == results["train_history"] and resumed["eval"] == results["eval"]


def test_text_cls_keeps_lora_rate_at_a_derived_small_batch(tmp_path, builtin_model_dir):
    # 300 reviews at batch 8: 1e-3 learned too slowly in 152 steps (0.720 against 0.742 at 2e-3, 3 seeds)
    from peftkit.cli import train_main
    from peftkit.tasks.text_cls import TextClassification

    assert not TextClassification.defaults.lr_follows_batch
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"text number {i},{'ab'[i % 2]}\n" for i in range(40)))
    code = train_main(["--model_name_or_path", builtin_model_dir, "--train_file", str(data), "--output_dir",
                       str(tmp_path / "run"), "--report_to", "none", "--num_train_epochs", "1"],
                      task="text_cls", strategy="lora")
    assert code == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["derived"]["per_device_train_batch_size"]["value"] == 8
    assert "learning_rate" not in results["derived"] and results["learning_rate"] == 2e-3


@pytest.mark.parametrize("batch,procs,derived,lr,expected", [
    (8, 1, True, None, 1e-3),       # 2e-3 x sqrt(8 / 32)
    (16, 1, True, None, 0.00141),   # x sqrt(1/2), to 3 digits
    (8, 2, True, None, 0.00141),    # the global batch counts: 2 x 8
    (32, 1, True, None, None),      # the batch the default was chosen at
    (8, 1, False, None, None),      # a batch the user (or the task's defaults) chose keeps the strategy's rate
    (8, 1, True, 5e-4, None),       # so does a rate the user chose
])
def test_lora_rate_follows_a_derived_batch(batch, procs, derived, lr, expected):
    from peftkit.strategies.lora import LoRA

    args = TrainingArguments(per_device_train_batch_size=None if derived else batch, learning_rate=lr,
                             num_train_epochs=2)
    if derived:  # what derive_batch_size gave
        args.per_device_train_batch_size = batch
        got = derive_learning_rate(args, procs, LoRA.default_learning_rate, LoRA.lr_reference_batch)
        assert (got and got[0]) == expected or (got is None and expected is None)
        if got:
            assert f"sqrt({batch * procs}/32)" in got[1]
    else:
        n = 100  # small data: only the batch is the user's
        args, result = derive_defaults(args, n, 100, procs, default_learning_rate=2e-3, lr_reference_batch=32)
        assert "learning_rate" not in result and args.learning_rate is None


def test_derive_defaults_scales_only_adam_and_only_strategies_that_say_where_their_rate_was_chosen():
    small = dict(num_train=300, num_validation=100, num_processes=1, default_learning_rate=2e-3)
    args, derived = derive_defaults(TrainingArguments(), **small, lr_reference_batch=32)
    assert derived["learning_rate"]["value"] == 1e-3 and args.learning_rate == 1e-3
    assert "learning_rate" not in derive_defaults(TrainingArguments(), **small, lr_reference_batch=None)[1]
    sgd = TrainingArguments(optimizer="sgd")
    assert "learning_rate" not in derive_defaults(sgd, **small, lr_reference_batch=32)[1]



def test_a_run_too_small_for_its_steps_warns_what_to_expect(tmp_path, builtin_model_dir, capsys):
    from peftkit.cli import train_main

    data = tmp_path / "d.jsonl"
    rows = [{"tokens": ["visit", f"city{i}", "today"], "ner_tags": ["O", "B-LOC", "O"]} for i in range(12)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert train_main(["--model_name_or_path", builtin_model_dir, "--train_file", str(data), "--output_dir",
                       str(tmp_path / "run"), "--report_to", "none"], task="token_cls", strategy="head") == 0
    out = capsys.readouterr()
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["num_train_epochs"] == MAX_AUTO_EPOCHS and results["global_step"] < 300
    assert "WARNING peftkit.runner: Only 10 training examples: 100 epochs at batch 8 give 200 " in out.err
    assert "Expect weak results" in out.err
    # a hundred tied evaluations make one short line, not a list of a hundred steps
    kept = next(line for line in out.out.splitlines() if line.startswith("Kept the weights"))
    assert len(kept) < 250, kept
