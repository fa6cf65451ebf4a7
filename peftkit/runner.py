"""One training run, top to bottom: data, model, strategy, engine, artefact, results.json."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import os
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed

from peftkit import __version__, checkpoint, locks, model_card
from peftkit.assets import sha256_of
from peftkit.config import (
    MIN_STEPS,
    DataArguments,
    ModelArguments,
    TrainingArguments,
    derive_defaults,
    too_few_steps,
    validate,
)
from peftkit.data import load_raw_datasets
from peftkit.distributed import on_main, save_model
from peftkit.engine import Engine
from peftkit.errors import PeftkitError, check, is_write_failure, write_failure
from peftkit.identity import fingerprint
from peftkit.memory import HOST, peak_memory_bytes, resident_bytes
from peftkit.modeling import (
    check_trainable_dtype,
    count_parameters,
    disable_dropout,
    load_config,
    load_model,
    resolve_model_path,
)
from peftkit.search import trial as search_trial
from peftkit.tasks import get_task, task_fields
from peftkit.tasks import prepare_model as prepare_task_model
from peftkit.train_state import BEST_FILE, atomic_write_text

logger = logging.getLogger(__name__)
CONFIG_FILE = "peftkit_config.json"
RESULTS_FILE = "results.json"
VERSIONED = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "datasets", "evaluate")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"peftkit": __version__}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def make_accelerator(args: TrainingArguments, output_dir: Path) -> Accelerator:
    log_with = args.report_to
    if log_with == "auto":
        try:
            import tensorboard  # noqa: F401

            log_with = "tensorboard"
        except ImportError:
            log_with = "none"
    # Several processes on a machine without CUDA (torchrun, or `accelerate launch` with a MULTI_GPU +
    # use_cpu config) must be told they are CPU processes, or each runs alone as if it were the only one.
    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    mixed_precision = resolve_mixed_precision(args.mixed_precision)
    try:
        acc = Accelerator(
            cpu=multi_cpu,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            mixed_precision=mixed_precision,
            log_with=None if log_with == "none" else log_with,
            # Trackers write to logging_dir's parent / its name (see init_trackers below).
            project_config=ProjectConfiguration(project_dir=str(output_dir),
                                                logging_dir=str(logging_dir(args, output_dir).parent)),
        )
    except ValueError as exc:  # e.g. fp8 without its kernels, or a precision this device lacks
        raise PeftkitError(f"Accelerate cannot set up this run: {str(exc).splitlines()[0][:300]} Check "
                           "--mixed_precision (no, fp16, bf16, fp8, auto) and your `accelerate config`.") from exc
    if acc.device.type == "cpu" and acc.mixed_precision == "bf16":
        warn_slow_cpu_bf16(cpu_bf16_instructions())
    return acc


def cpu_bf16_instructions() -> str | None:
    """How this CPU computes bf16: "amx" (matrix tiles), "avx512_bf16" (vector dot products), or None (PyTorch
    emulates it)."""
    try:
        if torch.cpu._is_amx_tile_supported():
            return "amx"
        return "avx512_bf16" if torch.cpu._is_avx512_bf16_supported() else None
    except (AttributeError, RuntimeError):
        return None


def warn_slow_cpu_bf16(instructions: str | None) -> None:
    """bf16 autocast on a CPU is slower than float32 unless the CPU has AMX (measured: README, bf16 on a CPU)."""
    if instructions is None:
        logger.warning("bf16 on a CPU without bf16 instructions (avx512_bf16 or AMX): PyTorch emulates it, and one "
                       "MiniLM training step took about 20x as long as in float32 on such a CPU. Use "
                       "--mixed_precision no (or auto, which keeps float32 on a CPU).")
    elif instructions == "avx512_bf16":
        logger.warning("bf16 on a CPU with avx512_bf16 but no AMX: measured slower than float32 here (a MiniLM "
                       "training step 1.5x as long for full fine-tuning, 2.2x for LoRA: autocast re-casts every "
                       "weight each step). Use --mixed_precision no unless you need bf16's memory savings.")


def resolve_mixed_precision(requested: str | None) -> str | None:
    """``auto``: bf16 on a CUDA GPU that has it, fp16 on an older CUDA GPU, float32 on a CPU (bf16 autocast was
    measured slower than float32 on CPUs with avx512_bf16 and emulated on those without; CPUs with AMX are not
    measured yet, so bf16 there stays a choice: --mixed_precision bf16). Anything else is passed to Accelerate
    as given (None: what `accelerate config` or `accelerate launch --mixed_precision` chose)."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true"):
        chosen = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    else:
        chosen = "no"
    logger.info("--mixed_precision auto: %s on this machine.", chosen)
    return chosen


