"""Two real processes on one CPU machine through the shipped Accelerate config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def test_two_cpu_processes_train_once_and_evaluate_every_example_once(tmp_path, capsys):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           "recipes/accelerate/cpu_2proc.yaml", "recipes/lora_text_cls.py", "--max_train_samples", "128",
           "--max_eval_samples", "51", "--max_steps", "3", "--per_device_train_batch_size", "8",
           "--report_to", "none", "--output_dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["num_processes"] == 2 and results["effective_batch_size"] == 16
    assert proc.stdout.count("Saved to") == 1  # only the main process reports and writes
    # 51 examples do not split evenly over 2 processes; gather_for_metrics must count each exactly once,
    # so one process re-evaluating the saved model gets the same numbers.
    from peftkit.cli import main

    assert main(["eval", str(tmp_path), "--split", "validation", "--max_eval_samples", "51"]) == 0
    single = json.loads(capsys.readouterr().out)
    assert single["accuracy"] == pytest.approx(results["eval"]["accuracy"], abs=1e-9)
    assert single["loss"] == pytest.approx(results["eval"]["loss"], abs=1e-5)
