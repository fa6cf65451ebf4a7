"""Few-shot classification end to end on the built-in model and reviews: --shots draws K per class, --contrastive
trains the embedding on pairs and then the head, and an interrupted run (in either stage) resumes exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_recipe, wait_for
from safetensors.torch import load_file

from peftkit.cli import main

ROOT = Path(__file__).resolve().parents[2]
# 8 reviews of each class, 96 pairs (6 steps of 16; the default would be 640); a small validation and test split.
ARGS = ["--shots", "8", "--contrastive", "--contrastive_pairs", "96", "--max_eval_samples", "48", "--save_steps", "3",
        "--logging_steps", "1", "--report_to", "none"]
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("fewshot")
    assert run_recipe("lora_text_cls.py", [*ARGS, "--output_dir", str(out)]) == 0
    return out


def test_shots_and_the_contrastive_stage_are_recorded(reference):
    results = json.loads((reference / "results.json").read_text())
    shots = results["shots"]
    assert shots["per_class"] == 8 and shots["counts"] == {"fresh": 8, "rotten": 8} and len(shots["rows"]) == 16
    assert results["num_examples"]["train"] == 16
    stage = results["contrastive"]
    assert stage["pairs"] == 96 and stage["steps"] == 6 and stage["loss"] == "cosine"
    assert 0.0 <= stage["validation"]["pair_accuracy"] <= 1.0
    assert results["learning_rate"] == pytest.approx(2e-2)  # the head's rate: the head trains alone after the stage
    assert results["feature_cache"] is True
    assert not (reference / "peftkit_contrastive").exists()  # the stage's folder goes once the run is saved
    config = json.loads((reference / "peftkit_config.json").read_text())
    assert config["task_state"]["pooling"] == "mean"  # the embedding the stage trained is what the head reads


def test_the_stage_trains_the_adapter_and_the_head_reads_it(reference, tmp_path):
    """The adapter is not LoRA's initial state (B = 0) after the stage, and predict answers from the saved run."""
    weights = load_file(str(reference / "adapter_model.safetensors"))
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and all(float(v.abs().max()) > 0 for v in lora_b)
    texts = tmp_path / "in.txt"
    texts.write_text("A wonderful, moving film.\nDull and far too long.\n")
    assert main(["predict", str(reference), "--input", str(texts), "--output", str(tmp_path / "out.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["label"] in ("fresh", "rotten") for r in rows] == [True, True]


@pytest.mark.parametrize("when", ["contrastive", "head"])
def test_a_killed_run_resumes_exactly_in_either_stage(reference, tmp_path, when):
    out = tmp_path / "run"
    marker = out / "peftkit_contrastive" / ("checkpoint-3" if when == "contrastive" else "stage.json")
    proc = subprocess.Popen([sys.executable, "recipes/lora_text_cls.py", *ARGS, "--output_dir", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wait_for(marker, proc, timeout=600)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (out / "results.json").exists()
    assert run_recipe("lora_text_cls.py", [*ARGS, "--output_dir", str(out), "--resume_from_checkpoint", "latest"]) == 0
    a, b = (json.loads((d / "results.json").read_text()) for d in (reference, out))
    assert b["contrastive"]["validation"] == a["contrastive"]["validation"]
    assert b["eval"] == a["eval"] and b["test"] == a["test"] and b["history"] == a["history"]
    wa, wb = (load_file(str(d / "adapter_model.safetensors")) for d in (reference, out))
    assert wa.keys() == wb.keys() and all(bool((wa[k] == wb[k]).all()) for k in wa)


def test_bad_few_shot_flags_are_refused(tmp_path, capsys):
    assert main(["train", "--task", "causal_lm", "--contrastive", "--output_dir", str(tmp_path / "a")]) == 2
    assert "no contrastive stage" in capsys.readouterr().err
    assert main(["train", "--task", "text_cls", "--strategy", "head", "--shots", "4", "--contrastive",
                 "--max_eval_samples", "16", "--output_dir", str(tmp_path / "b")]) == 2
    assert "trains only the head" in capsys.readouterr().err
    assert main(["train", "--shots", "0", "--output_dir", str(tmp_path / "c")]) == 2
    assert "--shots must be positive" in capsys.readouterr().err
    assert main(["train", "--shots", "8", "--max_train_samples", "100", "--output_dir", str(tmp_path / "d")]) == 2
    assert "leave out --max_train_samples" in capsys.readouterr().err


def test_a_run_with_few_examples_per_class_logs_what_the_benchmark_found(tmp_path, capsys):
    assert main(["train", "--strategy", "head", "--shots", "4", "--max_eval_samples", "16", "--num_train_epochs", "1",
                 "--report_to", "none", "--output_dir", str(tmp_path / "run")]) == 0
    said = [line.split(": ", 1)[1] for line in capsys.readouterr().err.splitlines() if "Few examples per class" in line]
    assert len(said) == 1 and said[0].startswith("Few examples per class: 4 of '")  # both classes hold 4
    assert ("the fewest. On peftkit's few-shot benchmark at 8 per class, the smallest size it measured, "
            "(builtin:rotten_tomatoes, 2 classes" in said[0])
    assert said[0].endswith("This run: --strategy head.")


def test_shots_without_a_strategy_train_the_few_shot_default(tmp_path, capsys):
    """`peftkit train --shots K` and nothing else chooses full + --contrastive, says so, and records it."""
    out = tmp_path / "run"
    assert main(["train", "--shots", "4", "--contrastive_pairs", "16", "--max_eval_samples", "8",
                 "--num_train_epochs", "1", "--report_to", "none", "--output_dir", str(out)]) == 0
    said = capsys.readouterr()
    err = said.err
    assert " s (contrastive stage " in said.out  # the time printed counts the pair stage
    assert ("--shots 4 and no --strategy: the few-shot default, --strategy full --contrastive" in err
            and "This run: --strategy full --contrastive." in err)
    results = json.loads((out / "results.json").read_text())
    assert results["strategy"] == "full" and results["contrastive"]["pairs"] == 16
    assert json.loads((out / "peftkit_config.json").read_text())["training"]["contrastive"] is True


def test_the_plan_counts_the_contrastive_stage(tmp_path, capsys):
    """The pair stage encodes both texts of 16 pairs a step: a larger batch than the classifier's 2, so its plan
    is the run's peak."""
    out = tmp_path / "run"
    assert main(["train", "--strategy", "full", "--shots", "4", "--contrastive", "--contrastive_pairs", "16",
                 "--per_device_train_batch_size", "2", "--max_eval_samples", "8", "--num_train_epochs", "1",
                 "--plan", "--memory", "1MiB", "--force", "--report_to", "none", "--output_dir", str(out)]) == 0
    plan = json.loads((out / "results.json").read_text())["plan"]
    assert plan["setup"]["micro_batch"] == 32
    assert "The contrastive stage (32 texts a step) is the run's peak." in capsys.readouterr().err
    # A limit just under the stage's peak (the classifier's micro-batch of 2 fits): the run stops before loading
    # the model, and names the stage and the --contrastive_batch_size that would fit
    again = tmp_path / "again"
    assert main(["train", "--strategy", "full", "--shots", "4", "--contrastive", "--contrastive_pairs", "16",
                 "--per_device_train_batch_size", "2", "--max_eval_samples", "8", "--num_train_epochs", "1",
                 "--memory", str(plan["peak"] - 1), "--report_to", "none", "--output_dir", str(again)]) == 2
    err = capsys.readouterr().err
    assert "its contrastive stage (32 texts a step" in err and "Nothing was loaded" in err
    assert "--contrastive_batch_size 8 would need" in err and "which fits." in err
    assert not (again / "results.json").exists()
    # `peftkit plan` with the same flags and no --strategy: the few-shot default, its stage planned as the run
    # planned it, and at that limit the same smaller --contrastive_batch_size
    flags = ["--shots", "4", "--contrastive_pairs", "16", "--per_device_train_batch_size", "2", "--max_eval_samples",
             "8", "--format", "json", "--output_file", str(tmp_path / "plan.json")]
    assert main(["plan", *flags, "--memory", str(plan["peak"] - 1)]) == 0
    assert "planning the few-shot default, --strategy full --contrastive" in capsys.readouterr().err
    planned = json.loads((tmp_path / "plan.json").read_text())
    assert planned["data"]["num_train"] == 8  # the 4 per class drawn, not the whole split
    (full,) = planned["plans"]
    assert full["strategy"] == "full" and full["contrastive_stage"]["peak"] == full["run_peak"] == plan["peak"]
    assert full["fits"] is False and full["peak"] < plan["peak"]  # the classifier's own training fits
    assert [a["flags"] for a in full["advice"]] == ["--contrastive_batch_size 8"] and full["advice"][0]["fits"]


def test_a_shots_run_on_a_file_keeps_k_per_class_and_evaluates_on_its_own_validation(tmp_path):
    """A CSV without a validation file: --shots draws from all of it, validation comes from the rows not drawn, and
    `peftkit eval` on the run reads the same two splits again."""
    from peftkit.run_dir import eval_data, load_run

    texts = [f"{word} film number {i}" for word, n in (("great", 12), ("awful", 10)) for i in range(n)]
    path = tmp_path / "reviews.csv"
    path.write_text("text,label\n" + "".join(f"{t},{t.split()[0]}\n" for t in texts))
    out = tmp_path / "run"
    assert main(["train", "--strategy", "head", "--train_file", str(path), "--shots", "8", "--num_train_epochs", "1",
                 "--report_to", "none", "--output_dir", str(out)]) == 0
    shots = json.loads((out / "results.json").read_text())["shots"]
    assert shots["counts"] == {"awful": 8, "great": 8}
    _, processor, cfg, task = load_run(out)
    train = eval_data(task, cfg, processor, "train")[0]["train"]["text"]
    validation = eval_data(task, cfg, processor, "validation")[0]["validation"]["text"]
    assert train == [texts[i] for i in shots["rows"]]
    assert len(validation) == 3 and not set(validation) & set(train)