def logging_dir(args: TrainingArguments, output_dir: Path) -> Path:
    return Path(args.logging_dir) if args.logging_dir else output_dir / "logs"


def use_idle_cores(acc: Accelerator) -> None:
    """`accelerate launch` sets OMP_NUM_THREADS=1 in its child unless given --num_cpu_threads_per_process: right
    for N processes sharing a machine, but a lone CPU process then leaves every other core idle. Give it them
    back (PEFTKIT_CPU_THREADS sets the number; an OMP_NUM_THREADS other than 1 is respected)."""
    if acc.device.type != "cpu" or acc.num_processes != 1:
        return
    wanted = os.environ.get("PEFTKIT_CPU_THREADS") or None
    launched_by_accelerate = "ACCELERATE_DYNAMO_BACKEND" in os.environ and os.environ.get("OMP_NUM_THREADS") == "1"
    if wanted is None and not launched_by_accelerate:
        return
    check(wanted is None or (wanted.isdigit() and int(wanted) > 0),
          f"PEFTKIT_CPU_THREADS must be a positive integer, got {wanted!r}.")
    threads = int(wanted) if wanted else len(os.sched_getaffinity(0))
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
        logger.info("Using %d CPU threads (accelerate launch set OMP_NUM_THREADS=1; set PEFTKIT_CPU_THREADS to "
                    "choose).", threads)


def resolved_config(task: Any, strategy_name: str, strategy: Any, model_args, data_args, train_args,
                    lr: float) -> dict[str, Any]:
    training = dataclasses.asdict(train_args) | {"learning_rate": lr}
    base_path = resolve_model_path(model_args.model_name_or_path)
    return {"task": task.name, "task_args": task_fields(task), "strategy": strategy_name,
            "strategy_args": dataclasses.asdict(strategy),
            "model": dataclasses.asdict(model_args), "data": dataclasses.asdict(data_args),
            "training": training, "peftkit_version": __version__,
            # What the adapter or model was trained from: merging onto another base is refused.
            "base": {"model_name_or_path": model_args.model_name_or_path, "resolved_path": base_path,
                     "fingerprint": fingerprint(base_path)}}


# Settings that may differ between an interrupted run and its resumption: they change neither the data,
# the model nor the updates.
RESUMABLE_CHANGES = {"resume_from_checkpoint", "overwrite_output_dir", "debug", "report_to", "logging_steps",
                     "save_steps", "save_total_limit", "per_device_eval_batch_size", "on_nonfinite", "output_dir",
                     "keep_checkpoints", "logging_dir", "dataloader_num_workers", "use_test_split"}
