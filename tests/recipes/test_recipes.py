"""Every recipe end to end on the built-in model and a small subset of the built-in data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_recipe, train_each

ROOT = Path(__file__).resolve().parents[2]
STRATEGIES = ["head", "lora", "partial", "full", "qlora"]
SMALL = ["--max_train_samples", "64", "--max_eval_samples", "32", "--max_steps", "3",
         "--per_device_train_batch_size", "8", "--report_to", "none"]
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run each recipe once; the tests below read their output directories."""
    return train_each(tmp_path_factory, "text_cls", STRATEGIES, SMALL)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_results_json(runs, strategy):
    results = json.loads((runs[strategy] / "results.json").read_text())
    for key in ("strategy", "model", "dataset", "artifact_dir", "eval", "test", "trainable_params",
                "total_params", "train_runtime_s", "train_samples_per_s", "peak_memory_bytes", "num_processes"):
        assert key in results, key
    assert results["strategy"] == strategy and results["dataset"] == "builtin:rotten_tomatoes"
    assert results["num_processes"] == 1 and results["global_step"] == 3
    for split in ("eval", "test"):
        assert {"loss", "accuracy", "f1", "precision", "recall"} <= set(results[split])
        assert 0.0 <= results[split]["accuracy"] <= 1.0
    assert results["num_examples"] == {"train": 64, "validation": 32, "test": 32}
    assert results["peak_memory_bytes"] > 50_000_000
    assert set(results["versions"]) >= {"torch", "transformers", "peft", "accelerate", "bitsandbytes"}
    assert results["feature_cache"] == (strategy == "head")
    assert results["step_time_median_s"] > 0 and results["train_tokens_per_s"] > 0
    config = json.loads((runs[strategy] / "peftkit_config.json").read_text())
    assert config["strategy"] == strategy and config["labels"] == ["fresh", "rotten"]


def test_trainable_counts_order(runs):
    counts = {s: json.loads((runs[s] / "results.json").read_text())["trainable_params"] for s in STRATEGIES}
    assert counts["head"] < counts["lora"] < counts["partial"] < counts["full"]
    assert counts["head"] == 384 * 2 + 2  # MiniLM hidden size 384, two classes
    assert counts["lora"] == 74_498 and counts["qlora"] == counts["lora"]  # 6 layers x q,v x r=8, plus head
    without = {s: json.loads((runs[s] / "results.json").read_text())["trainable_params_without_head"]
               for s in STRATEGIES}
    assert without["head"] == 0 and without["lora"] == 74_498 - 770 and without["full"] == counts["full"] - 770


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_artifact_reloads_with_its_labels(runs, strategy):
    from peftkit import load_run

    model, tokenizer, config = load_run(runs[strategy])
    results = json.loads((runs[strategy] / "results.json").read_text())
    adapter = (runs[strategy] / "adapter_config.json").exists()
    assert adapter == (strategy in ("lora", "qlora"))
    assert not list(runs[strategy].glob("*.bin")) and list(runs[strategy].glob("*.safetensors"))
    if not adapter:
        assert model.config.id2label == {0: "fresh", 1: "rotten"}
    enc = tokenizer(["a tender, funny film"], return_tensors="pt")
    with torch.no_grad():
        assert model(**enc).logits.shape == (1, 2)
    assert results["artifact_dir"] == str(runs[strategy].resolve())


