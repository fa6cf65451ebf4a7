"""The DPO recipe end to end, as a user runs it: the built-in pairs, a user's conversational JSONL with other
column names, predict, eval, merge into a plain transformers model, an exact resume after SIGKILL, and bad input
refused with exit 2."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from helpers import kill_and_resume, run_recipe
from safetensors.torch import load_file

from peftkit.cli import main

SMALL = ["--max_train_samples", "24", "--max_eval_samples", "8", "--max_generation_samples", "4",
         "--generation_max_new_tokens", "4", "--report_to", "none", "--logging_steps", "1"]
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, tiny_lm_dir):
    out = tmp_path_factory.mktemp("lora_dpo")
    assert run_recipe("lora_dpo.py", ["--model_name_or_path", tiny_lm_dir, *SMALL, "--output_dir", str(out)]) == 0
    return out


def test_the_recipe_reports_rewards_and_the_base_against_the_tuned_model(dpo_run):
    results = json.loads((dpo_run / "results.json").read_text())
    assert results["task"] == "preference" and results["metric_for_best_model"] == "loss"
    assert {"loss", "reward_accuracy", "reward_margin", "preference_accuracy"} <= set(results["test"])
    assert results["num_examples"] == {"train": 24, "validation": 8, "test": 8}
    base, tuned = results["final_evaluation"]["base"], results["final_evaluation"]["fine_tuned"]
    assert base["pairs"] == 8 and base["split"] == "test" and "reward_accuracy" not in base
    assert set(tuned) == {"split", "exact_match", "token_f1", "samples"}  # the loop's test metrics have the rest
    rows = [json.loads(line) for line in (dpo_run / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and rows[0]["reference"] in ("positive", "negative")
    assert rows[0]["prompt"].endswith("<|im_start|>assistant\n") and (dpo_run / "predictions_base.jsonl").is_file()
    adapter = json.loads((dpo_run / "adapter_config.json").read_text())
    assert adapter["task_type"] == "CAUSAL_LM" and not adapter.get("modules_to_save")


def test_eval_recomputes_the_rewards_against_the_base_with_adapters_off(dpo_run, capsys):
    results = json.loads((dpo_run / "results.json").read_text())
    assert main(["eval", str(dpo_run), "--split", "test"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    for name in ("loss", "reward_margin", "logps_chosen"):
        assert metrics[name] == pytest.approx(results["test"][name], rel=1e-4, abs=1e-6), name


def test_predict_answers_prompts_from_stdin(dpo_run, monkeypatch, capsys):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("Is this movie review positive or negative? Great fun.\n"))
    assert main(["predict", str(dpo_run)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 1 and isinstance(rows[0]["output"], str)


def test_the_merged_model_prefers_what_the_adapter_prefers(dpo_run, tmp_path):
    merged = tmp_path / "merged"
    assert main(["merge", str(dpo_run), "--output_dir", str(merged)]) == 0
    report = json.loads((merged / "merge_report.json").read_text())
    assert report["passed"] and report["metric"] == "preference_accuracy"
    scores = report["preference_accuracy"]
    assert scores["adapter_model"] == scores["merged_reloaded"]
    assert report["adapter_vs_merged_reloaded"]["prediction_agreement"] == 1.0


def test_a_users_conversational_jsonl_trains_with_column_flags_alone(tmp_path, tiny_lm_dir):
    path = tmp_path / "prefs.jsonl"
    rows = [{"question": [{"role": "user", "content": f"Name a {kind}."}],
             "good": [{"role": "assistant", "content": good}], "bad": [{"role": "assistant", "content": bad}]}
            for kind, good, bad in [("colour", "red", "table"), ("fruit", "apple", "blue"), ("animal", "cat", "rain")]
            * 6]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    assert run_recipe("lora_dpo.py", ["--model_name_or_path", tiny_lm_dir, "--train_file", str(path),
                                      "--prompt_column", "question", "--chosen_column", "good",
                                      "--rejected_column", "bad", "--output_dir", str(out), "--report_to", "none",
                                      "--max_generation_samples", "2", "--generation_max_new_tokens", "4"]) == 0
    cfg = json.loads((out / "peftkit_config.json").read_text())
    assert cfg["task_state"]["conversational"] and cfg["task_state"]["columns"]["chosen"] == "good"
    results = json.loads((out / "results.json").read_text())
    assert results["final_evaluation"]["fine_tuned"]["split"] == "validation"  # no test file: held-out validation


@pytest.mark.parametrize(("rows", "flags", "message"), [
    ([{"prompt": "p", "good": "a", "rejected": "b"}], [], "Column 'chosen' \\(--chosen_column\\) is not in"),
    ([{"prompt": "p", "chosen": "a", "rejected": "a"}], [], "No train pair has two different answers"),
    ([{"prompt": "p", "chosen": "", "rejected": "b"}], [], "whose chosen \\('chosen'\\) is empty"),
])
def test_bad_preference_data_exits_2_with_the_problem_named(tmp_path, tiny_lm_dir, capsys, rows, flags, message):
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows * 6))
    code = main(["train", "--task", "preference", "--model_name_or_path", tiny_lm_dir, "--train_file", str(path),
                 *flags, "--output_dir", str(tmp_path / "run"), "--report_to", "none"])
    assert code == 2
    assert __import__("re").search(message, capsys.readouterr().err)


def test_conversations_need_a_chat_template(tmp_path, tiny_lm_dir, capsys):
    plain = tmp_path / "plain"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    AutoModelForCausalLM.from_pretrained(tiny_lm_dir).save_pretrained(plain)
    code = main(["train", "--task", "preference", "--model_name_or_path", str(plain), *SMALL,
                 "--output_dir", str(tmp_path / "run")])
    assert code == 2 and "has no chat template" in capsys.readouterr().err


ARGS = [*SMALL, "--max_train_samples", "48", "--per_device_train_batch_size", "4", "--save_steps", "3",
        "--num_train_epochs", "2"]


def test_a_sigkilled_dpo_run_resumes_exactly(tmp_path, tiny_lm_dir):
    a, b, reference, out = kill_and_resume("lora_dpo.py", ["--model_name_or_path", tiny_lm_dir, *ARGS], tmp_path,
                                           "checkpoint-6")
    assert b["resumed_from_step"] >= 6
    assert a["train_history"] == b["train_history"] and a["history"] == b["history"] and a["eval"] == b["eval"]
    assert a["final_evaluation"] == b["final_evaluation"]
    wa, wb = (load_file(str(d / "adapter_model.safetensors")) for d in (reference, out))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_full_preference_tuning_keeps_a_frozen_reference(tmp_path, tiny_lm_dir):
    assert main(["train", "--task", "preference", "--strategy", "full", "--model_name_or_path", tiny_lm_dir, *SMALL,
                 "--output_dir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["trainable_params"] == results["total_params"]
    assert all(math.isfinite(results["test"][k]) for k in ("loss", "reward_accuracy", "reward_margin"))


def test_analyze_lists_the_pairs_the_model_gets_most_wrong(dpo_run):
    import csv

    results = json.loads((dpo_run / "results.json").read_text())
    assert main(["analyze", str(dpo_run), "--top_k", "3"]) == 0
    out = dpo_run / "analysis_test"
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["examples"] == 8
    assert analysis["preference_accuracy"] == pytest.approx(results["test"]["preference_accuracy"], abs=1e-4)
    with open(out / "errors.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    margins = [float(r["logp_margin"]) for r in rows]
    assert len(rows) == 3 and margins == sorted(margins) and rows[0]["chosen"] in ("positive", "negative")
    assert "the same" in (out / "analysis.md").read_text()


def test_sft_then_dpo_on_the_merged_sft_model(tmp_path, tiny_lm_dir):
    sft, merged, dpo = tmp_path / "sft", tmp_path / "merged", tmp_path / "dpo"
    assert run_recipe("lora_sft.py", ["--model_name_or_path", tiny_lm_dir, *SMALL, "--output_dir", str(sft)]) == 0
    assert main(["merge", str(sft), "--output_dir", str(merged)]) == 0
    assert run_recipe("lora_dpo.py", ["--model_name_or_path", str(merged), *SMALL, "--output_dir", str(dpo)]) == 0
    results = json.loads((dpo / "results.json").read_text())
    assert results["model"] == str(merged) and results["final_evaluation"]["base"]["pairs"] == 8
