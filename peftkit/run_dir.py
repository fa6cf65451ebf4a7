"""Putting a trained run to work: load it, evaluate it on data, label new texts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from datasets import DatasetDict
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from peftkit.config import DataArguments, ModelArguments
from peftkit.console import quiet_known_noise, transformers_errors_only
from peftkit.data import load_file, load_raw_datasets
from peftkit.engine import evaluate
from peftkit.errors import PeftkitError, check
from peftkit.identity import fingerprint
from peftkit.modeling import load_model, resolve_model_path
from peftkit.runner import CONFIG_FILE
from peftkit.strategies import get_strategy
from peftkit.tasks import get_task


def read_config(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG_FILE
    check(path.is_file(), f"{str(run_dir)!r} is not a peftkit run directory (no {CONFIG_FILE}). Pass the "
          "--output_dir of a finished `peftkit train` run.")
    return json.loads(path.read_text())


def check_base(run_dir: Path, cfg: dict[str, Any], name_or_path: str) -> None:
    """An adapter only means something on the weights it was trained on: compare recorded fingerprints."""
    recorded = (cfg.get("base") or {}).get("fingerprint")
    if recorded is None:  # runs from before fingerprints were recorded
        return
    current = fingerprint(resolve_model_path(name_or_path))
    check(current is None or current == recorded,
          f"The adapter in {str(run_dir)!r} was trained on a base with fingerprint {recorded[:12]}, but "
          f"{name_or_path!r} now holds different weights ({current and current[:12]}): an adapter from another base "
          "gives wrong outputs. Restore that base model, or retrain on this one.")


def load_run(run_dir: str | Path):
    """``(model, tokenizer, config)`` of a run: a plain model, or the base with its adapter and head."""
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    quiet_known_noise()
    task = get_task(cfg["task"])(DataArguments(**cfg["data"]))
    weights = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")
    check(any((run_dir / name).is_file() for name in weights),
          f"{str(run_dir)!r} holds no safetensors weights ({', '.join(weights)}). peftkit reads weights only from "
          "safetensors, never from pickle files (.bin, .pt), which can run code when loaded.")
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    if (run_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        strategy = get_strategy(cfg["strategy"]).build(**cfg["strategy_args"])
        model_args = ModelArguments(**cfg["model"])
        check_base(run_dir, cfg, model_args.model_name_or_path)
        with transformers_errors_only():  # the base's head is reported as new; the run's own is loaded next
            base, _ = load_model(task, strategy, model_args, cfg["labels"], tokenizer)
        try:
            model = PeftModel.from_pretrained(base, run_dir)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise PeftkitError(f"The adapter in {str(run_dir)!r} does not fit the base model "
                               f"{model_args.model_name_or_path!r}: {str(exc).splitlines()[0][:200]}. It was trained "
                               "on another base; load it with that one.") from exc
    else:
        model = task.auto_class.from_pretrained(run_dir, use_safetensors=True)
    model.eval()
    return model, tokenizer, cfg


def evaluate_run(run_dir: str | Path, data_overrides: dict[str, Any], split: str,
                 eval_file: str | None) -> dict[str, float]:
    """Metrics of a trained run on ``eval_file``, or on ``split`` of its data (with overrides)."""
    model, tokenizer, cfg = load_run(run_dir)
    data_args = DataArguments(**(cfg["data"] | data_overrides))
    task = get_task(cfg["task"])(data_args)
    if eval_file:
        raw = DatasetDict({split: load_file(eval_file)})
    else:
        raw, _ = load_raw_datasets(data_args, cfg["training"]["seed"])
        check(split in raw, f"The run's data has no {split!r} split (splits: {sorted(raw)}).")
        raw = DatasetDict({split: raw[split]})
    label2id = {label: i for i, label in enumerate(cfg["labels"])}
    task.check_known_labels(raw, set(label2id))
    data = task.preprocess(raw, tokenizer, label2id)
    acc = Accelerator()
    loader = DataLoader(data[split], batch_size=64, collate_fn=task.collator(tokenizer))
    model, loader = acc.prepare(model, loader)
    return evaluate(acc, task, model, loader)


def predict_texts(run_dir: str | Path, texts: list[str], pairs: list[str] | None = None,
                  batch_size: int = 64) -> list[dict[str, Any]]:
    """Label ``texts`` (and, for a sentence-pair run, their second texts ``pairs``) with a trained run;
    probabilities included. Labels come back with the type training saw (integers stay integers)."""
    check(bool(texts), "No texts to label: the input was empty.")
    pair_column = read_config(run_dir)["data"].get("text_pair_column")
    check(pairs is None or pair_column, "This run classifies single texts (trained without --text_pair_column): "
          "it cannot label pairs. Pass the texts alone.")
    check(pairs is not None or not pair_column, f"This run classifies sentence pairs (--text_pair_column "
          f"{pair_column!r}): pass the second text of each pair too; a text alone would be scored wrongly.")
    check(pairs is None or len(pairs) == len(texts), f"{len(texts)} texts but {len(pairs or [])} second texts.")
    model, tokenizer, cfg = load_run(run_dir)
    task = get_task(cfg["task"])(DataArguments(**cfg["data"]))
    as_int = cfg.get("label_type") == "int"
    id2label = {i: int(label) if as_int else label for i, label in enumerate(cfg["labels"])}
    device = next(p.device for p in model.parameters())
    out: list[dict[str, Any]] = []
    for i in range(0, len(texts), batch_size):
        chunk, pair_chunk = texts[i:i + batch_size], pairs[i:i + batch_size] if pairs else None
        enc = task.encode(tokenizer, chunk, pair_chunk, padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc.to(device)).logits
        out.extend(task.predictions(logits.cpu(), id2label))
    for i, (text, row) in enumerate(zip(texts, out, strict=True)):
        row["text"] = text
        if pairs is not None:
            row["text_pair"] = pairs[i]
    return out