BASELINE_FILE = "baseline.json"  # the untrained model's final evaluation, kept for a resumed run
PEFTKIT_FILES = (CONFIG_FILE, RESULTS_FILE, BEST_FILE, BASELINE_FILE, "adapter_config.json",
                 "adapter_model.safetensors", "model.safetensors", "config.json", "predictions.jsonl")


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every setting that differs, except those a resumption may change."""
    changes = []
    for section in ("task", "task_args", "strategy", "strategy_args", "model", "data", "training"):
        a, b = old.get(section), new.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                if key not in RESUMABLE_CHANGES and a.get(key) != b.get(key):
                    changes.append(f"{key}: {a.get(key)!r} -> {b.get(key)!r}")
        elif a != b:
            changes.append(f"{section}: {a!r} -> {b!r}")
    if old.get("base", {}).get("fingerprint") != new["base"]["fingerprint"]:
        changes.append("the base model's weights differ from the ones the run started from")
    return changes


MANIFEST_FILE = "peftkit_manifest.json"  # the files a finished run wrote, with their sizes and sha256
REPLACED_DIR = ".peftkit_replaced"  # --overwrite_output_dir: the previous run, until the new one is saved
# What runs from before the manifest wrote (a run directory of theirs has peftkit_config.json): peftkit's own
# files, the tokenizer's and processor's files that save_pretrained writes, the model card, logs and analyses.
LEGACY_OWNED = re.compile(r"(peftkit_.*|results\.json|best_trainable\.safetensors|baseline\.json|adapter_.*|"
                          r"model(-\d+-of-\d+)?\.safetensors(\.index\.json)?|config\.json|generation_config\.json|"
                          r"predictions\.jsonl|README\.md|tokenizer.*|special_tokens_map\.json|added_tokens\.json|"
                          r"vocab.*|merges\.txt|spiece\.model|sentencepiece.*|chat_template.*|"
                          r"preprocessor_config\.json|image_processor.*|merge_report\.json|logs|analysis_.*|"
                          r"checkpoint-\d+|\.checkpoint-\d+\.tmp)")


# What comes and goes in a run directory after its manifest is written: checkpoints (--keep_checkpoints, or an
# unfinished run's), tracker logs, `peftkit analyze`'s folders, and train.log (a search trial's or benchmark run's
# output, written before the run starts).
TRANSIENT = re.compile(r"logs|analysis_.*|checkpoint-\d+|\.checkpoint-\d+\.tmp|train\.log")


def owned_entries(output_dir: Path) -> set[str]:
    """The top-level names in ``output_dir`` that a peftkit run wrote: its manifest's (and TRANSIENT ones), or, for
    a run without a manifest (unfinished, or from before manifests), the names a run writes; none in a folder that
    holds no run."""
    if not output_dir.is_dir():
        return set()
    names = {p.name for p in output_dir.iterdir()}
    try:
        listed = {Path(f).parts[0] for f in json.loads((output_dir / MANIFEST_FILE).read_text())["files"]}
        return {n for n in names if n in listed or n == MANIFEST_FILE or TRANSIENT.fullmatch(n)}
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        pass
    if (output_dir / CONFIG_FILE).is_file() or checkpoint.list_checkpoints(output_dir):
        return {n for n in names if LEGACY_OWNED.fullmatch(n)}
    return set()


def foreign_entries(output_dir: Path) -> list[str]:
    """What in ``output_dir`` peftkit did not write, and so never overwrites or deletes."""
    if not output_dir.is_dir():
        return []
    owned = owned_entries(output_dir) | {locks.LOCK_FILE, REPLACED_DIR}
    return sorted(n for n in (p.name for p in output_dir.iterdir()) if n not in owned and not TRANSIENT.fullmatch(n))


def existing_run(output_dir: Path) -> list[str]:
    found = [name for name in PEFTKIT_FILES if (output_dir / name).exists()]
    return found + [p.name for p in checkpoint.list_checkpoints(output_dir)]


def prepare_output_dir(output_dir: Path, train_args: TrainingArguments, config: dict[str, Any]) -> Path | None:
    """Refuse to clobber a run; on resume, find the checkpoint (returned) and refuse changed settings; with
    --overwrite_output_dir, clear the previous run."""
    if train_args.resume_from_checkpoint:
        check(not (output_dir / RESULTS_FILE).is_file(),
              f"The run in {str(output_dir)!r} has finished (it wrote {RESULTS_FILE}): there is nothing to resume. "
              f"Use it with `peftkit eval {output_dir}` or `peftkit predict {output_dir}`; to train again, pass "
              "--overwrite_output_dir or another --output_dir.")
        path = checkpoint.resolve(output_dir, train_args.resume_from_checkpoint)
        saved = path.parent / CONFIG_FILE
        check(saved.is_file(), f"No {CONFIG_FILE} beside {path}: cannot check that the settings match the run "
              "being resumed.")
        changes = config_changes(json.loads(saved.read_text()), config)
        check(not changes, f"Refusing to resume {path} with changed settings (the result would match neither run):"
              f"\n  " + "\n  ".join(changes) + "\nUse the original flags, or start a new run in another "
              "--output_dir.")
        return path
    foreign = foreign_entries(output_dir)
    check(not foreign, f"--output_dir {str(output_dir)!r} holds files peftkit did not write "
          f"({', '.join(foreign[:5])}{f' and {len(foreign) - 5} more' if len(foreign) > 5 else ''}): peftkit never "
          "overwrites or deletes those, with or without --overwrite_output_dir. Choose an empty or new --output_dir.")
    found = existing_run(output_dir)
    check(not found or train_args.overwrite_output_dir,
          f"--output_dir {str(output_dir)!r} already holds a run ({', '.join(found[:5])}"
          f"{f' and {len(found) - 5} more' if len(found) > 5 else ''}). "
          + (f"It has finished ({RESULTS_FILE}): " if RESULTS_FILE in found else
             "Pass --resume_from_checkpoint latest to continue it, ")
          + "pass --overwrite_output_dir to replace it, or choose another --output_dir.")
    return None  # a run to replace stays in place until this one has loaded its data and model (set_aside)


def set_aside(output_dir: Path) -> None:
    """--overwrite_output_dir, once the new run's data and model have loaded: move the previous run's files into
    REPLACED_DIR (renames within the folder), deleted when the new run is saved, put back if it fails first."""
    owned = sorted(owned_entries(output_dir))
    if not owned:
        return
    aside = output_dir / REPLACED_DIR
    shutil.rmtree(aside, ignore_errors=True)  # a previous failure's leftover
    aside.mkdir()
    for name in owned:
        os.replace(output_dir / name, aside / name)
    logger.info("--overwrite_output_dir: the previous run (%d files) is set aside in %s until this one is saved.",
                len(owned), aside)


def restore_aside(output_dir: Path) -> None:
    """After a failed run that replaced another (--overwrite_output_dir): the previous run comes back, unless the
    failed one left a checkpoint to resume from (an interruption, most often), which is then kept, with the previous
    run still set aside until it finishes."""
    aside = output_dir / REPLACED_DIR
    if not aside.is_dir():
        return
    if checkpoint.list_checkpoints(output_dir):
        logger.warning("This run can be resumed (--resume_from_checkpoint latest); the run it replaces stays in %s "
                       "until it finishes (delete that folder to drop it, or move its files back to keep it).", aside)
        return
    for name in owned_entries(output_dir):  # what the failed run wrote: its config, logs, best weights
        path = output_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    for entry in aside.iterdir():
        os.replace(entry, output_dir / entry.name)
    aside.rmdir()
    logger.warning("The run you asked to replace is back in %s, as it was.", output_dir)


def write_manifest(output_dir: Path) -> None:
    """Every file of the finished run with its size and sha256 (what later commands may check), written last and
    atomically: a run whose manifest is missing did not finish writing."""
    files = {}
    for path in sorted(p for p in output_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(output_dir)
        if rel.parts[0] in (locks.LOCK_FILE, REPLACED_DIR, MANIFEST_FILE) or rel.parts[0].startswith(".") \
                or TRANSIENT.fullmatch(rel.parts[0]):  # checkpoints and logs come and go
            continue
        files[rel.as_posix()] = {"size": path.stat().st_size, "sha256": sha256_of(path)}
    atomic_write_text(output_dir / MANIFEST_FILE, json.dumps({"peftkit_version": __version__, "files": files},
                                                              indent=1))


def remove_checkpoints(output_dir: Path) -> None:
    for path in output_dir.iterdir():  # checkpoint-<step> and its temporary, not a user's checkpoint-foo
        if re.fullmatch(rf"\.?{checkpoint.PREFIX}\d+(\.tmp)?", path.name):
            shutil.rmtree(path, ignore_errors=True)


def fit_results(fit) -> dict[str, Any]:
    """What the training loop measured, as results.json reports it."""
    return {
        "eval": fit.eval, "test": fit.test,
        "train_runtime_s": round(fit.train_runtime_s, 3),
        "train_samples_per_s": round(fit.train_samples / fit.train_runtime_s, 3),
        "train_tokens_per_s": round(fit.train_tokens / fit.train_runtime_s, 1),
        # Real tokens over the positions computed for them: padding's cost (see --group_by_length)
        "train_real_token_share": round(fit.train_tokens / fit.train_positions, 4) if fit.train_positions else None,
        "train_samples": fit.train_samples, "step_time_median_s": fit.step_time_median_s,
        "time_breakdown_s": fit.time_breakdown_s,
        "global_step": fit.global_step, "epochs": fit.epochs, "stopped_early": fit.stopped_early,
        "pruned_at_step": fit.pruned_at_step, "best_step": (fit.selection or {}).get("step"),
        "selection": fit.selection,
        "feature_cache": fit.feature_cache, "skipped_steps": fit.skipped_steps,
        "resumed_from_step": fit.resumed_from_step, "history": fit.history, "train_history": fit.train_history,
    }


def run_output_dir(train_args: TrainingArguments, strategy_name: str, task_name: str) -> Path:
    return Path(train_args.output_dir or f"runs/{strategy_name}_{task_name}")


def train(task_name: str, strategy_name: str, strategy: Any, model_args: ModelArguments,
          data_args: DataArguments, train_args: TrainingArguments, task: Any = None) -> dict[str, Any]:
    """Train, save the artefact and return (and write) the results dict. ``task``: the task with its flags
    (default: task ``task_name`` with its defaults). One run at a time per output directory: the main process
    holds its lock from before the directory is checked until the last file is written."""
    args = (task_name, strategy_name, strategy, model_args, data_args, train_args, task)
    if int(os.environ.get("RANK", "0")) != 0:
        return _train(*args)
    output_dir = run_output_dir(train_args, strategy_name, task_name)
    with locks.exclusive(output_dir, "run"):
        try:
            return _train(*args)
        except BaseException:
            restore_aside(output_dir)  # --overwrite_output_dir: the previous run comes back
            raise


def _train(task_name: str, strategy_name: str, strategy: Any, model_args: ModelArguments,
           data_args: DataArguments, train_args: TrainingArguments, task: Any = None) -> dict[str, Any]:
    validate(model_args, data_args, train_args)
    task = task if task is not None else get_task(task_name).build(data_args)
    task.data = data_args
    metric = train_args.metric_for_best_model or task.default_metric
    check(metric in task.metrics, f"--metric_for_best_model {metric!r} is not a metric of task {task_name}. "
          f"Choose one of: {', '.join(task.metrics)} ("
          + "; ".join(f"{k}: {'lower' if v == 'min' else 'higher'} is better" for k, v in task.metrics.items()) + ").")
    load_config(model_args)  # fail fast on a wrong model path, before any data work
    output_dir = run_output_dir(train_args, strategy_name, task_name)
    acc = make_accelerator(train_args, output_dir)
    use_idle_cores(acc)
    set_seed(train_args.seed)
    if acc.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    # A task may know better rates for some strategies than the strategy's own (image_cls: CNNs, full at 3e-4)
    lr = train_args.learning_rate or getattr(task, "learning_rates", {}).get(strategy_name) \
        or strategy.default_learning_rate
    config = resolved_config(task, strategy_name, strategy, model_args, data_args, train_args, lr)
    # Every process then reads the checkpoint itself (on several machines: from a shared disk).
    resume = on_main(acc, lambda: prepare_output_dir(output_dir, train_args, config))

    with acc.main_process_first():
        raw, dataset_desc = load_raw_datasets(data_args, train_args.seed, builtin=task.builtin_dataset,
                                              own=getattr(task, "load_raw", None))
        task_state = task.discover(raw)
        processor = task.load_processor(model_args)
        data = task.preprocess(raw, processor)
    config["derived"] = derive_defaults(train_args, len(data["train"]), len(data.get("validation", ())),
                                        acc.num_processes, num_classes=len(task_state.get("labels") or ()),
                                        min_steps=getattr(task, "min_steps", MIN_STEPS),
                                        default_learning_rate=lr,
                                        lr_reference_batch=getattr(strategy, "lr_reference_batch", None)
                                        if getattr(task, "lr_follows_batch", False) else None)
    # config["training"] keeps the rate asked for (what a resumption is checked against); "derived" the one used.
    lr = train_args.learning_rate or lr
    for name, derived in config["derived"].items():
        # evaluating every epoch is what a user expects unless told: said only when it is not that
        if name != "eval_every_epochs" or derived["value"] > 1:
            logger.info("--%s %g (derived: %s; pass it to choose).", name, derived["value"], derived["why"])
    if acc.is_main_process and "num_train_epochs" in config["derived"] and (
            warning := too_few_steps(train_args, len(data["train"]), acc.num_processes,
                                     getattr(task, "min_steps", MIN_STEPS))):
        logger.warning(warning)
    model, head_names = load_model(task, strategy, model_args, processor)
    # Training keeps no key/value cache: it would only cost memory, and while one is kept transformers does not
    # read packed rows (--packing) as several examples. Put back before saving.
    use_cache = getattr(model.config, "use_cache", None)
    if use_cache:
        model.config.use_cache = False
    if train_args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = strategy.prepare(model, task, head_names)
    check_trainable_dtype(model, acc.mixed_precision, model_args.torch_dtype)
    task_state |= prepare_task_model(task, model, resolve_model_path(model_args.model_name_or_path))
    if train_args.disable_dropout:
        logger.info("Dropout disabled in %d places.", disable_dropout(model))
    trainable, total = count_parameters(model)
    head_leaves = {h.rsplit(".", 1)[-1] for h in head_names}  # timm_model.classifier -> classifier
    head_params = sum(p.numel() for n, p in model.named_parameters()
                      if p.requires_grad and set(n.split(".")) & head_leaves)
    logger.info("%s on %s: trainable params %s / %s (%.4f%%); %s", strategy_name, task_name, f"{trainable:,}",
                f"{total:,}", 100 * trainable / total, {s: len(d) for s, d in data.items()})
    config |= {"labels": task_state.get("labels"), "task_state": task_state}
    if resume is None and train_args.overwrite_output_dir:
        on_main(acc, lambda: set_aside(output_dir))
    if acc.is_main_process and resume is None:
        atomic_write_text(output_dir / CONFIG_FILE, json.dumps(config | {"label_type": task_state.get("label_type")},
                                                         indent=2))
    tracked = config["training"] | {name: derived["value"] for name, derived in config["derived"].items()}
    acc.init_trackers(logging_dir(train_args, output_dir).name,
                      config={k: v for k, v in tracked.items() if isinstance(v, int | float | str | bool)})

    HOST.enable(train_args.release_host_memory and acc.device.type == "cpu")
    baseline = final_evaluation(acc, task, model, processor, raw, output_dir, "base", resume is not None)
    cache = getattr(strategy, "cache_features", False)
    if cache and not getattr(task, "features_fixed", lambda: True)():
        cache = False
        logger.info("No feature cache: augmentation changes the training images every epoch, so the frozen "
                    "backbone runs on each batch (exact, slower); --augment none allows the cache.")
    engine = Engine(acc, task, model, data, task.collator(processor), train_args, lr, output_dir,
                    use_feature_cache=cache,
                    lr_scales=strategy.lr_scales(model) if hasattr(strategy, "lr_scales") else None,
                    unfreeze=strategy.unfreeze_schedule(model) if hasattr(strategy, "unfreeze_schedule") else None,
                    should_stop=search_trial.pruning_hook(metric))
    # The baseline that a CPU run's memory comes on top of (a GPU's peak needs none): with the model loaded, it
    # holds the interpreter, libraries and weights, where the strategies do not differ.
    loaded = resident_bytes() if acc.device.type == "cpu" else None
    fit = engine.fit(resume)
    final = final_evaluation(acc, task, engine.prepared, processor, raw, output_dir, "fine_tuned", False)
    if use_cache:
        acc.unwrap_model(engine.prepared).config.use_cache = use_cache
    try:
        save_model(acc, engine.prepared, output_dir, processor)
        if acc.is_main_process and hasattr(strategy, "finalize_saved"):
            strategy.finalize_saved(output_dir)
    except Exception as exc:  # noqa: BLE001 - a full disk, however the writer reports it
        raise final_write_failure(exc, output_dir) from exc
    acc.end_training()

    results = {
        "strategy": strategy_name, "task": task_name, "model": model_args.model_name_or_path,
        "dataset": dataset_desc, "artifact_dir": str(output_dir.resolve()),
        "labels": task_state.get("labels"), "trainable_params": trainable,
        "trainable_params_without_head": trainable - head_params,
        "total_params": total, "trainable_percent": round(100 * trainable / total, 4), **fit_results(fit),
        "num_examples": {s: len(d) for s, d in data.items()},
        "peak_memory_bytes": peak_memory_bytes(acc.device), "loaded_memory_bytes": loaded,
        "host_memory_trims": HOST.calls, "device": str(acc.device),
        "peak_memory_reserved_bytes": (int(torch.cuda.max_memory_reserved(acc.device))
                                       if acc.device.type == "cuda" else None),
        "num_processes": acc.num_processes,
        "effective_batch_size": train_args.per_device_train_batch_size * acc.num_processes
        * train_args.gradient_accumulation_steps,
        "base_fingerprint": config["base"]["fingerprint"], "learning_rate": lr, "seed": train_args.seed,
        "per_device_train_batch_size": train_args.per_device_train_batch_size,
        "num_train_epochs": train_args.num_train_epochs, "derived": config.get("derived", {}),
        "metric_for_best_model": metric,
        "versions": versions(), "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    if final is not None:
        results["final_evaluation"] = {"base": baseline, "fine_tuned": final}
    if acc.is_main_process:
        try:
            checkpoint.share_files(output_dir)
            atomic_write_text(output_dir / RESULTS_FILE, json.dumps(results, indent=2))
            model_card.write(output_dir, config, results, task)
            (output_dir / BASELINE_FILE).unlink(missing_ok=True)
            write_manifest(output_dir)  # last: a run without one did not finish writing
        except Exception as exc:  # noqa: BLE001 - a full disk, however the writer reports it
            (output_dir / RESULTS_FILE).unlink(missing_ok=True)  # so that the run does not look finished
            raise final_write_failure(exc, output_dir) from exc
        if not train_args.keep_checkpoints:  # they only serve to resume, and a finished run is not resumed
            remove_checkpoints(output_dir)
        shutil.rmtree(output_dir / REPLACED_DIR, ignore_errors=True)  # the run this one replaced
    return results


def final_write_failure(exc: BaseException, output_dir: Path) -> BaseException:
    """The exception to raise for a failure while saving the trained run: one clear message for a failed write."""
    if not is_write_failure(exc):
        return exc
    kept = checkpoint.list_checkpoints(output_dir)
    return write_failure(exc, output_dir, "the trained run", "It is not finished: "
                         + (f"its checkpoints are intact ({kept[-1].name} the newest): rerun with "
                            "--resume_from_checkpoint latest once there is room." if kept else
                            "no checkpoint was kept; train again once there is room."))


def final_evaluation(acc: Accelerator, task: Any, model, processor, raw, output_dir: Path, stage: str,
                     resumed: bool) -> dict[str, Any] | None:
    """The task's evaluation after training (e.g. generation on held-out prompts), or of the untrained model
    (``stage="base"``, kept in BASELINE_FILE so that a resumed run need not recompute it). Every process takes
    part; tasks without one return None."""
    path = output_dir / BASELINE_FILE
    if stage == "base" and resumed and path.is_file():
        return json.loads(path.read_text())
    out = task.final_evaluation(acc, model, processor, raw, output_dir, stage)
    if out is not None and stage == "base" and acc.is_main_process:
        path.write_text(json.dumps(out))
    return out
