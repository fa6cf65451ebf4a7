"""The benchmark suite's quick mode, end to end: every strategy, the reference, the report and the plot."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)


def test_quick_suite(tmp_path):
    proc = run_bench("--quick", "--output_dir", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {r["strategy"]: r for r in results["runs"]}
    assert set(rows) == {"full", "head", "partial", "lora", "qlora", "reference", "bare_loop"}
    for name, row in rows.items():
        assert row["status"] == "ok", row
        for key in ("accuracy", "f1", "peak_memory_bytes", "train_runtime_s", "samples_per_s",
                    "trainable_params", "artifact_bytes"):
            assert row[key] is not None and row[key] >= 0, (name, key)
    assert rows["lora"]["merge_time_s"] > 0 and rows["qlora"]["merge_time_s"] > 0
    assert rows["lora"]["artifact_bytes"] < rows["full"]["artifact_bytes"] / 50  # an adapter, not a model
    assert rows["head"]["trainable_params_without_head"] == 0
    # CPU memory is reported over the loaded process too, for peftkit's runs and the scripts without it alike
    for name in ("lora", "full", "reference", "bare_loop"):
        assert 0 < rows[name]["loaded_memory_bytes"] < rows[name]["peak_memory_bytes"], name
    assert rows["lora"]["trainable_params"] == rows["bare_loop"]["trainable_params"] == \
        rows["reference"]["trainable_params"]  # the same LoRA model three ways
    # The bare loop trains peftkit's LoRA on peftkit's batches, update for update: the same test loss but for the
    # order of float sums (a loader that drew its seed elsewhere, changing the batches, moved it by 7e-5).
    test_loss = {name: json.loads((tmp_path / "runs" / f"{name}-seed42" / "results.json").read_text())["test"]["loss"]
                 for name in ("lora", "bare_loop")}
    assert abs(test_loss["bare_loop"] - test_loss["lora"]) < 1e-6, test_loss
    assert 0 < rows["lora"]["real_token_share"] <= 1
    assert results["config"]["quick"] and results["command"][:3] == ["python", "-m", "benchmarks"]
    table = (tmp_path / "results.md").read_text()
    for name in rows:
        assert f"| {name} |" in table
    assert table.startswith("# peftkit benchmark - SMOKE RUN (--quick): not results")  # 32 test examples
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "[7/7] bare_loop" in proc.stdout  # a progress line per run
    assert "## peftkit LoRA against the routes without peftkit" in table
    assert "| a bare torch loop on peftkit's batches |" in table and "| the stock route" in table
    # where each peftkit run's training time went, phase by phase; the rows without peftkit have no phase clock
    assert "## Where the training time goes" in table
    for name in ("full", "head", "partial", "lora", "qlora"):
        phases = rows[name]["time_breakdown_s"]
        assert phases["forward"] > 0 and sum(phases.values()) <= rows[name]["train_runtime_s"] * 1.02 + 0.05, name
    assert rows["head"]["time_breakdown_s"]["feature cache"] > 0 and "backward" in rows["full"]["time_breakdown_s"]


def test_quick_sft_suite_with_the_trl_reference(tmp_path, tiny_lm_dir):
    proc = run_bench("--task", "causal_lm", "--quick", "--model_name_or_path", tiny_lm_dir, "--output_dir",
                     str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {r["strategy"]: r for r in results["runs"]}
    assert set(rows) == {"full", "lora", "qlora", "dora", "reference"}
    for name, row in rows.items():
        assert row["status"] == "ok", row
        for key in ("accuracy", "f1", "eval_loss", "peak_memory_bytes", "train_runtime_s", "tokens_per_s"):
            assert row[key] is not None and row[key] >= 0, (name, key)
    assert rows["lora"]["merge_time_s"] > 0 and rows["lora"]["trainable_params"] < rows["full"]["trainable_params"]
    assert results["config"]["task"] == "causal_lm" and "exact match" in results["config"]["score"]
    table = (tmp_path / "results.md").read_text()
    assert "| strategy | exact match | token F1 |" in table and "| reference |" in table
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_ner_suite_with_the_run_ner_style_reference(tmp_path):
    proc = run_bench("--task", "token_cls", "--quick", "--strategies", "lora", "head", "--output_dir", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {r["strategy"]: r for r in results["runs"]}
    assert set(rows) == {"lora", "head", "reference"}
    for name, row in rows.items():
        assert row["status"] == "ok", row
        assert 0 <= row["accuracy"] <= 1 and 0 < row["f1"] <= 1, name  # entity F1, word accuracy
    # the same LoRA model both ways (peft's TOKEN_CLS defaults), on the same exported splits and tag set
    assert rows["lora"]["trainable_params"] == rows["reference"]["trainable_params"]
    data = tmp_path / "data" / "seed42"
    tags = json.loads((data / "labels.json").read_text())
    assert tags[0] == "O" and len(tags) == 21  # the built-in file's tags, as peftkit's ClassLabel has them
    test_rows = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()]
    assert len(test_rows) == 32 and all(len(r["tokens"]) == len(r["ner_tags"]) > 0 for r in test_rows)
    assert results["config"]["dataset"] == "builtin:wnut16" and "entity F1" in results["config"]["score"]
    table = (tmp_path / "results.md").read_text()
    assert "| strategy | entity F1 | word acc |" in table and "| the stock route" in table


def test_a_failing_strategy_is_reported_and_the_rest_runs(tmp_path):
    # Through `peftkit bench`, from the user's own directory: a relative --output_dir lands there.
    proc = subprocess.run([sys.executable, "-m", "peftkit", "bench", "--quick", "--no_reference", "--strategies",
                           "head", "lora", "--model_name_or_path", str(tmp_path / "no_such_model"), "--output_dir",
                           "mine"], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stderr[-3000:]
    tmp_path = tmp_path / "mine"
    assert f"Wrote {tmp_path}/results.json" in proc.stdout
    rows = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert "no_such_model" in rows[0]["error"]
    assert "| head | FAILED:" in (tmp_path / "results.md").read_text()


@pytest.mark.gpu
def test_quick_suite_on_gpu_reports_tokens_and_reserved_memory(tmp_path):
    proc = run_bench("--quick", "--no_reference", "--strategies", "lora", "qlora", "--output_dir", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for row in json.loads((tmp_path / "results.json").read_text())["runs"]:
        assert row["tokens_per_s"] > 0 and row["peak_memory_reserved_bytes"] >= row["peak_memory_bytes"] > 0


@pytest.mark.gpu
def test_quick_ner_suite_on_gpu(tmp_path):
    proc = run_bench("--task", "token_cls", "--quick", "--no_reference", "--strategies", "lora", "qlora",
                     "--output_dir", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["strategy"]: r for r in json.loads((tmp_path / "results.json").read_text())["runs"]}
    assert set(rows) == {"lora", "qlora"}
    for name, row in rows.items():
        assert row["status"] == "ok", row
        assert row["tokens_per_s"] > 0 and row["peak_memory_bytes"] > 0, name
    # QLoRA's base is 4-bit on the GPU: its frozen linear weights take less memory than LoRA's float32 ones
    assert rows["qlora"]["peak_memory_bytes"] < rows["lora"]["peak_memory_bytes"]


def test_several_process_counts_give_a_scaling_table(tmp_path):
    proc = run_bench("--quick", "--no_reference", "--strategies", "lora", "--num_processes", "1", "2",
                     "--output_dir", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert [(r["strategy"], r["num_processes"], r["status"]) for r in rows] == [("lora", 1, "ok"), ("lora", 2, "ok")]
    table = (tmp_path / "results.md").read_text()
    assert "## Throughput scaling" in table
    scaling_rows = [line for line in table.splitlines() if line.startswith("| lora | ")]
    assert scaling_rows[-2].startswith("| lora | 1 | 1 |") and "| 1.00 | 1.00 |" in scaling_rows[-2]
    assert scaling_rows[-1].startswith("| lora | 2 | 2 |")


def test_train_sizes_give_a_learning_curve_with_derived_settings(tmp_path):
    proc = run_bench("--quick", "--strategies", "head", "--train_sizes", "40", "16", "--repeats", "2",
                     "--output_dir", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    rows = results["runs"]
    # smallest size first, no reference row (the stock route is compared at one size, not along a curve)
    assert [(r["train_size"], r["seed"]) for r in rows] == [("16", 42), ("16", 43), ("40", 42), ("40", 43)]
    assert results["config"]["train_sizes"] == ["16", "40"]
    for row in rows:
        assert row["status"] == "ok" and row["train_examples"] == int(row["train_size"])
        # peftkit's own defaults, not the fixed batch and epochs of --quick: small data gets batch 8, more epochs
        assert row["batch_size"] == 8 and row["derived"] == {"per_device_train_batch_size": 8,
                                                             "num_train_epochs": row["epochs"],
                                                             "eval_every_epochs": 1}  # 32 validation examples
    # 2 and 5 steps an epoch: each gets the epochs for 100 steps
    assert {(r["train_size"], r["epochs"]) for r in rows} == {("16", 50), ("40", 20)}
    table = (tmp_path / "results.md").read_text()
    assert "## Learning curve" in table and "| strategy | 16 | 40 |" in table
    curve_row = next(line for line in table.split("## Learning curve")[1].splitlines() if line.startswith("| head |"))
    accs = [100 * r["accuracy"] for r in rows]
    assert curve_row.count("+-") == 2 and f"[{accs[0]:.1f} {accs[1]:.1f}]" in curve_row
    assert "batch 8 x 50 ep = 100 steps" in table and "strategy table is at 40" in table
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Stopped after the first size (its rows kept, the second size's run directories gone): --resume runs the
    # rest only, and the table is the same
    for row in rows[2:]:
        shutil.rmtree(tmp_path / "runs" / f"head-n40-seed{row['seed']}")
    (tmp_path / "results.json").unlink()  # a stopped suite writes none
    proc = run_bench("--quick", "--strategies", "head", "--train_sizes", "40", "16", "--repeats", "2",
                     "--output_dir", str(tmp_path), "--resume")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("reusing head-n16-seed") == 2 and "reusing head-n40" not in proc.stdout
    again = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert [r.get("reused", False) for r in again] == [True, True, False, False]
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in rows]  # the same seeds train the same
    # On a fresh clone (no runs/, the results committed), --resume reuses the committed rows: nothing trains
    shutil.rmtree(tmp_path / "runs")
    proc = run_bench("--quick", "--strategies", "head", "--train_sizes", "40", "16", "--repeats", "2",
                     "--output_dir", str(tmp_path), "--resume")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("reusing head-n") == 4 and not (tmp_path / "runs").exists()
    assert json.loads((tmp_path / "results.json").read_text())["runs"] == [r | {"reused": True} for r in again]
    # A third seed asked for, report only: nothing trains, the missing runs are named
    proc = run_bench("--quick", "--strategies", "head", "--train_sizes", "40", "16", "--repeats", "3",
                     "--output_dir", str(tmp_path), "--report_only")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    partial = json.loads((tmp_path / "results.json").read_text())
    assert len(partial["runs"]) == 4 and partial["missing"] == ["head seed 44 at 16", "head seed 44 at 40"]
    assert ("**Incomplete:** 2 of 6 runs have not been made yet: head seed 44 at 16, head seed 44 at 40"
            in (tmp_path / "results.md").read_text())
    # Rows made with other settings are not reused, and the suite says why
    proc = run_bench("--quick", "--strategies", "head", "--train_sizes", "40", "16", "--repeats", "2", "--set",
                     "learning_rate=0.01", "--output_dir", str(tmp_path), "--report_only")
    said = next(line for line in proc.stdout.splitlines() if "not reusing the rows of" in line)
    assert "made with another configuration: settings" in said and "learning_rate" in said
    assert "reusing head-n" not in proc.stdout.replace("not reusing", "")
    # ... and with no row to report, the committed results are left as they were
    assert proc.returncode == 1 and "--report_only: none of the 4 runs asked for is finished" in proc.stderr
    assert json.loads((tmp_path / "results.json").read_text()) == partial


def test_shots_give_a_few_shot_curve_on_peftkits_draws(tmp_path):
    """--shots: K examples per class drawn by peftkit's --shots with each seed; the few-shot default (full with the
    contrastive stage, whose time counts in the row) beside head. The SetFit and TF-IDF rows need setfit (the
    bench extra): left out here with --no_reference."""
    proc = run_bench("--shots", "4", "--strategies", "fewshot", "head", "--no_reference", "--set",
                     "max_eval_samples=32", "contrastive_pairs=32", "--output_dir", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["config"]["shots"] is True and results["config"]["train_sizes"] == ["4"]
    rows = {r["strategy"]: r for r in results["runs"]}
    assert set(rows) == {"fewshot", "head"} and all(r["train_examples"] == 8 for r in rows.values())
    few = json.loads((tmp_path / "runs" / "fewshot-n4-seed42" / "results.json").read_text())
    assert few["strategy"] == "full" and few["contrastive"]["pairs"] == 32
    assert few["shots"]["rows"] == json.loads((tmp_path / "runs" / "head-n4-seed42" / "results.json").read_text()
                                              )["shots"]["rows"]  # the same examples for every row of a seed
    assert rows["fewshot"]["train_runtime_s"] > few["train_runtime_s"]  # the stage's time included
    table = (tmp_path / "results.md").read_text()
    assert "examples per class (--shots)" in table and "A learning curve over 4 examples per class" in table
    proc = run_bench("--shots", "8", "--train_sizes", "100")
    assert proc.returncode == 2 and "--shots is a curve of its own" in proc.stderr


def test_train_sizes_are_checked():
    proc = run_bench("--train_sizes", "100", "lots")
    assert proc.returncode == 2 and "--train_sizes takes positive whole numbers or `all`" in proc.stderr
    proc = run_bench("--train_sizes", "100", "--max_train_samples", "50")
    assert proc.returncode == 2 and "leave out --max_train_samples" in proc.stderr


def test_quick_image_suite_with_the_trainer_reference(tmp_path):
    proc = run_bench("--task", "image_cls", "--quick", "--strategies", "lora", "head", "--output_dir", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {r["strategy"]: r for r in results["runs"]}
    assert set(rows) == {"lora", "head", "reference"}
    for name, row in rows.items():
        assert row["status"] == "ok", row
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["f1"] <= 1, name
    # the same LoRA model both ways: the layers peftkit's lora chose, given to the stock route by name
    assert rows["lora"]["trainable_params"] == rows["reference"]["trainable_params"]
    test_images = list((tmp_path / "data" / "seed42" / "test").rglob("*.png"))
    assert len(test_images) == 16
    assert results["config"]["dataset"] == "builtin:mnist" and results["config"]["settings"]["augment"] == "flip"
    assert "| the stock route" in (tmp_path / "results.md").read_text()
