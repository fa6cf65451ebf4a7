"""Property-based tests (hypothesis) over the config schema and the data loaders: whatever the input, the
result is either correct or a PeftkitError, never a traceback from deep inside a library."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peftkit.cli import parse_train_args
from peftkit.config import OPTIMIZERS, DataArguments, ModelArguments, TrainingArguments, validate
from peftkit.data import load_raw_datasets
from peftkit.errors import PeftkitError
from peftkit.hf_flags import HF_FLAGS
from peftkit.tasks import get_task

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
anything_numeric = st.one_of(st.integers(-3, 40), st.floats(allow_nan=True, allow_infinity=True, width=32))


@SETTINGS
@given(st.fixed_dictionaries({}, optional={
    "per_device_train_batch_size": st.integers(-2, 64), "per_device_eval_batch_size": st.integers(-2, 64),
    "gradient_accumulation_steps": st.integers(-2, 8), "learning_rate": anything_numeric,
    "num_train_epochs": anything_numeric, "max_steps": st.integers(-3, 10), "weight_decay": anything_numeric,
    "warmup_ratio": anything_numeric, "max_grad_norm": anything_numeric, "save_steps": st.integers(-3, 10),
    "save_total_limit": st.integers(-3, 5), "eval_steps": st.integers(-3, 5), "logging_steps": st.integers(-3, 5),
    "early_stopping_patience": st.integers(-3, 5), "optimizer": st.sampled_from(["adamw", "sgd", "adam", ""]),
    "lr_scheduler_type": st.sampled_from(["linear", "cosine", "constant", "step"]),
    "on_nonfinite": st.sampled_from(["stop", "skip", "ignore"])}),
    st.fixed_dictionaries({}, optional={"max_seq_length": st.integers(-2, 512),
                                        "validation_split_percentage": anything_numeric,
                                        "max_train_samples": st.one_of(st.none(), st.integers(-2, 100))}))
def test_validate_accepts_only_usable_settings(train_values, data_values):
    try:  # the dataclasses check themselves when built
        train, data = TrainingArguments(**train_values), DataArguments(**data_values)
        validate(ModelArguments(), data, train)
    except PeftkitError as exc:
        assert str(exc).startswith("--")  # names the flag first
        return
    # Accepted: every number is one training can actually use.
    for value in (train.weight_decay, train.warmup_ratio, train.max_grad_norm, data.validation_split_percentage):
        assert math.isfinite(value)
    assert train.num_train_epochs is None or math.isfinite(train.num_train_epochs)  # None: derived
    assert train.learning_rate is None or (math.isfinite(train.learning_rate) and train.learning_rate > 0)
    assert train.per_device_train_batch_size is None or train.per_device_train_batch_size > 0  # None: derived
    assert min(train.per_device_eval_batch_size,
               train.gradient_accumulation_steps, data.max_seq_length, train.logging_steps) > 0
    assert train.num_train_epochs is None or train.num_train_epochs > 0 or train.max_steps > 0
    assert 0 <= train.warmup_ratio < 1 and 0 < data.validation_split_percentage < 100
    assert train.save_steps >= -1 and train.save_total_limit >= 0
    assert train.optimizer in OPTIMIZERS and train.on_nonfinite in ("stop", "skip")


valid_values = st.fixed_dictionaries({}, optional={
    "learning_rate": st.floats(1e-6, 1.0), "per_device_train_batch_size": st.integers(1, 64),
    "num_train_epochs": st.floats(0.5, 5), "seed": st.integers(0, 2**31 - 1), "lora_r": st.integers(1, 64),
    "lora_dropout": st.floats(0, 0.9), "text_column": st.text("abcxyz_", min_size=1, max_size=8),
    "lora_target_modules": st.lists(st.sampled_from(["query", "key", "value"]), min_size=1, max_size=3),
    "disable_dropout": st.booleans(), "save_total_limit": st.integers(0, 5)})
FIELDS = {f.name: cls for cls in (ModelArguments, DataArguments, TrainingArguments) for f in dataclasses.fields(cls)}


@SETTINGS
@given(values=valid_values, fmt=st.sampled_from(["yaml", "json"]), override=st.integers(1, 64))
def test_config_files_and_flags_map_onto_the_same_schema(tmp_path, values, fmt, override):
    path = tmp_path / f"run.{fmt}"
    path.write_text(yaml.safe_dump(values) if fmt == "yaml" else json.dumps(values))
    parsed = parse_train_args(["--config", str(path), "--per_device_train_batch_size", str(override)], "lora")
    merged = {}
    for obj in parsed:
        merged.update(dataclasses.asdict(obj))
    for key, value in values.items():
        if key != "per_device_train_batch_size":
            assert merged[key] == pytest.approx(value) if isinstance(value, float) else merged[key] == value, key
    assert merged["per_device_train_batch_size"] == override  # the command line wins over the file


@SETTINGS
@given(key=st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=20))
def test_unknown_config_keys_are_always_refused(tmp_path, key):
    if key in FIELDS or key in {"strategy", "task", "config"} or key.startswith("lora_") or key.startswith("bnb_"):
        return
    if key in HF_FLAGS:  # Trainer's names (e.g. optim) are translated or refused with their own message
        return
    path = tmp_path / "run.json"
    path.write_text(json.dumps({key: 1}))
    with pytest.raises(PeftkitError, match="Unknown key"):
        parse_train_args(["--config", str(path)], "lora")


rows = st.lists(st.tuples(st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40),
                          st.sampled_from(["pos", "neg", "neutral", "x"])), min_size=0, max_size=40)


@SETTINGS
@given(data=rows, pct=st.floats(1, 99), max_train=st.one_of(st.none(), st.integers(1, 50)), seed=st.integers(0, 9))
def test_loading_splits_every_row_exactly_once_or_says_why_not(tmp_path, data, pct, max_train, seed):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in data))
    args = DataArguments(train_file=str(path), validation_split_percentage=pct, max_train_samples=max_train)
    try:
        raw, _, _ = load_raw_datasets(args, seed)
        labels = get_task("text_cls").build(args).discover(raw)["labels"]
    except PeftkitError:
        return
    train = list(zip(raw["train"]["text"], raw["train"]["label"], strict=True))
    valid = list(zip(raw["validation"]["text"], raw["validation"]["label"], strict=True))
    assert train and valid
    if max_train is None:
        assert Counter(train) + Counter(valid) == Counter(data)  # a partition: nothing lost or duplicated
    else:
        assert len(train) <= max_train and not Counter(train) + Counter(valid) - Counter(data)
    assert labels == sorted(set(labels)) and set(labels) == {y for _, y in train}
    again, _, _ = load_raw_datasets(args, seed)
    assert again["validation"]["text"] == raw["validation"]["text"]  # the same seed, the same split
