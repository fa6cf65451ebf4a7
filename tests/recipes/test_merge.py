"""Merging trained runs into plain transformers models: parity, identity, labels, atomic output."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from peftkit.cli import main
from peftkit.errors import PeftkitError
from peftkit.merge import merge

SMALL = ["--max_train_samples", "64", "--max_eval_samples", "24", "--max_steps", "3",
         "--per_device_train_batch_size", "8", "--report_to", "none"]
pytestmark = pytest.mark.e2e


def train(strategy: str, out: Path, *extra: str) -> Path:
    from peftkit.cli import train_main

    assert train_main([*SMALL, "--output_dir", str(out), *extra], task="text_cls", strategy=strategy) == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge_runs")
    return {"lora": train("lora", root / "lora"), "lora_b": train("lora", root / "lora_b", "--seed", "7"),
            "qlora": train("qlora", root / "qlora"), "full": train("partial", root / "partial")}


def plain_logits(model_dir: Path, texts: list[str]) -> torch.Tensor:
    """Logits from a fresh process that imports transformers only (never peft or peftkit)."""
    code = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
        f"d = {str(model_dir)!r}\n"
        "m = AutoModelForSequenceClassification.from_pretrained(d).eval()\n"
        "tok = AutoTokenizer.from_pretrained(d)\n"
        f"enc = tok({texts!r}, return_tensors='pt', padding=True)\n"
        "with torch.no_grad(): out = m(**enc).logits.tolist()\n"
        "assert 'peft' not in sys.modules and 'peftkit' not in sys.modules\n"
        "print(json.dumps({'logits': out, 'id2label': m.config.id2label}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["id2label"] == {"0": "fresh", "1": "rotten"}
    return torch.tensor(result["logits"])


TEXTS = ["a sharp, funny and moving film", "a dull, lifeless mess", "it is a movie"]


def test_lora_merge_matches_plain_peft(runs, tmp_path, builtin_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "merged"
    report = merge([str(runs["lora"])], str(out))
    assert report["passed"] and report["adapter_vs_merged_reloaded"]["max_abs_logit_diff"] < 1e-5
    assert report["adapter_vs_merged_reloaded"]["prediction_agreement"] == 1.0
    assert json.loads((out / "merge_report.json").read_text()) == report
    assert list(out.glob("*.safetensors")) and not (out / "adapter_config.json").exists()
    umask = os.umask(0)
    os.umask(umask)  # a server running as another user can read the merged weights (safetensors writes 0600)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask for p in out.glob("*.safetensors"))
    base = AutoModelForSequenceClassification.from_pretrained(builtin_model_dir, num_labels=2)
    adapter = PeftModel.from_pretrained(base, runs["lora"]).eval()
    enc = AutoTokenizer.from_pretrained(runs["lora"])(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = adapter(**enc).logits
    torch.testing.assert_close(plain_logits(out, TEXTS), expected, rtol=0, atol=1e-4)


def test_the_commands_print_their_verdict_not_a_report_or_loading_bars(runs, tmp_path, capsys):
    from peftkit.cli import main

    out = tmp_path / "merged"
    capsys.readouterr()
    assert main(["merge", str(runs["lora"]), "--output_dir", str(out)]) == 0
    printed = capsys.readouterr()
    lines = printed.out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"Merged into {out}: parity passed (max |logit difference| ")
    assert lines[1] == f"Report: {out / 'merge_report.json'}" and (out / "merge_report.json").is_file()
    (tmp_path / "in.txt").write_text("a sharp, funny film\n")
    for command in (["eval", str(runs["lora"])], ["predict", str(runs["lora"]), "--input_file",
                                                   str(tmp_path / "in.txt")]):
        assert main(command) == 0
        assert "Loading weights" not in capsys.readouterr().err


def test_qlora_merges_into_full_precision_and_reports_both(runs, tmp_path):
    out = tmp_path / "merged"
    report = merge([str(runs["qlora"])], str(out))
    assert report["passed"]
    assert set(report["accuracy"]) == {"adapter_model", "quantized_base_adapter_model", "merged_in_memory",
                                       "merged_reloaded"}
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config  # a plain float model, not 4-bit weights
    plain_logits(out, TEXTS)


def test_plain_run_is_copied_and_verified(runs, tmp_path):
    report = merge([str(runs["full"])], str(tmp_path / "m"), dtype="bfloat16")
    assert report["passed"] and report["strategy"] == "partial" and report["dtype"] == "bfloat16"


def test_several_adapters_combine(runs, tmp_path):
    report = merge([str(runs["lora"]), str(runs["lora_b"])], str(tmp_path / "m"), weights=[0.6, 0.4])
    assert report["passed"] and report["weights"] == [0.6, 0.4] and report["combination"] == "linear"
    report = merge([str(runs["lora"]), str(runs["lora_b"])], str(tmp_path / "c"), combination="cat")
    assert report["passed"]


def test_non_empty_output_is_refused_unless_overwrite(runs, tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(PeftkitError, match="exists and is not empty"):
        merge([str(runs["full"])], str(out))
    assert (out / "keep.txt").read_text() == "mine"
    merge([str(runs["full"])], str(out), overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "merge_report.json").exists()


def test_mismatched_base_is_refused(runs, tmp_path, tiny_model_dir):
    with pytest.raises(PeftkitError, match=r"Base mismatch: .* was trained on 'builtin:all-MiniLM-L6-v2'"):
        merge([str(runs["lora"])], str(tmp_path / "m"), base_model_name_or_path=tiny_model_dir("bert"))
    assert not (tmp_path / "m").exists()


def test_mismatched_label_sets_are_refused(runs, tmp_path):
    data = tmp_path / "three.csv"
    data.write_text("text,label\n" + "".join(f"text {i},{'abc'[i % 3]}\n" for i in range(30)))
    other = train("lora", tmp_path / "other", "--train_file", str(data))
    with pytest.raises(PeftkitError, match="Label sets differ"):
        merge([str(runs["lora"]), str(other)], str(tmp_path / "m"))


def test_failed_parity_and_interruption_leave_nothing(runs, tmp_path, monkeypatch, capsys):
    import peftkit.merge as merge_module

    out = tmp_path / "m"
    monkeypatch.setitem(merge_module.TOLERANCE, "float32", (0.0, 1.0))  # no difference at all allowed
    assert main(["merge", str(runs["lora"]), "--output_dir", str(out)]) == 2
    assert "Parity check failed for float32" in capsys.readouterr().err
    monkeypatch.undo()

    def interrupted(tmp, out):
        raise KeyboardInterrupt

    monkeypatch.setattr(merge_module, "publish", interrupted)
    with pytest.raises(KeyboardInterrupt):
        merge([str(runs["lora"])], str(out))
    assert not out.exists() and not list(tmp_path.glob(".m.*"))


def test_pissa_run_loads_evaluates_and_merges_on_the_original_base(tmp_path, capsys):
    # PiSSA trains on a rewritten base; the saved adapter is converted for the original one (rank 2r), so
    # that loading the run reproduces its test metrics and merging needs nothing special.
    run = train("pissa", tmp_path / "pissa")
    config = json.loads((run / "adapter_config.json").read_text())
    assert config["r"] == 16 and config["peftkit_converted_from"] == "pissa"
    capsys.readouterr()
    assert main(["eval", str(run), "--max_eval_samples", "24"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    expected = json.loads((run / "results.json").read_text())["test"]
    assert metrics["accuracy"] == expected["accuracy"]
    assert metrics["loss"] == pytest.approx(expected["loss"], abs=1e-5)
    report = merge([str(run)], str(tmp_path / "merged"))
    assert report["passed"] and report["adapter_vs_merged_reloaded"]["prediction_agreement"] == 1.0
    plain_logits(tmp_path / "merged", TEXTS)