def test_lora_adapter_loads_with_plain_peft(runs, builtin_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from peftkit import load_run

    run_dir = runs["lora"]
    base = AutoModelForSequenceClassification.from_pretrained(builtin_model_dir, num_labels=2)
    plain = PeftModel.from_pretrained(base, run_dir).eval()
    ours, _, _ = load_run(run_dir)
    enc = AutoTokenizer.from_pretrained(run_dir)(["the plot is thin", "a triumph"], return_tensors="pt",
                                                  padding=True)
    with torch.no_grad():
        torch.testing.assert_close(plain(**enc).logits, ours(**enc).logits)


def test_eval_command_reproduces_test_metrics(runs, capsys):
    from peftkit.cli import main

    run_dir = runs["lora"]
    assert main(["eval", str(run_dir), "--max_eval_samples", "32"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    expected = json.loads((run_dir / "results.json").read_text())["test"]
    assert metrics["accuracy"] == pytest.approx(expected["accuracy"])
    assert metrics["loss"] == pytest.approx(expected["loss"], abs=1e-5)


def test_head_reads_the_pooling_the_model_declares_also_when_loaded(runs, capsys, tmp_path):
    from peftkit.cli import main
    from peftkit.errors import PeftkitError
    from peftkit.merge import merge

    head = json.loads((runs["head"] / "peftkit_config.json").read_text())
    assert head["task_args"]["pooling"] == "auto" and head["task_state"]["pooling"] == "mean"  # MiniLM declares it
    lora = json.loads((runs["lora"] / "peftkit_config.json").read_text())
    assert lora["task_state"]["pooling"] == "pooler"  # the backbone adapts: transformers' own head
    assert main(["eval", str(runs["head"]), "--max_eval_samples", "32"]) == 0  # loading pools as training did
    expected = json.loads((runs["head"] / "results.json").read_text())["test"]
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(expected["loss"], abs=1e-5)
    card = (runs["head"] / "README.md").read_text()
    assert "peftkit.load_run" in card and "Plain transformers cannot run this model as trained" in card
    with pytest.raises(PeftkitError, match="mean-pooled token vectors"):
        merge([str(runs["head"])], str(tmp_path / "merged"))


def test_predict_command_labels_stdin(runs, monkeypatch, capsys):
    import io

    from peftkit.cli import main

    monkeypatch.setattr(sys, "stdin", io.StringIO("a warm, witty delight\n\na tedious mess\n"))
    assert main(["predict", str(runs["head"])]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == ["a warm, witty delight", "a tedious mess"]
    for row in rows:
        assert row["label"] in ("fresh", "rotten")
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_users_csv_with_own_columns_and_string_labels(tmp_path):
    words = {"joy": ["wonderful", "delightful", "great"], "anger": ["furious", "outraged", "hate"],
             "calm": ["quiet", "peaceful", "still"]}
    lines = ["id,utterance,emotion"]
    for i in range(60):
        label = list(words)[i % 3]
        lines.append(f"{i},\"I feel {words[label][i % 3]} today, number {i}\",{label}")
    data = tmp_path / "mine.csv"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    code = run_recipe("lora_text_cls.py", ["--train_file", str(data), "--text_column", "utterance",
                                           "--label_column", "emotion", "--output_dir", str(out), "--max_steps",
                                           "2", "--report_to", "none"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["labels"] == ["anger", "calm", "joy"] and results["test"] is None
    assert results["num_examples"] == {"train": 54, "validation": 6}


def test_accelerate_launch_runs_the_recipe(tmp_path):
    """The README's way in: `accelerate launch recipes/lora_text_cls.py` in a real subprocess."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu",
           "recipes/lora_text_cls.py", *SMALL, "--output_dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test accuracy" in proc.stdout
    assert json.loads((tmp_path / "results.json").read_text())["strategy"] == "lora"


@pytest.mark.parametrize("strategy", ["lora", "qlora"])
def test_load_run_from_python_is_quiet(runs, strategy):
    """No alarming library chatter: the base's head reported MISSING (the run's trained one is loaded next),
    bitsandbytes' optional-kernel notice, peft's FutureWarning."""
    code = f"import peftkit; m, t, c = peftkit.load_run({str(runs[strategy])!r}); print(type(m).__name__)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0 and proc.stdout.strip() == "PeftModelForSequenceClassification", proc.stderr
    for noise in ("LOAD REPORT", "MISSING", "FutureWarning", "kernels-community", "Traceback"):
        assert noise not in proc.stderr, proc.stderr


@pytest.mark.parametrize("strategy", ["lora", "full"])
def test_run_directory_has_a_real_model_card_and_shareable_weights(runs, strategy):
    import stat

    card = (runs[strategy] / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: " + ("peft" if strategy == "lora" else "transformers"))
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in card and "site-packages" not in card
    results = json.loads((runs[strategy] / "results.json").read_text())
    assert "`fresh`, `rotten`" in card and f"{results['test']['accuracy']:.4f}" in card
    assert f"`{results['command']}`" in card and results["command"].startswith(f"{strategy}_text_cls.py ")
    umask = os.umask(0)
    os.umask(umask)
    weights = list(runs[strategy].glob("*.safetensors"))
    assert weights and all(stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask for p in weights)


def test_an_unreachable_hub_is_named_at_once_without_retries(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens there: every connection is refused at once
    proc = subprocess.run([sys.executable, "recipes/lora_text_cls.py", "--model_name_or_path", "some-org/some-model",
                           "--output_dir", str(tmp_path / "o")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    message = "Cannot load model 'some-org/some-model': No such local directory, and the Hub is out of reach"
    assert message in proc.stderr
    assert "Retrying" not in proc.stderr and "Traceback" not in proc.stderr
