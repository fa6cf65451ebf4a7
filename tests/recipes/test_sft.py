"""The SFT recipes end to end, as a user runs them: the built-in data, their own JSONL/CSV, predict, eval,
merge into a plain transformers model, and an exact resume after SIGKILL."""

from __future__ import annotations

import csv
import json
import os
import subprocess
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
def lora_run(tmp_path_factory, tiny_lm_dir):
    out = tmp_path_factory.mktemp("lora_sft")
    assert run_recipe("lora_sft.py", ["--model_name_or_path", tiny_lm_dir, *SMALL, "--output_dir", str(out)]) == 0
    return out


def test_the_recipe_reports_base_and_fine_tuned_generation_and_writes_the_outputs(lora_run):
    results = json.loads((lora_run / "results.json").read_text())
    assert results["task"] == "causal_lm" and results["metric_for_best_model"] == "loss"
    assert set(results["eval"]) == {"loss", "perplexity"} and results["test"] is not None
    final = results["final_evaluation"]
    assert set(final) == {"base", "fine_tuned"}
    for scores in final.values():
        assert scores["samples"] == 4 and scores["split"] == "test" and 0 <= scores["exact_match"] <= 1
    rows = [json.loads(line) for line in (lora_run / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and set(rows[0]) == {"prompt", "reference", "output"}
    assert rows[0]["reference"] in ("positive", "negative") and rows[0]["prompt"].endswith("<|im_start|>assistant\n")
    assert (lora_run / "predictions_base.jsonl").is_file() and not (lora_run / "baseline.json").exists()
    card = (lora_run / "README.md").read_text()
    assert "pipeline_tag: text-generation" in card and "| fine-tuned |" in card and "Labels" not in card
    adapter = json.loads((lora_run / "adapter_config.json").read_text())
    assert adapter["task_type"] == "CAUSAL_LM" and not adapter.get("modules_to_save")


def test_predict_generates_for_prompts_from_stdin(lora_run, monkeypatch, capsys):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("Is this movie review positive or negative? Great fun.\n\nHello\n"))
    assert main(["predict", str(lora_run)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in rows] == ["Is this movie review positive or negative? Great fun.", "Hello"]
    assert all(isinstance(r["output"], str) for r in rows)


def test_eval_gives_the_loss_of_training_and_the_generation_scores(lora_run, capsys):
    results = json.loads((lora_run / "results.json").read_text())
    assert main(["eval", str(lora_run), "--split", "test"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["loss"] == pytest.approx(results["test"]["loss"], rel=1e-5)
    assert metrics["final_evaluation"]["exact_match"] == results["final_evaluation"]["fine_tuned"]["exact_match"]


def test_analyze_ranks_the_worst_generations(lora_run):
    results = json.loads((lora_run / "results.json").read_text())
    assert main(["analyze", str(lora_run), "--top_k", "3"]) == 0
    out = lora_run / "analysis_test"
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["examples"] == 4  # --max_generation_samples, as in training's final evaluation
    assert analysis["token_f1"] == pytest.approx(results["final_evaluation"]["fine_tuned"]["token_f1"], abs=1e-4)
    with open(out / "errors.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    scores = [float(r["token_f1"]) for r in rows]
    assert len(rows) == 3 and scores == sorted(scores) and rows[0]["reference"] in ("positive", "negative")
    assert "The worst generations" in (out / "analysis.md").read_text()


PLAIN_LOAD = """
import sys, torch
from transformers import AutoModelForCausalLM, pipeline
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
batch = torch.load(sys.argv[2], weights_only=True)
with torch.no_grad():
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
torch.save(logits[:, :-1][batch["labels"][:, 1:] != -100], sys.argv[3])
generate = pipeline("text-generation", model=sys.argv[1])
text = generate([{"role": "user", "content": "Hello"}], max_new_tokens=3)[0]["generated_text"]
assert isinstance(text, list) and text[-1]["role"] == "assistant"
assert "peft" not in sys.modules and "peftkit" not in sys.modules
"""


def test_the_merged_lm_equals_the_adapter_in_plain_transformers(lora_run, tiny_lm_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from peftkit.run_dir import eval_data, load_run

    merged = tmp_path / "merged"
    assert main(["merge", str(lora_run), "--output_dir", str(merged)]) == 0
    report = json.loads((merged / "merge_report.json").read_text())
    assert report["passed"] and report["metric"] == "loss" and report["parity_rows"] > report["parity_samples"]
    # The reference: plain peft on the base, on the supervised tokens of the validation data.
    _, tokenizer, cfg, task = load_run(lora_run)
    _, data = eval_data(task, cfg, tokenizer, "validation")
    batch = task.collator(tokenizer)(list(data["validation"]))
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_lm_dir), lora_run).eval()
    with torch.no_grad():
        expected = adapter(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = expected[:, :-1][batch["labels"][:, 1:] != -100]
    torch.save({k: batch[k] for k in ("input_ids", "attention_mask", "labels")}, tmp_path / "batch.pt")
    files = [str(merged), str(tmp_path / "batch.pt"), str(tmp_path / "out.pt")]
    subprocess.run([sys.executable, "-c", PLAIN_LOAD, *files], check=True, timeout=300,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    assert got.shape == expected.shape and got.shape[0] > 0
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def test_a_users_messages_jsonl_trains_with_one_flag(tmp_path, tiny_lm_dir):
    path = tmp_path / "chats.jsonl"
    rows = [{"conversation": [{"role": "user", "content": f"Say {w}"}, {"role": "assistant", "content": w}]}
            for w in ["red", "green", "blue", "cyan", "black", "white"] * 3]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    assert run_recipe("lora_sft.py", ["--model_name_or_path", tiny_lm_dir, "--train_file", str(path),
                                      "--messages_column", "conversation", "--output_dir", str(out),
                                      "--report_to", "none"]) == 0
    cfg = json.loads((out / "peftkit_config.json").read_text())
    assert cfg["task_state"]["format"] == "messages" and cfg["task_args"]["messages_column"] == "conversation"
    results = json.loads((out / "results.json").read_text())
    assert results["final_evaluation"]["fine_tuned"]["split"] == "validation"  # no test file: held-out validation


def test_a_prompt_completion_csv_trains_with_two_flags_and_packing(tmp_path, tiny_lm_dir):
    path = tmp_path / "pairs.csv"
    path.write_text("question,answer\n" + "".join(f"What is {i}+{i}?,{2 * i}\n" for i in range(20)))
    out = tmp_path / "run"
    assert run_recipe("full_sft.py", ["--model_name_or_path", tiny_lm_dir, "--train_file", str(path),
                                      "--prompt_column", "question", "--completion_column", "answer", "--packing",
                                      "--output_dir", str(out), "--report_to", "none"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["num_examples"]["train"] < 18  # 18 examples packed into fewer rows
    assert (out / "model.safetensors").is_file() and json.loads((out / "config.json").read_text())["use_cache"]


def test_qlora_sft_runs_on_a_4bit_base(tmp_path, tiny_lm_dir):
    out = tmp_path / "run"
    assert run_recipe("qlora_sft.py", ["--model_name_or_path", tiny_lm_dir, *SMALL, "--output_dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["trainable_params"] < results["total_params"] / 20


def test_the_head_strategy_is_refused_for_an_lm_with_a_way_out(tmp_path, tiny_lm_dir, capsys):
    code = main(["train", "--task", "causal_lm", "--strategy", "head", "--model_name_or_path", tiny_lm_dir, *SMALL,
                 "--output_dir", str(tmp_path)])
    assert code == 2 and "Use lora, qlora or dora" in capsys.readouterr().err


ARGS = [*SMALL, "--max_train_samples", "48", "--per_device_train_batch_size", "4", "--save_steps", "3",
        "--num_train_epochs", "2"]


def test_a_sigkilled_sft_run_resumes_exactly(tmp_path, tiny_lm_dir):
    a, b, reference, out = kill_and_resume("lora_sft.py", ["--model_name_or_path", tiny_lm_dir, *ARGS], tmp_path,
                                           "checkpoint-6")
    assert b["resumed_from_step"] >= 6
    assert a["train_history"] == b["train_history"] and a["history"] == b["history"] and a["eval"] == b["eval"]
    assert a["final_evaluation"] == b["final_evaluation"]
    wa, wb = (load_file(str(d / "adapter_model.safetensors")) for d in (reference, out))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("strategy", ["partial", "dora"])
def test_partial_and_dora_train_an_lm(tmp_path, tiny_lm_dir, strategy):
    extra = ["--num_trainable_layers", "1"] if strategy == "partial" else []
    assert main(["train", "--task", "causal_lm", "--strategy", strategy, "--model_name_or_path", tiny_lm_dir, *SMALL,
                 *extra, "--output_dir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    if strategy == "partial":  # the top layer and the final norm; not the (tied) embeddings and output layer
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
        expected = sum(p.numel() for p in model.model.layers[-1].parameters()) + model.model.norm.weight.numel()
        assert results["trainable_params"] == expected
    else:
        assert json.loads((tmp_path / "adapter_config.json").read_text())["use_dora"]
