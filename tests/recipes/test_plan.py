"""`peftkit plan` and the plan `peftkit train` makes first, as a user runs them: a directory holding only
config.json, every strategy in one table or JSON, a run that would not fit stopped before its model loads, and
training on random weights (--random_init) labelled as such."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig

from peftkit.cli import main

SMALL = ["--max_train_samples", "16", "--max_eval_samples", "8", "--max_generation_samples", "2",
         "--generation_max_new_tokens", "2", "--report_to", "none", "--max_steps", "2"]
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def config_only(tmp_path_factory) -> Path:
    """A Llama shape with SmolLM2's vocabulary size, as config.json alone (no weights, no tokenizer)."""
    path = tmp_path_factory.mktemp("config_only")
    LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True).save_pretrained(path)
    assert sorted(p.name for p in path.iterdir()) == ["config.json"]
    return path


def plan_json(*argv: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "peftkit", "plan", *argv, "--format", "json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_plan_every_strategy_from_a_config_alone(config_only):
    out = plan_json("--task", "causal_lm", "--model_name_or_path", str(config_only), "--strategy", "all",
                    "--per_device_train_batch_size", "4", "--max_seq_length", "128", "--memory", "64GiB")
    plans = {p["strategy"]: p for p in out["plans"]}
    assert set(plans) == {"full", "partial", "lora", "qlora"}  # head has nothing to train in a language model
    assert out["memory_limit"] == 64 * 2**30 and out["data"]["length"] == 128  # no tokenizer: --max_seq_length
    for p in plans.values():
        assert p["fits"] is True and p["setup"]["micro_batch"] == 4
        assert p["peak"] == sum(p[k] for k in ("weights", "gradients", "optimizer", "activations", "temporaries",
                                               "overhead"))
    assert plans["full"]["optimizer"] > 100 * plans["lora"]["optimizer"]
    assert plans["qlora"]["weights"] < plans["lora"]["weights"]


def test_plan_says_what_would_fit_when_a_run_does_not(config_only, capsys):
    flags = ["--task", "causal_lm", "--model_name_or_path", str(config_only), "--strategy", "full",
             "--max_seq_length", "256", "--memory", "64GiB"]
    peaks = {b: plan_json(*flags, "--per_device_train_batch_size", str(b))["plans"][0]["peak"] for b in (1, 16)}
    limit = (peaks[1] + peaks[16]) // 2  # micro-batch 16 does not fit; 1 does
    flags[-1] = str(limit)
    assert main(["plan", *flags, "--per_device_train_batch_size", "16"]) == 0
    text = capsys.readouterr().out
    assert "NO" in text and "full does not fit" in text and "--gradient_accumulation_steps" in text
    plan = plan_json(*flags, "--per_device_train_batch_size", "16")["plans"][0]
    assert plan["fits"] is False and plan["peak"] == peaks[16]
    changes = [a["change"] for a in plan["advice"]]
    assert changes[0].startswith("micro-batch") and "activation checkpointing" in changes
    smaller = plan["advice"][0]
    assert smaller["fits"] and smaller["peak"] <= limit and "--gradient_accumulation_steps" in smaller["flags"]


def test_train_stops_before_loading_a_model_that_would_not_fit(tiny_lm_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--task", "causal_lm", "--strategy", "full", "--model_name_or_path", tiny_lm_dir, *SMALL,
                 "--output_dir", str(out), "--memory", "1MiB"])
    err = capsys.readouterr().err
    assert code == 2
    assert "would not fit" in err and "Nothing was loaded" in err and "--force" in err
    assert not (out / "peftkit_config.json").exists() and not (out / "results.json").exists()


