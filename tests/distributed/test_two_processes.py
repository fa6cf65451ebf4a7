"""Real processes on one CPU machine through the shipped Accelerate config: two processes, and two launchers
playing two machines on the loopback interface."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_recipe
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "recipes/accelerate/cpu_2proc.yaml"
# 64 training examples are 4 global batches of 16 per epoch; 51 evaluation examples do not split evenly.
COMMON = ["--max_train_samples", "64", "--max_eval_samples", "51", "--num_train_epochs", "2",
          "--disable_dropout", "--logging_steps", "1", "--report_to", "none"]
pytestmark = pytest.mark.e2e
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def launch(extra: list[str], script_args: list[str], strategy: str = "lora") -> subprocess.Popen:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", CONFIG, *extra,
           f"recipes/{strategy}_text_cls.py", *script_args]
    return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return out


# head: the feature cache is built a part per process and exchanged, which must change nothing.
@pytest.fixture(scope="module", params=["lora", "head"])
def strategy(request):
    return request.param


@pytest.fixture(scope="module")
def two_proc(tmp_path_factory, strategy):
    """2 processes x 8 examples per step; returns (run dir, stdout)."""
    out_dir = tmp_path_factory.mktemp(f"two_proc_{strategy}")
    out = finish(launch([], [*COMMON, "--per_device_train_batch_size", "8", "--output_dir", str(out_dir)], strategy))
    return out_dir, out


@pytest.fixture(scope="module")
def one_proc(tmp_path_factory, strategy):
    """1 process x 16 examples per step: the same global batch."""
    out_dir = tmp_path_factory.mktemp(f"one_proc_{strategy}")
    assert run_recipe(f"{strategy}_text_cls.py", [*COMMON, "--per_device_train_batch_size", "16",
                                                   "--output_dir", str(out_dir)]) == 0
    return out_dir


def test_two_processes_really_run_and_only_the_main_one_writes(two_proc):
    out_dir, stdout = two_proc
    results = json.loads((out_dir / "results.json").read_text())
    assert results["num_processes"] == 2 and results["effective_batch_size"] == 16
    assert stdout.count("Saved to") == 1
    assert not list(out_dir.glob("*.tmp")) and not (out_dir / "best_trainable.safetensors").exists()


def test_evaluation_counts_every_example_once(two_proc, capsys):
    # gather_for_metrics must drop the samples padded onto the last uneven batch, so one process
    # re-evaluating the saved model gets the same numbers.
    from peftkit.cli import main

    out_dir, _ = two_proc
    results = json.loads((out_dir / "results.json").read_text())
    assert main(["eval", str(out_dir), "--split", "validation", "--max_eval_samples", "51"]) == 0
    single = json.loads(capsys.readouterr().out)
    assert single["accuracy"] == pytest.approx(results["eval"]["accuracy"], abs=1e-9)
    assert single["loss"] == pytest.approx(results["eval"]["loss"], abs=1e-5)


def test_two_processes_train_like_one_with_the_same_global_batch(two_proc, one_proc, strategy):
    two = json.loads((two_proc[0] / "results.json").read_text())
    one = json.loads((one_proc / "results.json").read_text())
    assert two["feature_cache"] == one["feature_cache"] == (strategy == "head")
    assert [h["step"] for h in two["train_history"]] == [h["step"] for h in one["train_history"]] == list(range(1, 9))
    for a, b in zip(one["train_history"], two["train_history"], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5), a["step"]
        assert b["learning_rate"] == pytest.approx(a["learning_rate"], rel=1e-9)
    assert two["eval"]["loss"] == pytest.approx(one["eval"]["loss"], abs=1e-5)
    assert two["eval"]["accuracy"] == one["eval"]["accuracy"]
    name = "adapter_model.safetensors" if strategy == "lora" else "model.safetensors"
    w1, w2 = (load_file(str(d / name)) for d in (one_proc, two_proc[0]))
    assert w1.keys() == w2.keys()
    for key in w1:
        # AdamW's first steps are close to lr * sign(gradient), which magnifies float noise; measured 6.5e-6.
        assert (w1[key] - w2[key]).abs().max() < 1e-4, key
    if strategy == "lora":
        # lora_B starts at zero: it must have moved far beyond the tolerance, or the comparison proves nothing.
        assert max(w1[k].abs().max() for k in w1 if "lora_B" in k) > 2e-3


def test_the_contrastive_stage_on_two_processes_trains_like_one(tmp_path):
    """--contrastive's pair batches (16 pairs: 8 per process) and the head stage after it (the same global batch of
    8 examples), as one process."""
    args = ["--shots", "8", "--contrastive", "--contrastive_pairs", "64", "--max_eval_samples", "51",
            "--disable_dropout", "--logging_steps", "1", "--report_to", "none"]
    finish(launch([], [*args, "--per_device_train_batch_size", "4", "--output_dir", str(tmp_path / "two")]))
    assert run_recipe("lora_text_cls.py", [*args, "--per_device_train_batch_size", "8", "--output_dir",
                                           str(tmp_path / "one")]) == 0
    two, one = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("two", "one"))
    assert two["num_processes"] == 2 and two["contrastive"]["steps"] == one["contrastive"]["steps"] == 4
    assert two["contrastive"]["validation"]["loss"] == pytest.approx(one["contrastive"]["validation"]["loss"],
                                                                     abs=1e-5)
    assert two["eval"]["loss"] == pytest.approx(one["eval"]["loss"], abs=1e-4)
    w1, w2 = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("one", "two"))
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-4
    assert max(float(w1[k].abs().max()) for k in w1 if "lora_B" in k) > 2e-3  # the stage moved the adapter


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_machines_on_loopback_complete_and_write_one_result(tmp_path):
    out_dir = tmp_path / "run"
    machines = ["--num_machines", "2", "--num_processes", "2", "--main_process_ip", "127.0.0.1",
                "--main_process_port", str(free_port())]
    args = ["--max_train_samples", "64", "--max_eval_samples", "32", "--max_steps", "2", "--report_to", "none",
            "--per_device_train_batch_size", "8", "--output_dir", str(out_dir)]
    procs = [launch([*machines, "--machine_rank", str(rank)], args) for rank in (0, 1)]
    outputs = [finish(p) for p in procs]
    results = json.loads((out_dir / "results.json").read_text())
    assert results["num_processes"] == 2 and results["effective_batch_size"] == 16
    assert results["global_step"] == 2
    assert [o.count("Saved to") for o in outputs] == [1, 0]  # machine 0 holds the main process
    assert (out_dir / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("packing", [False, True])
def test_sft_on_two_processes_trains_like_one(tmp_path, tiny_lm_dir, packing):
    """Micro-batches of different supervised-token counts on each process: the loss is normalised by the tokens
    of the whole step across processes, so the curve is the single process's with the same global batch."""
    common = ["--model_name_or_path", tiny_lm_dir, "--max_train_samples", "64", "--max_eval_samples", "16",
              "--max_generation_samples", "4", "--generation_max_new_tokens", "4", "--num_train_epochs", "1",
              "--disable_dropout", "--logging_steps", "1", "--report_to", "none", "--learning_rate", "1e-3",
              *(["--packing", "--max_seq_length", "160"] if packing else [])]
    size = 2 if packing else 8
    two_dir, one_dir = tmp_path / "two", tmp_path / "one"
    proc = subprocess.Popen([sys.executable, "-m", "accelerate.commands.launch", "--config_file", CONFIG,
                             "recipes/lora_sft.py", *common, "--per_device_train_batch_size", str(size),
                             "--output_dir", str(two_dir)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    finish(proc)
    assert run_recipe("lora_sft.py", [*common, "--per_device_train_batch_size", str(2 * size),
                                      "--output_dir", str(one_dir)]) == 0
    two, one = (json.loads((d / "results.json").read_text()) for d in (two_dir, one_dir))
    assert two["num_processes"] == 2 and len(two["train_history"]) == len(one["train_history"]) >= 3
    for a, b in zip(one["train_history"], two["train_history"], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5), a["step"]
    assert two["eval"]["loss"] == pytest.approx(one["eval"]["loss"], abs=1e-5)
    w1, w2 = (load_file(str(d / "adapter_model.safetensors")) for d in (one_dir, two_dir))
    for key in w1:
        assert (w1[key] - w2[key]).abs().max() < 1e-4, key
    assert max(w1[k].abs().max() for k in w1 if "lora_B" in k) > 2e-3


def test_dpo_on_two_processes_trains_like_one(tmp_path, tiny_lm_dir):
    """60 pairs at a global batch of 16: the last step's second process holds repeats, which must not count; the
    reference pass (adapters off, no gradients) runs on each process between its forward and backward."""
    common = ["--model_name_or_path", tiny_lm_dir, "--max_train_samples", "60", "--max_eval_samples", "15",
              "--max_generation_samples", "4", "--generation_max_new_tokens", "4", "--num_train_epochs", "1",
              "--disable_dropout", "--logging_steps", "1", "--report_to", "none", "--learning_rate", "1e-2"]
    two_dir, one_dir = tmp_path / "two", tmp_path / "one"
    proc = subprocess.Popen([sys.executable, "-m", "accelerate.commands.launch", "--config_file", CONFIG,
                             "recipes/lora_dpo.py", *common, "--per_device_train_batch_size", "8",
                             "--output_dir", str(two_dir)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    finish(proc)
    assert run_recipe("lora_dpo.py", [*common, "--per_device_train_batch_size", "16", "--output_dir",
                                      str(one_dir)]) == 0
    two, one = (json.loads((d / "results.json").read_text()) for d in (two_dir, one_dir))
    assert two["num_processes"] == 2 and len(two["train_history"]) == len(one["train_history"]) == 4
    for a, b in zip(one["train_history"], two["train_history"], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5), a["step"]
    for name in ("loss", "reward_accuracy", "reward_margin", "preference_accuracy"):
        assert two["eval"][name] == pytest.approx(one["eval"][name], abs=1e-5), name
    for stage in ("base", "fine_tuned"):
        assert one["final_evaluation"][stage]["exact_match"] == two["final_evaluation"][stage]["exact_match"]
    a, b = one["final_evaluation"]["base"], two["final_evaluation"]["base"]
    assert a["pairs"] == b["pairs"] == 15 and b["preference_accuracy"] == pytest.approx(a["preference_accuracy"])
    w1, w2 = (load_file(str(d / "adapter_model.safetensors")) for d in (one_dir, two_dir))
    for key in w1:
        assert (w1[key] - w2[key]).abs().max() < 1e-4, key


def test_token_cls_on_two_processes_evaluates_every_word_once_and_trains_like_one(tmp_path):
    """NER on the built-in WNUT-16: 51 evaluation sentences split unevenly over 2 processes, each sentence's
    words gathered once (equal word accuracy, entity scores and token loss to 1 process with the same global
    batch), and the same training curve and adapter."""
    common = ["--max_train_samples", "64", "--max_eval_samples", "51", "--num_train_epochs", "2",
              "--disable_dropout", "--logging_steps", "1", "--report_to", "none"]
    two_dir, one_dir = tmp_path / "two", tmp_path / "one"
    proc = subprocess.Popen([sys.executable, "-m", "accelerate.commands.launch", "--config_file", CONFIG,
                             "recipes/lora_token_cls.py", *common, "--per_device_train_batch_size", "8",
                             "--output_dir", str(two_dir)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    finish(proc)
    assert run_recipe("lora_token_cls.py", [*common, "--per_device_train_batch_size", "16",
                                            "--output_dir", str(one_dir)]) == 0
    two, one = (json.loads((d / "results.json").read_text()) for d in (two_dir, one_dir))
    assert two["num_processes"] == 2 and len(two["train_history"]) == len(one["train_history"]) == 8
    for a, b in zip(one["train_history"], two["train_history"], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5), a["step"]
    for split in ("eval", "test"):
        for key in ("loss", "accuracy", "precision", "recall", "f1"):
            assert two[split][key] == pytest.approx(one[split][key], abs=1e-5), (split, key)
    w1, w2 = (load_file(str(d / "adapter_model.safetensors")) for d in (one_dir, two_dir))
    for key in w1:
        assert (w1[key] - w2[key]).abs().max() < 1e-4, key


def test_image_cls_with_augmentation_on_two_processes_trains_like_one(tmp_path):
    """Each training image's random crop and flip follow (seed, epoch, image), not the process that draws them: 2
    processes x 8 images train like 1 x 16 (LoRA on the built-in EfficientNet-Lite0, whose frozen batch norm
    keeps its statistics; batch norm that trains computes them per process, as in any DDP run).

    Convolution gradients sum over batch x height x width positions (200,000 per layer here), in a different order
    for 8 and 16 images, so the runs drift apart by float noise faster than a transformer's do: measured with SGD,
    losses 2.4e-7 apart at step 1, 9e-6 at step 3, at most 5.3e-4 over 8 steps (AdamW, whose first steps follow
    the gradient's sign, reached 2.8e-3). A different crop or flip of any image would move the first step's loss
    by far more than 1e-5, which is what pins the augmentation down."""
    common = ["--max_train_samples", "64", "--max_eval_samples", "24", "--num_train_epochs", "2",
              "--augment", "flip_crop", "--disable_dropout", "--logging_steps", "1", "--report_to", "none",
              "--optimizer", "sgd", "--learning_rate", "0.05"]
    two_dir, one_dir = tmp_path / "two", tmp_path / "one"
    proc = subprocess.Popen([sys.executable, "-m", "accelerate.commands.launch", "--config_file", CONFIG,
                             "recipes/lora_image_cls.py", *common, "--per_device_train_batch_size", "8",
                             "--output_dir", str(two_dir)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    finish(proc)
    assert run_recipe("lora_image_cls.py", [*common, "--per_device_train_batch_size", "16",
                                            "--output_dir", str(one_dir)]) == 0
    two, one = (json.loads((d / "results.json").read_text()) for d in (two_dir, one_dir))
    assert two["num_processes"] == 2 and len(two["train_history"]) == len(one["train_history"]) == 8
    assert two["train_history"][0]["loss"] == pytest.approx(one["train_history"][0]["loss"], abs=1e-5)
    for a, b in zip(one["train_history"], two["train_history"], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=2e-3), a["step"]
    assert two["eval"]["loss"] == pytest.approx(one["eval"]["loss"], abs=2e-3)
    w1, w2 = (load_file(str(d / "adapter_model.safetensors")) for d in (one_dir, two_dir))
    for key in w1:
        assert (w1[key] - w2[key]).abs().max() < 1e-3, key
    assert max(w1[k].abs().max() for k in w1 if "lora_B" in k) > 1e-2  # moved far beyond the tolerance (0.023)


def test_a_search_prunes_a_two_process_trial(tmp_path):
    """Trials under `accelerate launch`: the main process asks the pruner, and every process stops with it."""
    import csv

    from peftkit.search.space import build_space

    files = []
    for name, n in (("train.csv", 64), ("validation.csv", 32)):
        files.append(tmp_path / name)
        with open(files[-1], "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            writer.writerows([f"a {('dull', 'fine')[i % 2]} film, number {i}", ("neg", "pos")[i % 2]] for i in range(n))
    space = ["--strategy", "head", "--learning_rate", "0.05", "0.02", "1e-7", "--metric_for_best_model", "loss",
             "--max_steps", "8", "--eval_steps", "2"]
    seed = next(s for s in range(50) if build_space("text_cls", space, None).grid(s)[-1]["learning_rate"] == 1e-7)
    launcher = f"{sys.executable} -m accelerate.commands.launch --config_file {ROOT / CONFIG}"
    cmd = [sys.executable, "-m", "peftkit", "search", "--method", "grid", "--sampler_seed", str(seed), "--launcher",
           launcher, "--output_dir", str(tmp_path / "s"), *space, "--train_file", str(files[0]), "--validation_file",
           str(files[1]), "--report_to", "none"]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "s" / "search.json").read_text())
    assert {t["params"]["learning_rate"]: t["state"] for t in summary["trials"]} == {
        0.05: "complete", 0.02: "complete", 1e-7: "pruned"}
    results = json.loads((tmp_path / "s" / "trial_002" / "results.json").read_text())
    assert results["num_processes"] == 2 and results["pruned_at_step"] == 2 and results["global_step"] == 2
