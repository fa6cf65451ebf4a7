"""Helpers shared by the tests: build a strategy on a tiny model, make a batch, run a recipe in-process."""

from __future__ import annotations

import runpy
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from peftkit.config import ModelArguments
from peftkit.feature_cache import INDEX_KEY
from peftkit.modeling import load_model
from peftkit.strategies import get_strategy
from peftkit.tasks.text_cls import TextClassification

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 32  # the tiny vision models' input side
LABELS = ["a", "b", "c"]
LORA_R = 4
STRATEGY_ARGS = {"partial": {"num_trainable_layers": 1}, "lora": {"lora_r": LORA_R}, "qlora": {"lora_r": LORA_R},
                 "dora": {"lora_r": LORA_R}, "rslora": {"lora_r": LORA_R},
                 "loraplus": {"lora_r": LORA_R}, "pissa": {"lora_r": LORA_R}}


def text_task(labels=LABELS):
    """The text_cls task with a known label space (as after discovery or loading a run)."""
    task = TextClassification()
    task.restore({"labels": labels})
    return task


def build(arch, name, tiny_model_dir):
    """A tiny model with a fresh head, prepared by strategy ``name``; the same weights on every call."""
    path = tiny_model_dir(arch)  # may create the model, which draws random numbers: do it before seeding
    torch.manual_seed(0)
    task = text_task()
    strategy = get_strategy(name).build(**STRATEGY_ARGS.get(name, {}))
    model, heads = load_model(task, strategy, ModelArguments(path), SimpleNamespace(pad_token_id=0))
    return strategy.prepare(model, task, heads), task, strategy


def batch(seed=0, model=None):
    """Four random sequences with labels; on ``model``'s device when given (a 4-bit base sits on the GPU when
    there is one)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 120, (4, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    out = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 2, 1])}
    device = next(model.parameters()).device if model is not None else "cpu"
    return {k: v.to(device) for k, v in out.items()}


def examples(n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = int(torch.randint(3, 12, (1,), generator=g))
        rows.append({"input_ids": torch.randint(1, 120, (length,), generator=g).tolist(), "labels": i % 3,
                     INDEX_KEY: i})
    return rows


def collate(rows, left_pad=False):
    width = max(len(r["input_ids"]) for r in rows)
    ids, mask = [], []
    for r in rows:
        pad = [0] * (width - len(r["input_ids"]))
        ids.append(pad + r["input_ids"] if left_pad else r["input_ids"] + pad)
        ones = [1] * len(r["input_ids"])
        mask.append([0] * len(pad) + ones if left_pad else ones + [0] * len(pad))
    batch = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask),
             "labels": torch.tensor([r["labels"] for r in rows])}
    if INDEX_KEY in rows[0]:
        batch[INDEX_KEY] = torch.tensor([r[INDEX_KEY] for r in rows])
    return batch


def run_recipe(name: str, argv: list[str]) -> int:
    """Run ``recipes/<name>`` in this process (imports are paid once) and return its exit status."""
    old = sys.argv
    sys.argv = [f"recipes/{name}", *argv]
    try:
        runpy.run_path(str(ROOT / "recipes" / name), run_name="__main__")
    except SystemExit as exc:
        return exc.code
    finally:
        sys.argv = old
    raise AssertionError("recipes must exit with a status")


def train_each(tmp_path_factory, task: str, strategies: list[str], argv: list[str]) -> dict[str, Path]:
    """Train ``task`` once per strategy (through its recipe where there is one, else ``peftkit train``) with
    ``argv``; returns each run directory, for module fixtures whose tests read the outputs."""
    from peftkit.cli import main

    out = {}
    for strategy in strategies:
        run_dir = tmp_path_factory.mktemp(strategy)
        args = [*argv, "--output_dir", str(run_dir)]
        if (ROOT / "recipes" / f"{strategy}_{task}.py").exists():
            assert run_recipe(f"{strategy}_{task}.py", args) == 0
        else:
            assert main(["train", "--task", task, "--strategy", strategy, *args]) == 0
        out[strategy] = run_dir
    return out


def pattern(kind: str, seed: int, size: tuple[int, int]):
    """An image of class ``kind``: horizontal stripes (a) or vertical ones (anything else), with noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    period = int(rng.integers(4, 9))
    ys, xs = np.mgrid[0:h, 0:w]
    base = ((ys if kind == "a" else xs) // period) % 2 * 200
    return Image.fromarray(np.clip(base[..., None] + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8))


def make_photo_folder(root: Path, n: int = 12, classes=("a", "b")) -> Path:
    """JPEG and PNG files of different sizes, one in five greyscale: what a user's photo folder looks like."""
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = pattern(c, 1000 * classes.index(c) + i, (40 + 7 * i, 36 + 5 * (i % 4)))
            if i % 5 == 0:
                img = img.convert("L")
            img.save(root / c / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def docs_generator(name: str):
    """docs/<name>.py (a script, not a package module) loaded as a module: the docs site's page generators."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location(name, root / "docs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until ``path`` exists (a checkpoint a killed run must leave), while ``proc`` runs."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def kill_and_resume(recipe: str, args: list[str], tmp_path: Path, checkpoint: str) -> tuple[dict, dict, Path, Path]:
    """Run ``recipes/<recipe>`` to the end, then again in a subprocess SIGKILLed once ``checkpoint`` exists, resumed
    with --resume_from_checkpoint latest; returns both results.json and both run directories."""
    import json
    import os
    import signal

    reference, out = tmp_path / "reference", tmp_path / "run"
    assert run_recipe(recipe, [*args, "--output_dir", str(reference)]) == 0
    proc = subprocess.Popen([sys.executable, f"recipes/{recipe}", *args, "--output_dir", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wait_for(out / checkpoint, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (out / "results.json").exists()
    assert run_recipe(recipe, [*args, "--output_dir", str(out), "--resume_from_checkpoint", "latest"]) == 0
    a, b = (json.loads((d / "results.json").read_text()) for d in (reference, out))
    return a, b, reference, out


def splits(**columns):
    """The same rows as the train and the validation split."""
    from datasets import Dataset, DatasetDict

    ds = Dataset.from_dict(columns)
    return DatasetDict({"train": ds, "validation": ds})


def discovered(task_name: str, raw, max_seq_length: int = 128, **flags):
    """Task ``task_name`` with ``flags``, after discovering ``raw``."""
    from peftkit.config import DataArguments
    from peftkit.tasks import get_task

    task = get_task(task_name).build(DataArguments(max_seq_length=max_seq_length), **flags)
    task.discover(raw)
    return task
