"""Interrupted, killed and misused runs on the real built-in model: nothing saved is lost, resumes are exact,
and every refusal says what was wrong and what to do."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import run_recipe, wait_for
from safetensors.torch import load_file

from peftkit.cli import main

ROOT = Path(__file__).resolve().parents[2]
# Dropout stays on (the default): an exact resume must restore the random state as well as the weights.
ARGS = ["--max_train_samples", "160", "--max_eval_samples", "32", "--num_train_epochs", "2",
        "--per_device_train_batch_size", "8", "--save_steps", "5", "--eval_steps", "8", "--logging_steps", "1",
        "--report_to", "none"]
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    assert run_recipe("lora_text_cls.py", [*ARGS, "--output_dir", str(out), "--keep_checkpoints"]) == 0
    return out


def start(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "recipes/lora_text_cls.py", *ARGS, "--output_dir", str(out), *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            preexec_fn=as_in_a_terminal)


def as_in_a_terminal() -> None:
    """A run started from a terminal, even when the tests run in the background (a non-interactive shell's
    background jobs ignore SIGINT) or under nohup (SIGHUP ignored): peftkit rightly keeps an ignored signal ignored."""
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def assert_same_run(a: Path, b: Path) -> None:
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    assert rb["eval"]["loss"] == pytest.approx(ra["eval"]["loss"], abs=1e-5)  # the bar ...
    assert rb["eval"] == ra["eval"] and rb["test"] == ra["test"]  # ... and in fact bit for bit on CPU
    assert rb["train_history"] == ra["train_history"] and rb["history"] == ra["history"]
    wa, wb = (load_file(str(d / "adapter_model.safetensors")) for d in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_sigkilled_run_resumes_to_the_uninterrupted_result(reference, tmp_path, capsys):
    out = tmp_path / "run"
    proc = start(out)
    wait_for(out / "checkpoint-5", proc)
    time.sleep(0.4)  # somewhere after the first checkpoint, maybe inside the next one's write
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (out / "results.json").exists()
    # Changed settings are refused, with the list of what changed, and nothing is touched.
    before = sorted(p.name for p in out.iterdir())
    assert run_recipe("lora_text_cls.py", [*ARGS, "--output_dir", str(out), "--resume_from_checkpoint", "latest",
                                           "--learning_rate", "0.01", "--lora_r", "4"]) == 2
    err = capsys.readouterr().err
    assert "Refusing to resume" in err and "learning_rate: 0.002 -> 0.01" in err and "lora_r: 8 -> 4" in err
    assert sorted(p.name for p in out.iterdir()) == before
    assert run_recipe("lora_text_cls.py", [*ARGS, "--output_dir", str(out), "--resume_from_checkpoint", "latest"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["resumed_from_step"] >= 5
    assert_same_run(reference, out)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_finishes_the_step_saves_and_says_how_to_resume(reference, tmp_path, sig):
    out = tmp_path / "run"
    proc = start(out)
    wait_for(out / "checkpoint-5", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, err[-2000:]
    assert "Traceback" not in err
    line = next(x for x in err.splitlines() if x.startswith(f"peftkit: stopped: Stopped by {sig.name} after step"))
    step = int(line.split("after step ")[1].split(".")[0])
    assert (out / f"checkpoint-{step}").is_dir() and "--resume_from_checkpoint latest" in line
    assert run_recipe("lora_text_cls.py", [*ARGS, "--output_dir", str(out), "--resume_from_checkpoint", "latest"]) == 0
    assert json.loads((out / "results.json").read_text())["resumed_from_step"] == step
    assert_same_run(reference, out)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_a_console_that_goes_away_costs_nothing(reference, tmp_path, sig):
    """`... 2>&1 | tee log`, then Ctrl-C: tee dies too, and every later write to the pipe fails (EPIPE); an ssh drop
    hangs up the terminal (SIGHUP). The run must still finish its step, write its checkpoint and resume exactly."""
    out = tmp_path / "run"
    proc = start(out)
    wait_for(out / "checkpoint-5", proc)
    proc.stdout.close()
    proc.stderr.close()  # the reader is gone: the progress bar and the log now write into a broken pipe
    time.sleep(1.0)
    proc.send_signal(sig)
    assert proc.wait(timeout=300) == 128 + sig
    step = int(checkpoint_names(out)[-1].split("-")[1])
    assert step > 5 and not (out / "results.json").exists()
    assert run_recipe("lora_text_cls.py", [*ARGS, "--output_dir", str(out), "--resume_from_checkpoint", "latest"]) == 0
    assert json.loads((out / "results.json").read_text())["resumed_from_step"] == step
    assert_same_run(reference, out)
    assert not checkpoint_names(out)  # a finished run keeps no checkpoints unless --keep_checkpoints


def checkpoint_names(run: Path) -> list[str]:
    return sorted((p.name for p in run.glob("checkpoint-*")), key=lambda n: int(n.split("-")[1]))


def test_a_finished_run_is_not_resumed(reference, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    def files():  # the run's own: the directory's lock file names whoever last held it
        return {p.name: p.stat().st_mtime_ns for p in run.rglob("*") if p.name != ".peftkit.lock"}

    before = files()
    assert run_recipe("lora_text_cls.py", [*ARGS, "--output_dir", str(run), "--resume_from_checkpoint", "latest"]) == 2
    err = capsys.readouterr().err
    assert "has finished (it wrote results.json): there is nothing to resume" in err and "peftkit eval" in err
    assert files() == before


def test_an_existing_run_is_not_overwritten_without_the_flag(reference, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    results = (out / "results.json").read_text()
    quick = ["--max_train_samples", "16", "--max_eval_samples", "8", "--max_steps", "2", "--report_to", "none",
             "--output_dir", str(out)]
    assert run_recipe("full_text_cls.py", quick) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--overwrite_output_dir" in err and "Traceback" not in err
    assert (out / "results.json").read_text() == results
    assert run_recipe("full_text_cls.py", [*quick, "--overwrite_output_dir"]) == 0
    assert json.loads((out / "results.json").read_text())["strategy"] == "full"
    old = sorted(p.name for p in reference.glob("checkpoint-*"))
    assert old and not set(old) & {p.name for p in out.glob("checkpoint-*")}  # the old run's are gone
    assert not (out / "adapter_config.json").exists()


def test_a_truncated_checkpoint_is_refused_and_latest_takes_the_newest_intact_one(reference, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "results.json").unlink()  # as if it had been interrupted after its last checkpoint
    kept = sorted((p.name for p in run.glob("checkpoint-*")), key=lambda n: int(n.split("-")[1]))
    weights = run / kept[-1] / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert run_recipe("lora_text_cls.py", [*ARGS, "--output_dir", str(run), "--resume_from_checkpoint",
                                           str(run / kept[-1])]) == 2
    err = capsys.readouterr().err
    assert f"{kept[-1]}' is damaged: trainable.safetensors differ" in err and f"available: {kept[0]}" in err
    assert "Traceback" not in err and sorted(p.name for p in run.glob("checkpoint-*")) == sorted(kept)
    assert run_recipe("lora_text_cls.py", [*ARGS, "--output_dir", str(run), "--resume_from_checkpoint", "latest"]) == 0
    assert f"{kept[-1]} is damaged (trainable.safetensors: not as written); trying the one before it" in \
        capsys.readouterr().err
    assert json.loads((run / "results.json").read_text())["resumed_from_step"] == int(kept[-2].split("-")[1])


def test_resume_without_a_checkpoint_says_so(tmp_path, capsys):
    assert run_recipe("lora_text_cls.py", [*ARGS, "--output_dir", str(tmp_path), "--resume_from_checkpoint",
                                           "latest"]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err


def test_an_adapter_is_refused_on_another_base(reference, tmp_path, tiny_model_dir, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    cfg = json.loads((run / "peftkit_config.json").read_text())
    cfg["model"]["model_name_or_path"] = tiny_model_dir("bert")
    (run / "peftkit_config.json").write_text(json.dumps(cfg))
    from peftkit.layout import write_manifest

    write_manifest(run)  # an edit made with care: only the base check can tell
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert "was trained on a base with fingerprint" in err and "holds different weights" in err


def csv(path: Path, texts: list[str]) -> Path:
    import csv as csv_module

    with open(path, "w", newline="") as fh:
        writer = csv_module.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows([t, ("pos", "neg")[i % 2]] for i, t in enumerate(texts))
    return path


def test_empty_texts_are_refused_with_where_they_are(tmp_path, capsys):
    data = csv(tmp_path / "d.csv", [f"review number {i}" for i in range(20)] + ["   ", ""])
    code = run_recipe("lora_text_cls.py", ["--train_file", str(data), "--validation_file", str(data), "--max_steps",
                                           "1", "--report_to", "none", "--output_dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "Text column 'text' of the train data holds 2 missing or empty text(s) (d.csv row " in err
    rows = sorted(err.split("(d.csv row ")[1].split(")")[0].replace("d.csv row ", "").split(", "))
    assert rows == ["22", "23"]  # the file's own rows (the header is row 1), wherever the split put them
    assert "Drop or fill those rows" in err and "Traceback" not in err


def test_very_long_texts_are_cut_at_max_seq_length_with_a_warning(tmp_path, capsys):
    data = csv(tmp_path / "d.csv", [f"short review {i}" for i in range(19)] + ["very long " * 2000])
    code = run_recipe("lora_text_cls.py", ["--train_file", str(data), "--validation_file", str(data), "--max_steps",
                                           "1", "--report_to", "none", "--output_dir", str(tmp_path / "o")])
    assert code == 0
    assert "1 of 20 train texts reached --max_seq_length 128 tokens and were cut there" in capsys.readouterr().err


def test_pickled_weights_are_never_loaded(reference, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    weights = load_file(str(run / "adapter_model.safetensors"))
    (run / "adapter_model.safetensors").unlink()
    (run / "peftkit_manifest.json").unlink()  # a run from before manifests
    torch.save(weights, run / "adapter_model.bin")  # what an older or foreign tool might leave
    assert main(["eval", str(run)]) == 2
    assert "holds no safetensors weights" in capsys.readouterr().err
