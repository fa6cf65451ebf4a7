"""`peftkit search` end to end on the built-in MiniLM: trials are real `peftkit train` processes."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peftkit.cli import main
from peftkit.search.space import build_space

SMALL = ["--max_eval_samples", "32", "--report_to", "none"]
GOOD, HOPELESS, NAN = 0.05, 1e-7, 1e34  # head learning rates: learns; barely moves; NaN at step 4


def reviews(path: Path, n: int, labels=("pos", "neg")) -> Path:
    words = {"pos": ["wonderful", "moving", "brilliant", "funny"], "neg": ["dreadful", "dull", "clumsy", "tedious"],
             "neutral": ["released", "long"]}
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for i in range(n):
            label = labels[i % len(labels)]
            writer.writerow([f"a {words[label][i % len(words[label])]} film, number {i}", label])
    return path


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """A grid of four head trials, ordered (by the sampler seed) so that the NaN trial runs before two trials have
    finished and the hopeless one after: the first fails, the last is pruned at its first evaluation. The test file
    holds a label the training data lacks: a trial that read it would fail at once."""
    root = tmp_path_factory.mktemp("search")
    data = [reviews(root / "train.csv", 64), reviews(root / "validation.csv", 32),
            reviews(root / "test.csv", 8, labels=("pos", "neutral"))]
    space = ["--strategy", "head", "--learning_rate", str(GOOD), "0.02", str(HOPELESS), str(NAN),
             "--metric_for_best_model", "loss", "--max_steps", "8", "--eval_steps", "2"]
    seed = next(s for s in range(100) if [p["learning_rate"] for p in build_space("text_cls", space, None).grid(s)]
                in ([NAN, GOOD, 0.02, HOPELESS], [NAN, 0.02, GOOD, HOPELESS]))
    out = root / "out"
    code = main(["search", "--method", "grid", "--sampler_seed", str(seed), "--output_dir", str(out), *space, *SMALL,
                 "--train_file", str(data[0]), "--validation_file", str(data[1]), "--test_file", str(data[2])])
    return code, out, json.loads((out / "search.json").read_text())


def test_failed_and_pruned_trials_are_recorded_and_the_study_goes_on(search):
    _, out, summary = search
    by_lr = {t["params"]["learning_rate"]: t for t in summary["trials"]}
    assert by_lr[NAN]["state"] == "failed" and "NaN/inf" in by_lr[NAN]["error"]
    assert by_lr[HOPELESS]["state"] == "pruned" and by_lr[HOPELESS]["pruned_at_step"] == 2
    assert json.loads((Path(by_lr[HOPELESS]["run_dir"]) / "results.json").read_text())["global_step"] == 2  # not 8
    assert by_lr[GOOD]["state"] == by_lr[0.02]["state"] == "complete"
    assert summary["counts"] == {"complete": 2, "pruned": 1, "failed": 1, "interrupted": 0}
    assert summary["best"]["params"]["learning_rate"] in (GOOD, 0.02)
    assert summary["best"]["validation"] == min(by_lr[GOOD]["validation"], by_lr[0.02]["validation"])
    table = (out / "search.md").read_text()
    assert "| failed | head | 1e+34 |" in table and "pruned at step 2" in table
    assert (out / "search.png").stat().st_size > 10_000


def test_the_test_split_is_read_for_the_chosen_trial_only(search):
    code, out, summary = search
    for trial in summary["trials"]:
        if (Path(trial["run_dir"]) / "results.json").is_file():
            results = json.loads((Path(trial["run_dir"]) / "results.json").read_text())
            assert results["test"] is None and "test" not in results["num_examples"]
    # the chosen trial's test evaluation did read it, and met the label no trial could have trained with
    assert code == 1 and "neutral" in summary["best"]["test"]["error"]


def test_best_yaml_trains_the_chosen_trial_again(search, tmp_path):
    _, out, summary = search
    run = tmp_path / "best"
    # the test file is the one no run can use (see the fixture); the validation result does not depend on it
    assert main(["train", "--config", str(out / "best.yaml"), "--output_dir", str(run), "--use_test_split",
                 "false"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["strategy"] == "head" and results["learning_rate"] == summary["best"]["params"]["learning_rate"]
    assert results["eval"]["loss"] == pytest.approx(summary["best"]["validation"], rel=1e-6)


def test_an_interrupted_search_finishes_only_the_remaining_trials(tmp_path):
    data = [reviews(tmp_path / "train.csv", 64), reviews(tmp_path / "validation.csv", 32)]
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "peftkit", "search", "--method", "grid", "--output_dir", str(out), "--strategy",
           "lora", "--learning_rate", "1e-3", "2e-3", "3e-3", "--max_steps", "12", "--save_steps", "2",
           "--eval_steps", "6", *SMALL, "--train_file", str(data[0]), "--validation_file", str(data[1])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not list((out / "trial_001").glob("checkpoint-*")) and proc.poll() is None:
        assert time.monotonic() < deadline, "the second trial never wrote a checkpoint"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "Rerun the same command to continue" in output
    first = out / "trial_000" / "results.json"
    finished_at = first.stat().st_mtime
    assert not (out / "trial_001" / "results.json").exists()

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    summary = json.loads((out / "search.json").read_text())
    assert [t["state"] for t in summary["trials"]] == ["complete"] * 3
    assert first.stat().st_mtime == finished_at  # the finished trial was not run again
    resumed = json.loads((out / "trial_001" / "results.json").read_text())
    assert resumed["resumed_from_step"] >= 2 and resumed["global_step"] == 12
    assert "--resume_from_checkpoint latest" in (out / "trial_001" / "train.log").read_text()
    assert not (out / "trial_003").exists()
