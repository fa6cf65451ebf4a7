"""Run every strategy (and the stock Trainer reference) on the same data, epochs and seeds, each in a fresh
process, and collect what each run measured from its results.json."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from peftkit.config import FEWSHOT_DEFAULT

REPO = Path(__file__).resolve().parent.parent
QUICK = {"text_cls": {"max_train_samples": 64, "max_eval_samples": 32, "num_train_epochs": 1,
                      "per_device_train_batch_size": 16},
         "causal_lm": {"max_train_samples": 32, "max_eval_samples": 16, "max_generation_samples": 16,
                       "num_train_epochs": 1, "per_device_train_batch_size": 8},
         "token_cls": {"max_train_samples": 64, "max_eval_samples": 32, "num_train_epochs": 1,
                       "per_device_train_batch_size": 16},
         "image_cls": {"max_train_samples": 32, "max_eval_samples": 16, "num_train_epochs": 1,
                       "per_device_train_batch_size": 16, "augment": "flip"},
         "preference": {"max_train_samples": 32, "max_eval_samples": 16, "max_generation_samples": 16,
                        "num_train_epochs": 1, "per_device_train_batch_size": 8}}
# The recipes' defaults on the whole built-in data.
FULL = {"text_cls": {"num_train_epochs": 2, "per_device_train_batch_size": 32},
        "causal_lm": {"num_train_epochs": 1, "per_device_train_batch_size": 8},
        # What the recipe derives for the 1,891 built-in WNUT-16 sentences (21 tags), fixed so that the stock
        # reference trains the same epochs and batches.
        "token_cls": {"num_train_epochs": 6, "per_device_train_batch_size": 32},
        # What the image recipes train on the 1,000 built-in MNIST images: 3 epochs, batch 16 as derived, with the
        # flips of the classic recipe for every strategy and the stock reference alike.
        "image_cls": {"num_train_epochs": 3, "per_device_train_batch_size": 16, "augment": "flip"},
        "preference": {"num_train_epochs": 1, "per_device_train_batch_size": 8}}
STRATEGIES = {"text_cls": ["full", "head", "partial", "lora", "qlora"], "causal_lm": ["full", "lora", "qlora", "dora"],
              "token_cls": ["full", "head", "partial", "lora", "qlora", "dora"],
              # qlora: bitsandbytes quantizes linear layers only, and the built-in CNN has none outside its head
              "image_cls": ["full", "head", "partial", "lora", "dora"], "preference": ["full", "lora", "qlora"]}
# Each task's held-out score, in the columns the report calls accuracy and f1.
SCORES = {"text_cls": "test accuracy and macro F1",
          "causal_lm": "exact match and token F1 of greedy answers to the held-out (test) prompts",
          "token_cls": "test entity F1 (seqeval, micro) and word accuracy",
          "image_cls": "test accuracy and macro F1",
          "preference": "reward accuracy and preference accuracy (the chosen answer the more likely) on the test pairs"}


@dataclass
class BenchConfig:
    strategies: list[str]
    output_dir: Path
    quick: bool = False
    repeats: int = 1
    seed: int = 42
    num_processes: list[int] = field(default_factory=lambda: [1])  # several: a throughput scaling study
    reference: bool = True
    model_name_or_path: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    task: str = "text_cls"
    # Given (--train_sizes): a learning curve (test score against the number of training examples; None = all
    # of them), each size trained with peftkit's defaults, which derive batch size and epochs from the data.
    # Not given: the whole training split with the fixed settings of FULL/QUICK.
    train_sizes: list[int | None] | None = None
    # True: no fixed batch size and epochs even on the whole training set; peftkit derives them, as a user's
    # run with default flags would (what a curve does at every size).
    derived_defaults: bool = False
    resume: bool = False  # reuse the runs a stopped suite finished (same command, same output_dir)
    report_only: bool = False  # train nothing: report the finished runs, and list the missing ones
    # Given (--shots): a few-shot curve, each size K examples per class drawn by peftkit's --shots with the run's
    # seed, with the few-shot rows (FEWSHOT_ROWS) and, as references, SetFit and TF-IDF on the same examples.
    shots: list[int] | None = None
    # --resume / --report_only: the rows of the output folder's committed results, read as the suite starts
    committed: dict[tuple, dict[str, Any]] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.shots:
            self.train_sizes = list(self.shots)
        self.curve = self.train_sizes is not None
        self.train_sizes = self.train_sizes or [None]
        fixed = {} if self.curve or self.derived_defaults else (QUICK if self.quick else FULL)[self.task]
        if self.curve and self.quick:  # the smoke run's small validation and test sets, sizes as asked
            fixed = {k: v for k, v in QUICK[self.task].items() if k in ("max_eval_samples", "max_generation_samples")}
        self.settings = {**fixed, **self.settings}


# Few-shot rows that are a peftkit strategy with settings of their own: the few-shot default (what `peftkit train
# --shots K` trains when no --strategy is given).
FEWSHOT_ROWS = {"fewshot": (FEWSHOT_DEFAULT[0], {flag: str(on).lower() for flag, on in FEWSHOT_DEFAULT[1].items()})}
FEWSHOT_STRATEGIES = ["fewshot", "head", "lora", "full"]
FEWSHOT_REFERENCES = ["setfit", "tfidf"]
SET_HELP = ("training flags beyond the defaults for every peftkit run, e.g. --set group_by_length=false "
            "num_train_epochs=6 (use a separate --output_dir for each variant)")


def parse_set(ap, items: list[str]) -> dict[str, str]:
    """``--set FLAG=VALUE ...`` as settings (``ap.error`` on a malformed pair)."""
    if bad := [item for item in items if "=" not in item]:
        ap.error(f"--set takes FLAG=VALUE pairs, got {' '.join(bad)}")
    return dict(item.removeprefix("--").split("=", 1) for item in items)


def flags(settings: dict[str, Any]) -> list[str]:
    return [part for key, value in settings.items() for part in (f"--{key}", str(value))]


def launcher(cfg: BenchConfig, num_processes: int) -> list[str]:
    """A fresh Python process per run (so its peak memory is its own), through Accelerate when N > 1."""
    entry = str(REPO / "peftkit" / "__main__.py")
    if num_processes == 1:
        return [sys.executable, entry]
    # `accelerate launch --cpu --num_processes N` starts one process; a config file with MULTI_GPU and
    # use_cpu starts N real ones over gloo (see OFFLINE_ASSETS.md). On GPUs the same file runs DDP.
    config = cfg.output_dir / f"accelerate_config_{num_processes}.yaml"
    config.write_text(f"compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_machines: 1\n"
                      f"machine_rank: 0\nnum_processes: {num_processes}\nmixed_precision: 'no'\n"
                      f"use_cpu: {str(not _has_cuda()).lower()}\n")
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), entry]


def thread_env(num_processes: int) -> dict[str, str]:
    """On CPU, share the cores among the processes (torchrun would give each one thread), so that a scaling
    study compares the same machine used N ways rather than N starved processes."""
    if num_processes == 1 or _has_cuda() or "OMP_NUM_THREADS" in os.environ:
        return {}
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // num_processes))}


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run_command(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> tuple[int, float]:
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO,
                              env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})})
    return proc.returncode, time.perf_counter() - start


def last_error(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["(no output)"])[-1][-300:]


def artifact_bytes(run_dir: Path) -> int:
    return sum(p.stat().st_size for p in run_dir.glob("*.safetensors"))


def size_name(size: int | None) -> str:
    return "all" if size is None else str(size)


def run_dir_for(cfg: BenchConfig, strategy: str, seed: int, num_processes: int = 1,
                train_size: int | None = None) -> Path:
    suffix = f"-np{num_processes}" if len(cfg.num_processes) > 1 else ""
    size = f"-n{size_name(train_size)}" if cfg.curve else ""
    return cfg.output_dir / "runs" / f"{strategy}{size}-seed{seed}{suffix}"


def train_strategy(cfg: BenchConfig, strategy: str, seed: int, num_processes: int = 1,
                   train_size: int | None = None) -> dict[str, Any]:
    run_dir = run_dir_for(cfg, strategy, seed, num_processes, train_size)
    if cfg.resume and (done := finished_row(cfg, strategy, seed, num_processes, train_size)):
        return done
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    model = ["--model_name_or_path", cfg.model_name_or_path] if cfg.model_name_or_path else []
    size = {("shots" if cfg.shots else "max_train_samples"): train_size} if train_size else {}
    trained, own = FEWSHOT_ROWS.get(strategy, (strategy, {}))
    settings = cfg.settings | size | own
    cmd = [*launcher(cfg, num_processes), "train", "--task", cfg.task, "--strategy", trained, "--output_dir",
           str(run_dir), "--seed", str(seed), "--report_to", "none", *model, *flags(settings)]
    code, wall = run_command(cmd, run_dir / "train.log", thread_env(num_processes))
    row: dict[str, Any] = {"strategy": strategy, "seed": seed, "num_processes": num_processes, "command": cmd,
                           "wall_s": round(wall, 2)} | ({"train_size": size_name(train_size)} if cfg.curve else {})
    if code != 0 or not (run_dir / "results.json").is_file():
        return row | {"status": "failed", "error": last_error(run_dir / "train.log")}
    res = json.loads((run_dir / "results.json").read_text())
    stage = res.get("contrastive") or {}  # --contrastive's pair stage trains before the loop's own time
    row |= {"status": "ok", **scores(cfg.task, res), "peak_memory_bytes": res["peak_memory_bytes"],
            "train_runtime_s": round(res["train_runtime_s"] + stage.get("train_runtime_s", 0.0), 3),
            "peak_memory_reserved_bytes": res.get("peak_memory_reserved_bytes"),
            "loaded_memory_bytes": res.get("loaded_memory_bytes"),
            "real_token_share": res.get("train_real_token_share"),
            "time_breakdown_s": res.get("time_breakdown_s"), "host_memory_trims": res.get("host_memory_trims"),
            "samples_per_s": res["train_samples_per_s"], "tokens_per_s": res.get("train_tokens_per_s"),
            "step_time_median_s": res.get("step_time_median_s"), "trainable_params": res["trainable_params"],
            "trainable_params_without_head": res.get("trainable_params_without_head"),
            "artifact_bytes": artifact_bytes(run_dir), "num_processes": res["num_processes"],
            "train_examples": res["num_examples"]["train"], "batch_size": res.get("per_device_train_batch_size"),
            "epochs": res.get("num_train_epochs"), "global_step": res.get("global_step"),
            "learning_rate": res.get("learning_rate"),
            "derived": {k: v["value"] for k, v in res.get("derived", {}).items()}, "git_commit": git_commit()}
    row = merge_row(run_dir, row)
    (run_dir / ROW_FILE).write_text(json.dumps(row, indent=2))  # the run is finished: --resume reuses it
    return row


ROW_FILE = "bench_row.json"


def finished_row(cfg: BenchConfig, strategy: str, seed: int, num_processes: int = 1,
                 train_size: int | None = None) -> dict[str, Any] | None:
    """A successful run's row, as a stopped suite wrote it; it says which peftkit commit made it. Where the run
    directory is gone (runs/ is not committed: a fresh clone), the row for that run in the output folder's
    committed results (cfg.committed)."""
    run_dir = run_dir_for(cfg, strategy, seed, num_processes, train_size)
    path = run_dir / ROW_FILE
    if path.is_file():
        row = json.loads(path.read_text())
    elif not (row := cfg.committed.get((strategy, seed, num_processes, size_name(train_size) if cfg.curve
                                        else None))):
        return None
    print(f"  reusing {run_dir.name} (finished earlier, {(row.get('git_commit') or '?')[:10]})", flush=True)
    return row | {"reused": True}


# What a reused row must share with the suite that reuses it (the rest, seeds and sizes, are the row's own key).
SAME_CONFIG = ("task", "quick", "shots", "settings", "model_name_or_path", "dataset")


def committed_rows(cfg: BenchConfig) -> dict[tuple, dict[str, Any]]:
    """The successful rows of the results files in the output folder (results.json, then the results.partial.json
    of a stopped suite, the newer), by (strategy, seed, processes, size); a file made with another configuration
    (SAME_CONFIG) is left out, and said so."""
    rows: dict[tuple, dict[str, Any]] = {}
    want = {k: v for k, v in suite_config(cfg).items() if k in SAME_CONFIG}
    for name in ("results.json", "results.partial.json"):
        path = cfg.output_dir / name
        if not path.is_file():
            continue
        results = json.loads(path.read_text())
        made = {k: v for k, v in results.get("config", want).items() if k in SAME_CONFIG}
        if made != want:
            differ = ", ".join(f"{k} {made.get(k)!r} (now {want[k]!r})" for k in want if made.get(k) != want[k])
            print(f"  not reusing the rows of {path}: made with another configuration: {differ}", flush=True)
            continue
        for row in results.get("runs", []):
            if row.get("status") == "ok":
                key = (row["strategy"], row["seed"], row.get("num_processes", 1), row.get("train_size"))
                rows[key] = {k: v for k, v in row.items() if k != "reused"}
    return rows


def git_commit(short: bool = False) -> str | None:
    proc = subprocess.run(["git", "rev-parse", *(["--short"] if short else []), "HEAD"], cwd=REPO,
                          capture_output=True, text=True)
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def stamp() -> dict[str, Any]:
    """When and at which commit a results.json was made: the header of its page on the docs site."""
    return {"date": datetime.now(timezone.utc).date().isoformat(), "commit": git_commit(short=True)}


def merge_row(run_dir: Path, row: dict[str, Any]) -> dict[str, Any]:
    """Merge an adapter run (timed, then removed: the suite keeps numbers, not merged copies)."""
    if (run_dir / "adapter_config.json").is_file():
        merged = run_dir / "merged"
        code, wall = run_command([sys.executable, "-m", "peftkit", "merge", str(run_dir), "--output_dir",
                                  str(merged), "--parity_samples", "64"], run_dir / "merge.log")
        row["merge_time_s"] = round(wall, 2) if code == 0 else None
        row["merged_bytes"] = artifact_bytes(merged) if code == 0 else None
        shutil.rmtree(merged, ignore_errors=True)
    return row


def scores(task: str, res: dict[str, Any]) -> dict[str, Any]:
    """A run's held-out scores under the report's names (see SCORES)."""
    if task in ("text_cls", "image_cls"):
        return {"accuracy": res["test"]["accuracy"], "f1": res["test"]["f1"]}
    if task == "token_cls":  # the headline score is entity F1: the column the report compares against full
        return {"accuracy": res["test"]["f1"], "f1": res["test"]["accuracy"]}
    final = res["final_evaluation"]
    if task == "preference":
        return {"accuracy": res["test"]["reward_accuracy"], "f1": res["test"]["preference_accuracy"],
                "base_accuracy": final["base"]["preference_accuracy"], "eval_loss": res["eval"]["loss"],
                "reward_margin": res["test"]["reward_margin"]}
    return {"accuracy": final["fine_tuned"]["exact_match"], "f1": final["fine_tuned"]["token_f1"],
            "base_accuracy": final["base"]["exact_match"], "eval_loss": res["eval"]["loss"]}


def export_data(cfg: BenchConfig, seed: int) -> Path:
    """The exact splits peftkit trains on, for the reference script (which must not use peftkit): CSV of
    text,label for text_cls; JSONL of conversational prompt/completion for causal_lm; JSONL of tokens and tag
    names, and labels.json (the tag names in id order), for token_cls; JSONL of the pairs for preference."""
    from peftkit.config import DataArguments
    from peftkit.data import load_raw_datasets
    from peftkit.tasks import get_task

    keys = ("max_train_samples", "max_eval_samples", "dataset_name")
    task = get_task(cfg.task).cls
    raw, _, _ = load_raw_datasets(DataArguments(**{k: cfg.settings[k] for k in keys if k in cfg.settings}), seed,
                               builtin=task.builtin_dataset, others=task.builtin_datasets)
    out = cfg.output_dir / "data" / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    for split, ds in raw.items():
        if cfg.task == "text_cls":
            ds.select_columns(["text", "label"]).to_csv(str(out / f"{split}.csv"), index=False)
        elif cfg.task == "image_cls":  # an image folder per split, as a user's photos would be
            from peftkit.tasks.image_data import open_image

            names = ds.features["label"].names
            for i, (image, label) in enumerate(zip(ds["image"], ds["label"], strict=True)):
                (out / split / names[label]).mkdir(parents=True, exist_ok=True)
                open_image(image).save(out / split / names[label] / f"{i}.png")
        elif cfg.task == "token_cls":
            names = ds.features["ner_tags"].feature.names
            rows = [{"tokens": words, "ner_tags": [names[t] for t in tags]}
                    for words, tags in zip(ds["tokens"], ds["ner_tags"], strict=True)]
            (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            (out / "labels.json").write_text(json.dumps(names))
        elif cfg.task == "preference":
            (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ds.to_list()))
        else:
            rows = [{"prompt": turns[:-1], "completion": turns[-1:]} for turns in ds["messages"]]
            (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


# Rows trained without peftkit, beside its LoRA: the stock route a user takes without it (transformers Trainer +
# peft; TRL's SFTTrainer for causal_lm), and for text_cls a bare torch loop on peftkit's own batches (the floor
# that measures the engine's overhead). Each script takes the flags of reference_common.parser.
SCRIPTS = {("reference", "text_cls"): "reference_trainer.py", ("reference", "causal_lm"): "reference_sft.py",
           ("reference", "token_cls"): "reference_ner.py", ("bare_loop", "text_cls"): "bare_loop.py",
           ("reference", "image_cls"): "reference_image.py", ("reference", "preference"): "reference_dpo.py"}
SCRIPT_FLAGS = ("learning_rate", "num_train_epochs", "per_device_train_batch_size", "per_device_eval_batch_size",
                "max_seq_length", "max_generation_samples", "generation_max_new_tokens", "beta")


def train_reference(cfg: BenchConfig, seed: int, name: str = "reference") -> dict[str, Any]:
    from peftkit.config import TrainingArguments
    from peftkit.modeling import resolve_model_path
    from peftkit.strategies import get_strategy
    from peftkit.tasks import get_task

    run_dir = cfg.output_dir / "runs" / f"{name}-seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    row: dict[str, Any] = {"strategy": name, "seed": seed, "num_processes": 1}
    try:
        data_dir = export_data(cfg, seed)
    except Exception:  # noqa: BLE001 - reported as a failed row, the suite goes on
        return row | {"status": "failed", "error": traceback.format_exc().splitlines()[-1]}
    settings = {k: v for k, v in cfg.settings.items() if k in SCRIPT_FLAGS}
    settings.setdefault("learning_rate", get_task(cfg.task).cls.defaults.learning_rates.get("lora")
                        or get_strategy("lora").cls.default_learning_rate)
    if name == "bare_loop":  # peftkit's batches, whichever way the suite's peftkit runs make them
        grouped = cfg.settings.get("group_by_length", TrainingArguments.group_by_length)
        settings["group_by_length"] = str(grouped).lower()
    script = SCRIPTS[name, cfg.task]
    model_path = resolve_model_path(cfg.model_name_or_path or default_model(cfg.task))
    extra: list[str] = []
    if cfg.task == "image_cls":  # the same augmentation, and the layers peftkit's lora adapts (peft has no default)
        extra = ["--augment", str(cfg.settings.get("augment", "none")), "--target_modules",
                 *image_lora_targets(model_path)]
    cmd = [sys.executable, str(REPO / "benchmarks" / script), "--data_dir", str(data_dir),
           "--output_dir", str(run_dir), "--model_name_or_path", model_path, "--seed", str(seed),
           *flags(settings), *extra]
    code, wall = run_command(cmd, run_dir / "train.log")
    row |= {"command": cmd, "wall_s": round(wall, 2)}
    if code != 0:
        return row | {"status": "failed", "error": last_error(run_dir / "train.log")}
    res = json.loads((run_dir / "results.json").read_text())
    for checkpoint in run_dir.glob("checkpoint-*"):
        shutil.rmtree(checkpoint, ignore_errors=True)
    if cfg.task in ("text_cls", "token_cls", "image_cls"):
        held_out = scores(cfg.task, res)
    elif cfg.task == "preference":  # TRL's own evaluation of the test pairs
        held_out = {"accuracy": res["test"]["reward_accuracy"], "reward_margin": res["test"]["reward_margin"],
                    "eval_loss": res["eval"]["loss"]}
    else:  # scored by the same code as peftkit's runs
        from peftkit.tasks.generation import score

        rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
        held_out = {"accuracy": score(rows)["exact_match"], "f1": score(rows)["token_f1"],
                    "eval_loss": res["eval"]["loss"]}
    return row | {"status": "ok", **held_out,
                  "peak_memory_bytes": res["peak_memory_bytes"], "train_runtime_s": res["train_runtime_s"],
                  "samples_per_s": res["train_samples_per_s"], "tokens_per_s": res["train_tokens_per_s"],
                  "step_time_median_s": res["step_time_median_s"], "trainable_params": res["trainable_params"],
                  "loaded_memory_bytes": res.get("loaded_memory_bytes"),
                  "artifact_bytes": artifact_bytes(run_dir), "num_processes": 1}


def train_fewshot_reference(cfg: BenchConfig, method: str, seed: int, shots: int) -> dict[str, Any]:
    """SetFit or TF-IDF + logistic regression (benchmarks/reference_fewshot.py) on the examples peftkit's --shots
    draws with ``seed``, scored on the same test split."""
    from peftkit.config import DataArguments
    from peftkit.data import load_raw_datasets
    from peftkit.modeling import resolve_model_path

    run_dir = run_dir_for(cfg, method, seed, 1, shots)
    if cfg.resume and (done := finished_row(cfg, method, seed, 1, shots)):
        return done
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    row: dict[str, Any] = {"strategy": method, "seed": seed, "num_processes": 1, "train_size": size_name(shots)}
    from peftkit.tasks import get_task

    task = get_task(cfg.task).cls
    keys = {k: int(cfg.settings[k]) for k in ("max_eval_samples",) if k in cfg.settings}
    keys |= {k: cfg.settings[k] for k in ("dataset_name",) if k in cfg.settings}
    raw, _, _ = load_raw_datasets(DataArguments(**keys, shots=shots), seed, builtin=task.builtin_dataset,
                                  others=task.builtin_datasets, per_class=True)
    train = raw["train"]
    data_dir = cfg.output_dir / "data" / f"shots{shots}-seed{seed}"
    data_dir.mkdir(parents=True, exist_ok=True)
    train.select_columns(["text", "label"]).to_csv(str(data_dir / "train.csv"), index=False)
    raw["test"].select_columns(["text", "label"]).to_csv(str(data_dir / "test.csv"), index=False)
    model_path = resolve_model_path(cfg.model_name_or_path or default_model(cfg.task))
    cmd = [sys.executable, str(REPO / "benchmarks" / "reference_fewshot.py"), "--method", method, "--data_dir",
           str(data_dir), "--output_dir", str(run_dir), "--model_name_or_path", model_path, "--seed", str(seed)]
    code, wall = run_command(cmd, run_dir / "train.log")
    row |= {"command": cmd, "wall_s": round(wall, 2)}
    if code != 0:
        return row | {"status": "failed", "error": last_error(run_dir / "train.log")}
    res = json.loads((run_dir / "results.json").read_text())
    row |= {"status": "ok", **scores(cfg.task, res), "peak_memory_bytes": res["peak_memory_bytes"],
            "train_runtime_s": res["train_runtime_s"], "train_examples": res["num_examples"]["train"],
            "samples_per_s": None, "trainable_params": None, "git_commit": git_commit()}
    (run_dir / ROW_FILE).write_text(json.dumps(row, indent=2))
    return row


def image_lora_targets(model_path: str) -> list[str]:
    """The layers peftkit's lora adapts on this vision model, found on an empty (meta-device) copy of it."""
    import torch
    from transformers import AutoConfig, AutoModelForImageClassification

    from peftkit.tasks.image_cls import ImageClassification

    task = ImageClassification()
    with torch.device("meta"):
        model = AutoModelForImageClassification.from_config(AutoConfig.from_pretrained(model_path, num_labels=2))
    return task.lora_targets(model, task.new_modules(model)) or ["query", "value"]


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu_count": os.cpu_count(), "processor": platform.processor()}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def run_suite(cfg: BenchConfig, command: list[str]) -> dict[str, Any]:
    """Every (strategy, seed) run, with a progress line each; failures are recorded and the suite goes on."""
    from peftkit.runner import versions

    # Sizes from the smallest (quick to show a problem), seeds inside, so a stopped suite has whole sizes.
    jobs = [(s, cfg.seed + i, p, n) for n in cfg.train_sizes for p in cfg.num_processes for i in range(cfg.repeats)
            for s in cfg.strategies]
    if cfg.reference and not cfg.curve:  # the scripts without peftkit run in one process
        jobs += [(name, cfg.seed + i, 1, None) for i in range(cfg.repeats) for name, task in SCRIPTS
                 if task == cfg.task]
    if cfg.shots:  # one process; each size's references beside its peftkit rows, on the same draws
        rows_of = [*cfg.strategies, *(FEWSHOT_REFERENCES if cfg.reference else [])]
        jobs = [(s, cfg.seed + i, 1, n) for n in cfg.train_sizes for i in range(cfg.repeats) for s in rows_of]
    rows: list[dict[str, Any]] = []
    missing: list[str] = []
    if cfg.resume or cfg.report_only:  # before the first run rewrites results.partial.json
        cfg.committed = committed_rows(cfg)
    if cfg.report_only:
        for strategy, seed, procs, size in jobs:
            row = None if (strategy, cfg.task) in SCRIPTS else finished_row(cfg, strategy, seed, procs, size)
            if row:
                rows.append(row)
            else:
                missing.append(f"{strategy} seed {seed}" + (f" at {size_name(size)}" if cfg.curve else ""))
        if not rows:  # nothing to report: the results already there are kept, not overwritten by an empty table
            raise SystemExit(f"--report_only: none of the {len(jobs)} runs asked for is finished in {cfg.output_dir} "
                             "(run directories, or committed rows made with the same configuration); nothing "
                             "written. Pass the flags the suite ran with.")
        jobs = []
    partial = cfg.output_dir / "results.partial.json"  # every finished run, should the suite be stopped
    for n, (strategy, seed, procs, size) in enumerate(jobs, 1):
        at = f", {size_name(size)} training examples" if cfg.curve else ""
        print(f"[{n}/{len(jobs)}] {strategy} (seed {seed}, {procs} process(es){at}) ...", flush=True)
        if cfg.shots and strategy in FEWSHOT_REFERENCES:
            row = train_fewshot_reference(cfg, strategy, seed, size)
        elif (strategy, cfg.task) in SCRIPTS:
            row = train_reference(cfg, seed, strategy)
        else:
            row = train_strategy(cfg, strategy, seed, procs, size)
        rows.append(row)
        if row["status"] == "ok":
            print(f"[{n}/{len(jobs)}] {strategy}: accuracy {row['accuracy']:.4f}, {row['train_runtime_s']:.1f} s, "
                  f"peak {row['peak_memory_bytes'] / 2**20:.0f} MiB", flush=True)
        else:
            print(f"[{n}/{len(jobs)}] {strategy}: FAILED: {row['error']}", flush=True)
        partial.write_text(json.dumps({"runs": rows, "jobs_left": len(jobs) - n, "config": suite_config(cfg)},
                                      indent=2))
    if jobs:
        partial.unlink(missing_ok=True)
    return {"runs": rows, "missing": missing, **stamp(), "hardware": hardware(), "versions": versions(),
            "command": command, "config": suite_config(cfg)}