def test_random_init_trains_and_is_labelled_synthetic(config_only, tmp_path, capsys):
    """A config.json alone trains on random weights, labelled as such; `eval` rebuilds the same synthetic base
    (a fixed seed per configuration), so the adapter is read on the weights it was trained on and the run's test
    loss comes back."""
    out = tmp_path / "run"
    assert main(["train", "--task", "causal_lm", "--strategy", "lora", "--model_name_or_path", str(config_only),
                 "--random_init", *SMALL, "--output_dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["synthetic_weights"] is True
    plan = results["plan"]
    assert plan["strategy"] == "lora" and plan["peak"] > plan["weights"] > 0 and plan["limit"] > 0
    assert "synthetic" in (out / "README.md").read_text().lower()
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["loss"] == pytest.approx(results["test"]["loss"], rel=1e-6)


def test_force_trains_past_the_plan(tiny_lm_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--task", "causal_lm", "--strategy", "lora", "--model_name_or_path", tiny_lm_dir, *SMALL,
                 "--output_dir", str(out), "--memory", "1MiB", "--force"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["synthetic_weights"] is False and results["plan"]["limit"] == 2**20


def test_auto_batch_size_fits_the_limit_and_equals_the_manual_setting(tiny_lm_dir, tmp_path):
    """A limit between the plans of micro-batch 2 and 8: `auto` halves causal_lm's default batch (8) until it
    fits, keeps the global batch with accumulation, and trains exactly as that micro-batch and accumulation
    passed by hand."""
    flags = ["--task", "causal_lm", "--strategy", "lora", "--model_name_or_path", tiny_lm_dir, *SMALL,
             "--max_train_samples", "64"]
    peaks = {}
    for micro in (2, 8):
        out = plan_json(*flags, "--per_device_train_batch_size", str(micro))
        peaks[micro] = out["plans"][0]["peak"]
    assert peaks[8] > peaks[2]
    limit = (peaks[2] + peaks[8]) // 2
    auto = tmp_path / "auto"
    assert main(["train", *flags, "--per_device_train_batch_size", "auto", "--memory", str(limit), "--output_dir",
                 str(auto), "--seed", "3"]) == 0
    results = json.loads((auto / "results.json").read_text())
    micro = results["per_device_train_batch_size"]
    accumulation = results["derived"]["gradient_accumulation_steps"]["value"]
    assert micro in (2, 4) and micro * accumulation == 8 and results["plan"]["peak"] <= limit
    assert "auto_batch_size" in results["derived"]["per_device_train_batch_size"]["why"]
    manual = tmp_path / "manual"
    assert main(["train", *flags, "--per_device_train_batch_size", str(micro), "--gradient_accumulation_steps",
                 str(accumulation), "--output_dir", str(manual), "--seed", "3"]) == 0
    by_hand = json.loads((manual / "results.json").read_text())
    assert results["eval"] == by_hand["eval"] and results["test"] == by_hand["test"]
    assert results["train_history"] == by_hand["train_history"]


def test_auto_batch_size_probe_halves_a_micro_batch_that_runs_out_of_memory(tiny_lm_dir, tmp_path, monkeypatch):
    """The probe after the plan (a GPU's, run here on the CPU with an out-of-memory error raised for batches of
    more than 2 rows): `auto` goes 8 -> 4 -> 2, keeps the global batch, and the run equals micro-batch 2 x 4 by
    hand (the probe leaves no gradients behind and the random generators as they were): the same training losses,
    and evaluation equal to float32 rounding (after two attempts that ran out of memory, the trained weights differ
    from the hand-set run's by at most 6e-10; after one, or none, they are equal: the cause was not found)."""
    from peftkit import preflight
    from peftkit.tasks.base import Task

    forward = Task.forward

    def small_gpu(self, model, batch):  # training batches (the probe's included) of more than 2 rows do not fit
        if model.training and batch["input_ids"].shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(self, model, batch)

    monkeypatch.setattr(preflight, "PROBED_DEVICES", ("cpu",))
    monkeypatch.setattr(Task, "forward", small_gpu)
    flags = ["--task", "causal_lm", "--strategy", "lora", "--model_name_or_path", tiny_lm_dir, *SMALL,
             "--max_train_samples", "64", "--seed", "3"]
    auto = tmp_path / "auto"
    assert main(["train", *flags, "--per_device_train_batch_size", "auto", "--output_dir", str(auto)]) == 0
    results = json.loads((auto / "results.json").read_text())
    assert results["per_device_train_batch_size"] == 2
    assert results["derived"]["gradient_accumulation_steps"]["value"] == 4
    assert "ran out of memory on the longest training batch" in results["derived"]["per_device_train_batch_size"]["why"]
    monkeypatch.setattr(preflight, "PROBED_DEVICES", ())
    manual = tmp_path / "manual"
    assert main(["train", *flags, "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "4",
                 "--output_dir", str(manual)]) == 0
    by_hand = json.loads((manual / "results.json").read_text())
    assert results["train_history"] == by_hand["train_history"]
    assert results["eval"] == pytest.approx(by_hand["eval"], rel=1e-6)


def test_probe_stops_where_halving_would_change_the_global_batch():
    from peftkit.errors import PeftkitError
    from peftkit.preflight import probe_micro_batch

    def step(micro):
        if micro > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    assert probe_micro_batch(step, 8, 1) == (1, 8)
    with pytest.raises(PeftkitError, match="cannot be halved"):
        probe_micro_batch(step, 6, 2)

    def never(micro):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(PeftkitError, match="gradient_checkpointing"):
        probe_micro_batch(never, 4, 1)


def test_calibrate_predicts_step_and_run_time_from_the_datas_lengths(tiny_lm_dir):
    out = plan_json("--task", "causal_lm", "--model_name_or_path", tiny_lm_dir, "--strategy", "lora",
                    "--max_train_samples", "48", "--num_train_epochs", "2", "--per_device_train_batch_size", "8",
                    "--calibrate")
    plan = out["plans"][0]
    calibration = plan["calibration"]
    assert out["data"]["num_train"] == 48 and out["data"]["length"] == plan["setup"]["length"] > 8
    assert calibration["lengths"] == sorted(calibration["lengths"]) and max(calibration["lengths"]) < plan["setup"][
        "length"]  # timed at shorter lengths than the one predicted
    assert all(s > 0 for s in calibration["seconds"]) and plan["step_seconds"] > 0
    assert calibration["run_steps"] == 2 * 6  # 48 examples in micro-batches of 8, two epochs
    assert 0 < calibration["run_seconds"] < 2 * 6 * 10 * plan["step_seconds"]
