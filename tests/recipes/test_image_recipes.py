"""image_cls end to end on the built-in EfficientNet-Lite0 (timm, through transformers' TimmWrapper) and MNIST
digits: the three recipes, a user's photo folder with only --train_dir, predict, eval, merge into a model that
transformers' pipeline serves, and an exact resume after SIGKILL with augmentation on."""

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
from helpers import make_photo_folder, run_recipe
from safetensors.torch import load_file

from peftkit.cli import main
from peftkit.merge import merge

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--max_train_samples", "40", "--max_eval_samples", "20", "--max_steps", "3",
         "--per_device_train_batch_size", "8", "--report_to", "none"]
pytestmark = pytest.mark.e2e


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for strategy in ("full", "head", "lora"):
        run_dir = tmp_path_factory.mktemp(strategy)
        assert run_recipe(f"{strategy}_image_cls.py", [*SMALL, "--output_dir", str(run_dir)]) == 0
        out[strategy] = run_dir
    return out


def test_each_recipe_trains_the_builtin_model_on_the_builtin_digits(runs):
    counts = {}
    for strategy, run_dir in runs.items():
        res = results(run_dir)
        assert res["task"] == "image_cls" and res["dataset"] == "builtin:mnist"
        assert res["labels"] == [str(d) for d in range(10)] and res["global_step"] == 3
        assert 0 <= res["test"]["accuracy"] <= 1
        counts[strategy] = res["trainable_params"]
    assert counts["head"] == 1280 * 10 + 10  # the new classifier over EfficientNet-Lite0's 1,280 features
    assert counts["head"] < counts["lora"] < counts["full"]
    config = json.loads((runs["full"] / "peftkit_config.json").read_text())
    training = config["training"]  # the classic recipe's settings, as the recipe presets them
    assert training["optimizer"] == "sgd" and training["momentum"] == 0.9 and training["lr_scheduler_type"] == "step"
    assert config["task_args"]["augment"] == "flip"
    # the saved label names travel in the model's config, which plain transformers reads
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(runs["full"]).id2label[3] == "3"


def test_eval_reproduces_the_test_scores_of_an_adapter_run(runs, capsys):
    capsys.readouterr()
    assert main(["eval", str(runs["lora"]), "--max_eval_samples", "20"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    expected = results(runs["lora"])["test"]
    assert metrics["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-9)
    assert metrics["loss"] == pytest.approx(expected["loss"], abs=1e-5)


def test_merged_lora_serves_in_a_plain_transformers_pipeline(runs, tmp_path):
    from transformers import pipeline

    from peftkit.tasks.image_data import open_image

    out = tmp_path / "merged"
    report = merge([str(runs["lora"])], str(out))
    assert report["passed"] and report["adapter_vs_merged_reloaded"]["prediction_agreement"] == 1.0
    folder = make_photo_folder(tmp_path / "imgs", n=2)
    images = sorted(str(p) for p in folder.rglob("*.*"))
    served = pipeline("image-classification", model=str(out), top_k=1)([open_image(p) for p in images])
    ours = [row["label"] for row in run_predict(runs["lora"], images)]
    assert [row[0]["label"] for row in served] == ours


def run_predict(run_dir: Path, images: list[str]) -> list[dict]:
    from peftkit.run_dir import predict

    return predict(run_dir, [{"image": p} for p in images])


def test_a_users_photo_folder_trains_with_only_train_dir_and_predict_labels_new_files(tmp_path, capsys):
    photos = make_photo_folder(tmp_path / "photos", n=10)
    out = tmp_path / "run"
    assert run_recipe("lora_image_cls.py", ["--train_dir", str(photos), "--output_dir", str(out),
                                            "--max_steps", "4", "--report_to", "none"]) == 0
    res = results(out)
    assert res["labels"] == ["a", "b"] and res["num_examples"]["validation"] == 2  # 10% carved, seeded
    new = make_photo_folder(tmp_path / "new", n=3)
    (new / "b" / "bad.png").write_bytes(b"not a png")
    capsys.readouterr()
    assert main(["predict", str(out), "--input_file", str(new)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 7 and {r.get("label") for r in rows if "error" not in r} <= {"a", "b"}
    bad = [r for r in rows if "error" in r]
    assert len(bad) == 1 and bad[0]["image"].endswith("bad.png")  # one unreadable file loses nobody else's answer
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-4 for r in rows if "error" not in r)
    # peftkit eval on a folder of the same classes
    assert main(["eval", str(out), "--test_dir", str(make_photo_folder(tmp_path / "t", n=3))]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["accuracy"] <= 1


RESUME = ["--max_train_samples", "48", "--max_eval_samples", "16", "--num_train_epochs", "2",
          "--per_device_train_batch_size", "8", "--save_steps", "4", "--logging_steps", "1",
          "--augment", "flip_crop", "--report_to", "none"]


def test_a_sigkilled_run_with_augmentation_resumes_exactly(tmp_path):
    reference = tmp_path / "uninterrupted"
    assert run_recipe("lora_image_cls.py", [*RESUME, "--output_dir", str(reference)]) == 0
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "recipes/lora_image_cls.py", *RESUME, "--output_dir", str(out)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 300
    while not (out / "checkpoint-8").exists():  # inside the second epoch
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "checkpoint-8 never appeared"
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (out / "results.json").exists()
    assert run_recipe("lora_image_cls.py", [*RESUME, "--output_dir", str(out), "--resume_from_checkpoint",
                                            "latest"]) == 0
    a, b = results(reference), results(out)
    assert b["resumed_from_step"] >= 8
    assert a["train_history"] == b["train_history"] and a["history"] == b["history"]
    assert a["eval"] == b["eval"] and a["test"] == b["test"]
    wa, wb = (load_file(str(d / "adapter_model.safetensors")) for d in (reference, out))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