def suite_config(cfg: BenchConfig) -> dict[str, Any]:
    return {"task": cfg.task, "strategies": cfg.strategies, "quick": cfg.quick, "repeats": cfg.repeats,
            "train_sizes": [size_name(n) for n in cfg.train_sizes] if cfg.curve else None,
            "shots": bool(cfg.shots),
            "resumed": cfg.resume,
            "seed": cfg.seed, "num_processes": cfg.num_processes, "settings": cfg.settings,
            "model_name_or_path": cfg.model_name_or_path or default_model(cfg.task),
            "dataset": cfg.settings.get("dataset_name") or dataset_name(cfg.task),
            "score": SCORES[cfg.task]}


def dataset_name(task: str) -> str:
    from peftkit.data import BUILTIN_DATASET
    from peftkit.tasks import get_task

    name = getattr(get_task(task).cls.builtin_dataset, "dataset_name", BUILTIN_DATASET)
    return name + {"causal_lm": " (as questions)", "preference": " (as preference pairs)"}.get(task, "")


def default_model(task: str) -> str:
    from peftkit.config import BUILTIN_LM, BUILTIN_MODEL, BUILTIN_VISION_MODEL

    return {"causal_lm": BUILTIN_LM, "preference": BUILTIN_LM, "image_cls": BUILTIN_VISION_MODEL}.get(task,
                                                                                                   BUILTIN_MODEL)
