"""token_cls end to end on the built-in MiniLM and WNUT-16 tweets: every strategy (through its recipe where one
exists), their trainable parameters in order, `peftkit eval` reproducing the test scores, and an exact resume
after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import run_recipe, train_each
from safetensors.torch import load_file

from peftkit.cli import main

ROOT = Path(__file__).resolve().parents[2]
STRATEGIES = ["head", "lora", "qlora", "dora", "partial", "full"]
SMALL = ["--max_train_samples", "64", "--max_eval_samples", "32", "--max_steps", "3",
         "--per_device_train_batch_size", "8", "--report_to", "none"]
TAGS = 21  # the built-in file's tag set: O and B-/I- of 10 entity types
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return train_each(tmp_path_factory, "token_cls", STRATEGIES, SMALL)


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_trains_and_scores_entities(runs, strategy):
    res = results(runs[strategy])
    assert res["task"] == "token_cls" and res["strategy"] == strategy and res["dataset"] == "builtin:wnut16"
    assert res["global_step"] == 3 and res["metric_for_best_model"] == "f1"
    for split in ("eval", "test"):
        assert {"loss", "accuracy", "precision", "recall", "f1", "f1_person"} <= set(res[split])
        assert 0 <= res[split]["f1"] <= 1 and 0 < res[split]["accuracy"] <= 1
    assert len(res["labels"]) == TAGS and res["labels"][0] == "O"
    assert res["feature_cache"] == (strategy == "head")
    if strategy in ("lora", "qlora", "dora"):
        adapter = json.loads((runs[strategy] / "adapter_config.json").read_text())
        assert adapter["task_type"] == "TOKEN_CLS" and adapter["use_dora"] == (strategy == "dora")
        assert "classifier" in adapter["modules_to_save"]


def test_trainable_parameters_order_as_for_text_cls(runs):
    counts = {s: results(runs[s])["trainable_params"] for s in STRATEGIES}
    assert counts["head"] == 384 * TAGS + TAGS  # the tagging layer over MiniLM's 384 features
    assert counts["head"] < counts["lora"] == counts["qlora"] < counts["dora"] < counts["partial"] < counts["full"]
    assert counts["lora"] == 6 * 2 * 8 * (384 + 384) + counts["head"]  # 6 layers x (query, value) x r=8
    assert counts["dora"] - counts["lora"] == 6 * 2 * 384  # DoRA adds a magnitude per output feature


@pytest.mark.parametrize("strategy", ["lora", "qlora"])
def test_eval_command_reproduces_the_test_scores(runs, strategy, capsys):
    capsys.readouterr()
    assert main(["eval", str(runs[strategy]), "--max_eval_samples", "32"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    expected = results(runs[strategy])["test"]
    # LoRA reproduces its scores exactly. A reloaded QLoRA run re-quantizes its base, and on CPU the 4-bit
    # kernels round a little differently from the training process's: after 3 steps many words sit on ties
    # between tags, so a few flip (seen: word accuracy 0.1902 against 0.1886). Close, not equal.
    tol = {"rel": 1e-6} if strategy == "lora" else {"abs": 0.02}
    for key in ("f1", "precision", "recall", "accuracy"):
        assert metrics[key] == pytest.approx(expected[key], **tol), key
    assert metrics["loss"] == pytest.approx(expected["loss"], abs=1e-5 if strategy == "lora" else 0.02)


# Dropout stays on (the default): an exact resume must restore the random state as well as the weights.
RESUME = ["--max_train_samples", "160", "--max_eval_samples", "32", "--num_train_epochs", "2",
          "--per_device_train_batch_size", "8", "--save_steps", "5", "--eval_steps", "8", "--logging_steps", "1",
          "--report_to", "none"]


def test_a_sigkilled_token_cls_run_resumes_exactly(tmp_path):
    reference = tmp_path / "uninterrupted"
    assert run_recipe("lora_token_cls.py", [*RESUME, "--output_dir", str(reference)]) == 0
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "recipes/lora_token_cls.py", *RESUME, "--output_dir", str(out)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 300
    while not (out / "checkpoint-10").exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "checkpoint-10 never appeared"
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere after the checkpoint, maybe inside the next one's write
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (out / "results.json").exists()
    assert run_recipe("lora_token_cls.py", [*RESUME, "--output_dir", str(out), "--resume_from_checkpoint",
                                            "latest"]) == 0
    a, b = results(reference), results(out)
    assert b["resumed_from_step"] >= 10
    assert a["train_history"] == b["train_history"] and a["history"] == b["history"]
    assert a["eval"] == b["eval"] and a["test"] == b["test"]
    wa, wb = (load_file(str(d / "adapter_model.safetensors")) for d in (reference, out))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
