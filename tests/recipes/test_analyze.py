"""`peftkit analyze` on a real (small) text_cls run of the built-in MiniLM and reviews."""

from __future__ import annotations

import csv
import json

import pytest

from peftkit.cli import main


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    assert main(["train", "--strategy", "head", "--max_train_samples", "96", "--max_eval_samples", "80",
                 "--max_steps", "6", "--report_to", "none", "--output_dir", str(run)]) == 0
    assert main(["analyze", str(run), "--top_k", "5"]) == 0
    return run, run / "analysis_test"


def test_counts_match_the_runs_own_test_results(analysed):
    run, out = analysed
    result = json.loads((out / "analysis.json").read_text())
    recorded = json.loads((run / "results.json").read_text())
    counts = result["confusion_matrix"]["counts"]
    assert result["confusion_matrix"]["labels"] == recorded["labels"] == ["fresh", "rotten"]
    assert sum(map(sum, counts)) == result["examples"] == recorded["num_examples"]["test"] == 80
    assert result["accuracy"] == pytest.approx(recorded["test"]["accuracy"], abs=1e-4)
    assert result["accuracy"] == pytest.approx((counts[0][0] + counts[1][1]) / 80, abs=1e-4)
    assert [s["support"] for s in result["per_class"].values()] == [sum(row) for row in counts]
    assert result["macro_f1"] == pytest.approx(recorded["test"]["f1"], abs=1e-3)
    assert sum(b["count"] for b in result["calibration"]["bins"]) == 80
    assert "(the same)" in (out / "analysis.md").read_text()


def test_pictures_and_error_table_are_written(analysed):
    _, out = analysed
    for name in ("confusion_matrix.png", "reliability.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / name).stat().st_size > 10_000
    with open(out / "errors.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    mistakes = [r for r in rows if r["kind"] == "confident mistake"]
    unsure = [r for r in rows if r["kind"] == "unsure correct"]
    assert 0 < len(mistakes) <= 5 and 0 < len(unsure) <= 5
    assert all(r["label"] != r["predicted"] and r["input"] and "builtin:rotten_tomatoes test" in r["example"]
               for r in mistakes)
    assert all(r["label"] == r["predicted"] for r in unsure)
    confidences = [float(r["p_predicted"]) for r in mistakes]
    assert confidences == sorted(confidences, reverse=True)


def test_a_missing_run_is_named(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "nope")]) == 2
    assert "is not a peftkit run directory" in capsys.readouterr().err


def test_token_cls_is_analysed_by_entity_type(tmp_path):
    run = tmp_path / "ner"
    assert main(["train", "--task", "token_cls", "--strategy", "head", "--max_train_samples", "64",
                 "--max_eval_samples", "40", "--max_steps", "4", "--report_to", "none", "--output_dir", str(run)]) == 0
    assert main(["analyze", str(run), "--top_k", "4"]) == 0
    analysis = json.loads((run / "analysis_test" / "analysis.json").read_text())
    recorded = json.loads((run / "results.json").read_text())["test"]
    assert analysis["examples"] == 40 and analysis["entity_f1"] == pytest.approx(recorded["f1"], abs=1e-4)
    counts = analysis["confusion_matrix"]["counts"]
    assert analysis["confusion_matrix"]["labels"][0] == "O" and sum(map(sum, counts)) == analysis["words"]
    assert {"person", "geo-loc"} <= set(analysis["per_type"])  # WNUT-16's types, B-/I- folded
    with open(run / "analysis_test" / "errors.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    wrong = [int(r["wrong_words"]) for r in rows]
    assert 0 < len(rows) <= 4 and wrong == sorted(wrong, reverse=True) and wrong[-1] > 0
    assert "(the same)" in (run / "analysis_test" / "analysis.md").read_text()


@pytest.fixture(scope="module")
def own_csv_run(tmp_path_factory):
    """A run on a user's own CSV with no test file: peftkit carves a validation split, never a test split."""
    root = tmp_path_factory.mktemp("own")
    rows = [(f"ticket {i}: the printer {'is on fire' if i % 2 else 'works fine'} today", "urgent" if i % 2 else "fine")
            for i in range(60)]
    with open(root / "tickets.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("text", "label"), *rows])
    run = root / "run"
    assert main(["train", "--strategy", "head", "--train_file", str(root / "tickets.csv"), "--max_steps", "4",
                 "--report_to", "none", "--output_dir", str(run)]) == 0
    return run


def test_eval_and_analyze_without_a_test_split_read_validation_and_say_so(own_csv_run, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert main(["eval", str(own_csv_run), "--output_file", str(out)]) == 0
    err = capsys.readouterr().err
    assert "trained without --test_file" in err and "evaluating its validation split" in err
    recorded = json.loads((own_csv_run / "results.json").read_text())
    assert recorded["test"] is None
    assert json.loads(out.read_text())["accuracy"] == pytest.approx(recorded["eval"]["accuracy"], abs=1e-6)
    assert main(["analyze", str(own_csv_run)]) == 0
    analysis = json.loads((own_csv_run / "analysis_validation" / "analysis.json").read_text())
    assert analysis["examples"] == recorded["num_examples"]["validation"] == 6
    assert "(the same)" in (own_csv_run / "analysis_validation" / "analysis.md").read_text()


@pytest.mark.parametrize("command", ["eval", "analyze"])
def test_asking_for_the_missing_test_split_names_the_ways_out(own_csv_run, command, capsys):
    assert main([command, str(own_csv_run), "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert "no 'test' split (splits: train, validation): it was trained without --test_file" in err
    assert "Pass --split validation, or --eval_file" in err
    assert not (own_csv_run / "analysis_test").exists()


def test_analyze_checks_for_matplotlib_before_any_work(own_csv_run, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    loaded = []
    monkeypatch.setattr("peftkit.run_dir.load_run", lambda *a, **k: loaded.append(a))
    assert main(["analyze", str(own_csv_run), "--output_dir", str(own_csv_run / "plots")]) == 2
    assert 'peftkit analyze needs matplotlib>=3.8, which is not installed. Run: pip install "matplotlib>=3.8"' in \
        capsys.readouterr().err
    assert not loaded and not (own_csv_run / "plots").exists()


def test_matplotlib_is_installed_with_peftkit_itself():
    import importlib.metadata

    plain = [r for r in importlib.metadata.requires("peftkit") if "extra ==" not in r]
    assert any(r.replace(" ", "").startswith("matplotlib>=") for r in plain)
