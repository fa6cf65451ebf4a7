"""A third-party task that writes only what the contract requires (the abstract methods of peftkit.tasks.Task),
installed as a package with a `peftkit.tasks` entry point, trains, evaluates, predicts and merges through the
CLI, as a plug-in author's users would run it."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

PLUGIN = '''
"""Language modelling on plain text: the loss on every token of a text column."""
from dataclasses import dataclass
from typing import ClassVar

import torch
from datasets import DatasetDict
from transformers import AutoModelForCausalLM

from peftkit.modeling import load_tokenizer
from peftkit.tasks import Task


@dataclass
class PlainLM(Task):
    max_tokens: int = 32  # a flag of its own
    name: ClassVar[str] = "plain_lm"
    auto_class: ClassVar[type] = AutoModelForCausalLM
    peft_task_type: ClassVar[str] = "CAUSAL_LM"
    metrics: ClassVar[dict] = {"loss": "min"}
    default_metric: ClassVar[str] = "loss"

    def load_processor(self, source):
        return load_tokenizer(source)

    def discover(self, raw):
        assert self.data.text_column in raw["train"].column_names
        return {}

    def restore(self, state):
        pass

    def preprocess(self, raw, tokenizer):
        def encode(batch):
            return tokenizer(batch[self.data.text_column], truncation=True, max_length=self.max_tokens)
        return DatasetDict({split: ds.map(encode, batched=True, remove_columns=ds.column_names)
                            for split, ds in raw.items()})  # every split given: one when a run is evaluated

    def collator(self, tokenizer):
        def collate(rows):
            width = max(len(r["input_ids"]) for r in rows)
            ids = torch.full((len(rows), width), tokenizer.pad_token_id)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, :len(r["input_ids"])] = torch.tensor(r["input_ids"])
                mask[i, :len(r["input_ids"])] = 1
            return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
        return collate

    def loss_units(self, batch):
        return int((batch["labels"][:, 1:] != -100).sum())

    def eval_rows(self, outputs, batch):
        logits, labels = outputs.logits[:, :-1].float(), batch["labels"][:, 1:]
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
        return {"loss_sum": loss.sum(1), "count": (labels != -100).sum(1)}

    def compute_metrics(self, rows):
        return {"loss": (rows["loss_sum"].sum() / rows["count"].sum()).item()}

    def read_inputs(self, path, columns):
        return [{"text": line.strip()} for line in open(path) if line.strip()]

    @torch.no_grad()
    def predict(self, model, tokenizer, inputs):
        out = []
        for row in inputs:
            enc = tokenizer(row["text"], return_tensors="pt")
            ids = model.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            out.append({**row, "continuation": tokenizer.decode(ids[0, enc["input_ids"].shape[1]:])})
        return out
'''


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    """A directory holding the plug-in package and its dist-info with the entry point, as pip would install it."""
    root = tmp_path_factory.mktemp("site")
    (root / "toy_lm.py").write_text(textwrap.dedent(PLUGIN))
    info = root / "toy_lm-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-lm\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[peftkit.tasks]\nplain_lm = toy_lm:PlainLM\n")
    return root


def peftkit(plugin_path: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(plugin_path)}
    return subprocess.run([sys.executable, "-m", "peftkit", *argv], env=env, capture_output=True, text=True,
                          timeout=900)


def test_the_plugin_writes_only_the_abstract_methods(plugin_path):
    sys.path.insert(0, str(plugin_path))
    try:
        import toy_lm

        from peftkit.tasks import Task

        written = {n for n, v in vars(toy_lm.PlainLM).items() if inspect.isfunction(v) and not n.startswith("_")}
        assert written == Task.__abstractmethods__
    finally:
        sys.path.remove(str(plugin_path))


def test_a_plugin_task_with_only_the_required_methods_trains_evaluates_predicts_and_merges(
        plugin_path, builtin_lm_dir, tmp_path):
    run, merged = tmp_path / "run", tmp_path / "merged"
    proc = peftkit(plugin_path, "train", "--task", "plain_lm", "--strategy", "lora", "--max_tokens", "24",
                   "--model_name_or_path", builtin_lm_dir, "--max_train_samples", "16", "--max_eval_samples", "8",
                   "--max_steps", "2", "--per_device_train_batch_size", "4", "--report_to", "none",
                   "--output_dir", str(run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["task"] == "plain_lm" and results["global_step"] == 2
    config = json.loads((run / "peftkit_config.json").read_text())
    assert config["task_args"] == {"max_tokens": 24}

    proc = peftkit(plugin_path, "eval", str(run), "--split", "validation")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert metrics["loss"] == pytest.approx(results["eval"]["loss"], abs=1e-4)  # the run's own figure, recomputed

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("This movie was\nThe plot\n")
    proc = peftkit(plugin_path, "predict", str(run), "--input_file", str(prompts))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["text"] for r in rows] == ["This movie was", "The plot"] and all("continuation" in r for r in rows)

    proc = peftkit(plugin_path, "merge", str(run), "--output_dir", str(merged))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (merged / "model.safetensors").is_file()
