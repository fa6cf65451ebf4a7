"""One training run, top to bottom: data, model, strategy, engine, artefact, results.json."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import os
import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from peftkit import checkpoint, fewshot, locks, model_card, planner, preflight
from peftkit._version import __version__
from peftkit.config import DataArguments, ModelArguments, TrainingArguments, validate
from peftkit.data import class_counts, load_raw_datasets
from peftkit.defaults import derive_defaults, too_few_steps
from peftkit.devices import logging_dir, make_accelerator, use_idle_cores
from peftkit.distributed import on_main, save_model
from peftkit.engine import Engine
from peftkit.errors import PeftkitError, check, is_write_failure, write_failure
from peftkit.identity import fingerprint
from peftkit.layout import (
    BASELINE_FILE,
    CONFIG_FILE,
    REPLACED_DIR,
    RESULTS_FILE,
    atomic_write_text,
    existing_run,
    foreign_entries,
    remove_checkpoints,
    restore_aside,
    set_aside,
    write_manifest,
)
from peftkit.memory import HOST, peak_memory_bytes, resident_bytes
from peftkit.modeling import (
    check_trainable_dtype,
    count_parameters,
    disable_dropout,
    enable_activation_checkpointing,
    is_head_parameter,
    load_config,
    load_model,
    resolve_model_path,
)
from peftkit.strategies import get_strategy
from peftkit.tasks import get_task, task_fields
from peftkit.units import human_size

logger = logging.getLogger(__name__)
VERSIONED = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "datasets", "evaluate")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"peftkit": __version__}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


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


def prepare_output_dir(output_dir: Path, train_args: TrainingArguments, config: dict[str, Any]) -> Path | None:
    """Refuse to clobber a run; on resume, find the checkpoint (returned) and refuse changed settings; with
    --overwrite_output_dir, clear the previous run."""
    if train_args.resume_from_checkpoint:
        check(not (output_dir / RESULTS_FILE).is_file(),
              f"The run in {str(output_dir)!r} has finished (it wrote {RESULTS_FILE}): there is nothing to resume. "
              f"Use it with `peftkit eval {output_dir}` or `peftkit predict {output_dir}`; to train again, pass "
              "--overwrite_output_dir or another --output_dir.")
        stage_only = (train_args.resume_from_checkpoint == "latest" and not checkpoint.list_checkpoints(output_dir)
                      and (output_dir / fewshot.STAGE_DIR).is_dir())  # stopped in (or just after) --contrastive's
        path = None if stage_only else checkpoint.resolve(output_dir, train_args.resume_from_checkpoint)
        saved = output_dir / CONFIG_FILE if path is None else path.parent / CONFIG_FILE
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
          data_args: DataArguments, train_args: TrainingArguments, task: Any = None,
          should_stop: Callable[[int, dict[str, float]], bool] | None = None) -> dict[str, Any]:
    """Train, save the artefact and return (and write) the results dict. ``task``: the task with its flags
    (default: task ``task_name`` with its defaults). ``should_stop(step, metrics)``: asked after each validation
    evaluation whether to stop (`peftkit search`'s pruning of a trial). One run at a time per output directory:
    the main process holds its lock from before the directory is checked until the last file is written."""
    args = (task_name, strategy_name, strategy, model_args, data_args, train_args, task, should_stop)
    if int(os.environ.get("RANK", "0")) != 0:
        return _train(*args)
    output_dir = run_output_dir(train_args, strategy_name, task_name)
    with locks.exclusive(output_dir, "run"):
        try:
            return _train(*args)
        except BaseException:
            restore_aside(output_dir)  # --overwrite_output_dir: the previous run comes back
            raise


@dataclass
class Run:
    """What one training run carries from step to step (:func:`_train`): its plug-ins and settings, then what each
    step adds."""

    task_name: str
    strategy_name: str
    strategy: Any
    task: Any
    model_args: ModelArguments
    data_args: DataArguments
    train_args: TrainingArguments
    should_stop: Callable[[int, dict[str, float]], bool] | None
    # set up (_set_up)
    acc: Accelerator | None = None
    output_dir: Path | None = None
    metric: str = ""
    lr: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    resume: Path | None = None
    # data (_load_data)
    raw: Any = None
    dataset_desc: str = ""
    task_state: dict[str, Any] = field(default_factory=dict)
    processor: Any = None
    data: Any = None
    shots: dict[str, Any] | None = None  # --shots: the per-class draw
    # plan (_plan)
    plan: dict[str, Any] | None = None
    # model (_build_model)
    model: Any = None
    head_names: list[str] = field(default_factory=list)
    use_cache: bool | None = None
    trainable: int = 0
    total: int = 0
    head_params: int = 0
    # the contrastive stage (_contrastive)
    contrastive: dict[str, Any] | None = None


def _train(task_name: str, strategy_name: str, strategy: Any, model_args: ModelArguments,
           data_args: DataArguments, train_args: TrainingArguments, task: Any = None,
           should_stop: Callable[[int, dict[str, float]], bool] | None = None) -> dict[str, Any]:
    """The run's steps, in order: set up, data, model, fit (and save), results."""
    validate(model_args, data_args, train_args)
    task = task if task is not None else get_task(task_name).build(data_args)
    task.data = data_args
    run = Run(task_name, strategy_name, strategy, task, model_args, data_args, train_args, should_stop)
    _set_up(run)
    _load_data(run)
    _plan(run)
    _build_model(run)
    _contrastive(run)
    fit, evaluations, loaded = _fit(run)
    return _write_results(run, fit, evaluations, loaded)


def _set_up(run: Run) -> None:
    """Check the metric and the model path, start Accelerate, seed, and check the output directory (refusing to
    clobber a run; on resume, finding the checkpoint and refusing changed settings)."""
    task, train_args = run.task, run.train_args
    run.metric = metric = train_args.metric_for_best_model or task.default_metric
    check(metric in task.metrics, f"--metric_for_best_model {metric!r} is not a metric of task {run.task_name}. "
          f"Choose one of: {', '.join(task.metrics)} ("
          + "; ".join(f"{k}: {'lower' if v == 'min' else 'higher'} is better" for k, v in task.metrics.items()) + ").")
    load_config(run.model_args)  # fail fast on a wrong model path, before any data work
    run.output_dir = output_dir = run_output_dir(train_args, run.strategy_name, run.task_name)
    run.acc = acc = make_accelerator(train_args, output_dir)
    use_idle_cores(acc)
    set_seed(train_args.seed)
    if acc.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    check(not train_args.contrastive or task.pairs_stage, f"--contrastive: task {run.task_name!r} has no contrastive "
          "stage (text_cls has).")
    check(not run.data_args.shots or task.draws_per_class, f"--shots draws K examples of each class, and task "
          f"{run.task_name!r} has no single label per example (text_cls and image_cls have).")
    # A task may know better rates for some strategies than the strategy's own (image_cls: CNNs, full at 3e-4).
    # After a contrastive stage, the head alone trains (unless --end_to_end): at head's rate.
    rated = "head" if head_stage(train_args) else run.strategy_name
    rated_default = (get_strategy("head").cls.default_learning_rate if head_stage(train_args)
                     else run.strategy.default_learning_rate)
    run.lr = train_args.learning_rate or task.defaults.learning_rates.get(rated) or rated_default
    run.config = resolved_config(task, run.strategy_name, run.strategy, run.model_args, run.data_args, train_args,
                                 run.lr)
    # Every process then reads the checkpoint itself (on several machines: from a shared disk).
    run.resume = on_main(acc, lambda: prepare_output_dir(output_dir, train_args, run.config))


def _load_data(run: Run) -> None:
    """Load and check the data, find the label space, preprocess; then derive the defaults the data decides."""
    task, train_args, acc, policy = run.task, run.train_args, run.acc, run.task.defaults
    with acc.main_process_first():
        run.raw, run.dataset_desc, run.shots = load_raw_datasets(
            run.data_args, train_args.seed, builtin=task.builtin_dataset, own=task.load_raw,
            others=task.builtin_datasets, per_class=task.draws_per_class)
        run.task_state = task.discover(run.raw)
        if task.pairs_stage and acc.is_main_process:
            counts = class_counts(run.raw["train"], run.data_args.label_column)
            if advice := fewshot.guidance(counts, run.strategy_name, train_args.contrastive):
                logger.info(advice)
        run.processor = task.load_processor(run.model_args)
        run.data = data = task.preprocess(run.raw, run.processor)
    run.train_args, derived = derive_defaults(
        train_args, len(data["train"]), len(data.get("validation", ())), acc.num_processes,
        num_classes=len(run.task_state.get("labels") or ()), min_steps=policy.min_steps,
        default_learning_rate=run.lr,
        lr_reference_batch=run.strategy.lr_reference_batch if policy.lr_follows_batch else None)
    # config["training"] keeps what was asked for (what a resumption is checked against); "derived" what is used.
    run.config["derived"] = derived
    train_args = run.train_args
    run.lr = train_args.learning_rate or run.lr
    for name, value in derived.items():
        # evaluating every epoch is what a user expects unless told: said only when it is not that
        if name != "eval_every_epochs" or value["value"] > 1:
            logger.info("--%s %g (derived: %s; pass it to choose).", name, value["value"], value["why"])
    if acc.is_main_process and "num_train_epochs" in derived and (
            warning := too_few_steps(train_args, len(data["train"]), acc.num_processes, policy.min_steps)):
        logger.warning(warning)


def _plan(run: Run) -> None:
    """Predict the run's peak memory per process from the model's shapes (peftkit/planner.py) and log it; stop
    before the model is loaded, with the plan's advice, when it would not fit (unless --force). With
    --auto_batch_size, first find the largest micro-batch that fits and train the same global batch with
    accumulation. A model the planner cannot run on the meta device is trained unplanned (said at debug level)."""
    train_args, acc = run.train_args, run.acc
    if not (train_args.plan or train_args.auto_batch_size):
        return

    def setup(micro_batch: int, accumulation: int, pairs: bool = False) -> planner.Setup:
        processes, sharding = preflight.sharding_of_environment()
        per_process = -(-len(run.data["train"]) // acc.num_processes)  # a batch larger than the data is the data
        return planner.Setup(
            micro_batch=micro_batch if pairs else min(micro_batch, per_process), length=longest(run.data["train"]),
            accumulation=accumulation,
            gradient_checkpointing=train_args.gradient_checkpointing, processes=acc.num_processes,
            sharding=sharding if processes == acc.num_processes else "ddp" if acc.num_processes > 1 else "none",
            device=acc.device.type, mixed_precision=None if acc.mixed_precision == "no" else acc.mixed_precision,
            optimizer=train_args.optimizer)

    def plan_of(micro_batch: int, accumulation: int, pairs: bool = False) -> planner.Plan:
        return preflight.plan_candidate(run.task, run.strategy_name, run.strategy, run.model_args,
                                        setup(micro_batch, accumulation, pairs))

    def work() -> dict[str, Any] | None:
        limit, where = preflight.memory_limit(train_args, acc.device.type,
                                              int(os.environ.get("LOCAL_WORLD_SIZE", acc.num_processes)))
        batch, accumulation = train_args.per_device_train_batch_size, train_args.gradient_accumulation_steps
        try:
            plan = plan_of(batch, accumulation)
            chosen = None
            if train_args.auto_batch_size:
                chosen = saved_micro_batch(run) or largest_micro_batch(plan_of, batch, accumulation, limit)
                if chosen[0] != batch:
                    plan = plan_of(*chosen)
            classifier, stage = plan, None
            if train_args.contrastive:  # the pair stage: both texts of --contrastive_batch_size pairs a step
                stage = plan_of(preflight.stage_micro_batch(train_args.contrastive_batch_size, acc.num_processes), 1,
                                pairs=True)
                if stage.peak > plan.peak:
                    logger.info("The contrastive stage (%d texts a step) is the run's peak.",
                                2 * train_args.contrastive_batch_size)
                    plan = stage
        except Exception as exc:  # noqa: BLE001 - planning is advice: a model it cannot run still trains
            if train_args.auto_batch_size:
                logger.warning("--auto_batch_size: the model could not be planned (%s); training micro-batch %d.",
                               str(exc).splitlines()[0][:200], batch)
            else:
                logger.debug("No plan of this run: %s", exc)
            return None
        logger.info(preflight.summary(plan, limit, where))
        if limit is not None and plan.peak > limit:
            if not train_args.force and plan is stage:
                raise PeftkitError(preflight.stage_would_not_fit(
                    train_args, classifier.peak, stage.peak, limit, where,
                    lambda pairs: plan_of(preflight.stage_micro_batch(pairs, acc.num_processes), 1, pairs=True).peak))
            if not train_args.force:
                advice = preflight.advise(run.task, run.strategy_name, run.strategy, run.model_args,
                                          plan.setup, limit, lambda name: preflight.strategy_like(run.strategy, name))
                fixes = [a for a in advice if a["fits"]]
                raise PeftkitError(
                    f"This run would not fit: the plan predicts a peak of {human_size(plan.peak)} per process, "
                    f"and {human_size(limit)} is available ({where}). Nothing was loaded. "
                    + ("What would fit, cheapest first: " + "; ".join(
                        f"{a['change']}, {human_size(a['peak'])} ({a['flags']})" for a in fixes[:3]) + "."
                       if fixes else "Nothing the planner tried fits: a device with more memory, or a smaller model.")
                    + " `peftkit plan` with the same flags shows the whole plan; --force trains anyway, and --memory "
                    "sets the limit if the available figure is wrong.")
            logger.warning("The plan predicts more memory than is available; training anyway (--force).")
        return plan.as_dict() | {"limit": limit, "limit_from": where, "chosen": chosen,
                                 "classifier_peak": classifier.peak}

    run.plan = on_main(acc, work)
    chosen = run.plan.pop("chosen") if run.plan else None
    classifier_peak = run.plan.pop("classifier_peak") if run.plan else None
    if chosen and tuple(chosen) != (train_args.per_device_train_batch_size, train_args.gradient_accumulation_steps):
        _choose_batch(run, *chosen, f"the largest micro-batch under {human_size(run.plan['limit'])} by the plan "
                                    f"({human_size(classifier_peak)})")


def _choose_batch(run: Run, micro: int, accumulation: int, reason: str) -> None:
    """Train ``micro`` x ``accumulation`` instead of the asked batch (--auto_batch_size): the same global batch,
    recorded as a derived setting with its reason."""
    asked = run.config["derived"].get("per_device_train_batch_size", {}).get(
        "asked", run.train_args.per_device_train_batch_size)
    why = (f"--auto_batch_size: {reason}; global batch {micro * accumulation * run.acc.num_processes} as with "
           f"{asked}")
    run.train_args = dataclasses.replace(run.train_args, per_device_train_batch_size=micro,
                                         gradient_accumulation_steps=accumulation)
    run.config["derived"]["per_device_train_batch_size"] = {"value": micro, "why": why, "asked": asked}
    run.config["derived"]["gradient_accumulation_steps"] = {"value": accumulation, "why": why}
    logger.info("--per_device_train_batch_size %d --gradient_accumulation_steps %d (%s).", micro, accumulation, why)


def _probe(run: Run, model) -> None:
    """--auto_batch_size on a GPU: the planned micro-batch tried for real, one forward and backward pass on the
    longest training examples (peftkit's first batch is the longest) with the optimizer state's planned bytes held
    aside, halved while it runs out of memory (preflight.probe_micro_batch); every process takes the smallest.
    Not on a CPU (running out of host memory kills rather than raises), not under FSDP/ZeRO (a whole model on
    one device is not what a sharded step holds) and not on resume (the saved choice stands). Random generators
    are left as they were (augmentation and dropout draw from them)."""
    train_args, acc = run.train_args, run.acc
    if (not train_args.auto_batch_size or acc.device.type not in preflight.PROBED_DEVICES or run.resume is not None
            or preflight.sharding_of_environment()[1] not in ("none", "ddp")):
        return
    train, collate = run.data["train"], run.task.collator(run.processor)
    lengths = [len(ids) for ids in train["input_ids"]] if "input_ids" in train.column_names else [0] * len(train)
    order = sorted(range(len(train)), key=lambda i: -lengths[i])
    reserve = int((run.plan or {}).get("optimizer", 0))
    if not getattr(model, "is_quantized", False) and not getattr(model, "is_loaded_in_4bit", False):
        model.to(acc.device)

    def step(micro: int) -> None:
        held = torch.empty(reserve, dtype=torch.uint8, device=acc.device)
        batch = {k: v.to(acc.device) if torch.is_tensor(v) else v
                 for k, v in collate([train[i] for i in order[:micro]]).items()}
        model.train()
        try:
            with acc.autocast():
                loss = run.task.forward(model, batch).loss
            loss.backward()
            if acc.device.type == "cuda":
                torch.cuda.synchronize()
        finally:
            model.zero_grad(set_to_none=True)
            del held

    before = (train_args.per_device_train_batch_size, train_args.gradient_accumulation_steps)
    generators, modes = checkpoint.rng_states(None), {m: m.training for m in model.modules()}
    try:
        micro, accumulation = preflight.probe_micro_batch(step, *before)
    finally:
        checkpoint.restore_rng(generators["tensors"], generators["json"])
        for module, training in modes.items():
            module.training = training
    smallest = int(acc.gather(torch.tensor([micro], device=acc.device)).min())
    if smallest != micro:
        micro, accumulation = smallest, before[0] * before[1] // smallest
    if run.plan is not None:
        run.plan["probe"] = {"micro_batch": before[0], "fits": micro == before[0]}
    if (micro, accumulation) != before:
        _choose_batch(run, micro, accumulation, f"micro-batch {before[0]} ran out of memory on the longest "
                                                f"training batch, {micro} did not")


def largest_micro_batch(plan_of, batch: int, accumulation: int, limit: int | None) -> tuple[int, int]:
    """(micro-batch, accumulation) for --auto_batch_size: ``batch`` halved until its plan fits ``limit`` (down
    to 1), with accumulation multiplied to keep ``batch x accumulation``. A batch that does not halve evenly
    stops at the last size that divides it."""
    micro = batch
    while (limit is not None and micro > 1 and micro % 2 == 0
           and plan_of(micro, accumulation * batch // micro).peak > limit):
        micro //= 2
    return micro, accumulation * batch // micro


def saved_micro_batch(run: Run) -> tuple[int, int] | None:
    """The micro-batch --auto_batch_size chose for the run being resumed (free memory may differ now, and a
    resumed run must take the same steps)."""
    if run.resume is None:
        return None
    saved = json.loads((run.resume.parent / CONFIG_FILE).read_text()).get("derived", {})
    if "per_device_train_batch_size" not in saved or "gradient_accumulation_steps" not in saved:
        return None
    return saved["per_device_train_batch_size"]["value"], saved["gradient_accumulation_steps"]["value"]


def longest(train) -> int:
    """Tokens in the longest training example (the planner's sequence length: peftkit's first batch is the
    longest); 0 for examples without token ids (images)."""
    if "input_ids" not in train.column_names:
        return 0
    return max((len(ids) for ids in train["input_ids"]), default=0)


def _build_model(run: Run) -> None:
    """Load the model, let the strategy adapt it and the task change what it computes; count what trains; write
    the run's config (a new run) and start the trackers."""
    task, train_args, acc, output_dir = run.task, run.train_args, run.acc, run.output_dir
    model, run.head_names = load_model(task, run.strategy, run.model_args, run.processor)
    # Training keeps no key/value cache: it would only cost memory, and while one is kept transformers does not
    # read packed rows (--packing) as several examples. Put back before saving.
    run.use_cache = getattr(model.config, "use_cache", None)
    if run.use_cache:
        model.config.use_cache = False
    if train_args.gradient_checkpointing:
        enable_activation_checkpointing(model)
    model = run.strategy.prepare(model, task, run.head_names)
    check_trainable_dtype(model, acc.mixed_precision, run.model_args.torch_dtype)
    _probe(run, model)
    train_args = run.train_args
    if train_args.contrastive:
        task.train_embeddings()
    run.task_state |= task.prepare_model(model, resolve_model_path(run.model_args.model_name_or_path))
    if train_args.disable_dropout:
        logger.info("Dropout disabled in %d places.", disable_dropout(model))
    run.model = model
    run.trainable, run.total = trainable, total = count_parameters(model)
    run.head_params = sum(p.numel() for n, p in model.named_parameters()
                          if p.requires_grad and is_head_parameter(n, run.head_names))
    logger.info("%s on %s: trainable params %s / %s (%.4f%%); %s", run.strategy_name, run.task_name,
                f"{trainable:,}", f"{total:,}", 100 * trainable / total, {s: len(d) for s, d in run.data.items()})
    config = run.config
    config |= {"labels": run.task_state.get("labels"), "task_state": run.task_state}
    if run.resume is None and train_args.overwrite_output_dir:
        on_main(acc, lambda: set_aside(output_dir))
    if acc.is_main_process and run.resume is None:
        atomic_write_text(output_dir / CONFIG_FILE,
                          json.dumps(config | {"label_type": run.task_state.get("label_type")}, indent=2))
    tracked = config["training"] | {name: derived["value"] for name, derived in config["derived"].items()}
    acc.init_trackers(logging_dir(train_args, output_dir).name,
                      config={k: v for k, v in tracked.items() if isinstance(v, int | float | str | bool)})


def head_stage(train_args: TrainingArguments) -> bool:
    """After a contrastive stage, the head alone trains (on cached features), unless --end_to_end."""
    return train_args.contrastive and not train_args.end_to_end


def _contrastive(run: Run) -> None:
    """--contrastive: train the model's embedding on pairs of training examples (peftkit/fewshot.py), then freeze
    everything below the head unless --end_to_end."""
    if not run.train_args.contrastive:
        return
    run.contrastive = fewshot.contrastive_stage(run)
    if head_stage(run.train_args):
        frozen = fewshot.freeze_below_head(run.model, run.head_names)
        logger.info("Contrastive stage done; the head trains alone on its features (%s weights frozen; "
                    "--end_to_end trains them with it).", f"{frozen:,}")


def _fit(run: Run) -> tuple[Any, dict[str, Any], int | None]:
    """Evaluate the base where the task has a final evaluation, train, evaluate the tuned model, save it."""
    task, strategy, acc, output_dir = run.task, run.strategy, run.acc, run.output_dir
    HOST.enable(run.train_args.release_host_memory and acc.device.type == "cpu")
    baseline = final_evaluation(acc, task, run.model, run.processor, run.raw, output_dir, "base",
                                run.resume is not None)
    head_only = head_stage(run.train_args)
    cache = strategy.cache_features or head_only
    if cache and not task.features_fixed():
        cache = False
        logger.info("No feature cache: augmentation changes the training images every epoch, so the frozen "
                    "backbone runs on each batch (exact, slower); --augment none allows the cache.")
    engine = Engine(acc, task, run.model, run.data, task.collator(run.processor), run.train_args, run.lr, output_dir,
                    use_feature_cache=cache,
                    lr_scales=None if head_only else strategy.lr_scales(run.model),
                    unfreeze=None if head_only else strategy.unfreeze_schedule(run.model),
                    should_stop=run.should_stop)
    # The baseline that a CPU run's memory comes on top of (a GPU's peak needs none): with the model loaded, it
    # holds the interpreter, libraries and weights, where the strategies do not differ.
    loaded = resident_bytes() if acc.device.type == "cpu" else None
    fit = engine.fit(run.resume)
    final = final_evaluation(acc, task, engine.prepared, run.processor, run.raw, output_dir, "fine_tuned", False)
    if run.use_cache:
        acc.unwrap_model(engine.prepared).config.use_cache = run.use_cache
    try:
        save_model(acc, engine.prepared, output_dir, run.processor)
        if acc.is_main_process:
            strategy.finalize_saved(output_dir)
    except Exception as exc:  # noqa: BLE001 - a full disk, however the writer reports it
        raise final_write_failure(exc, output_dir) from exc
    acc.end_training()
    evaluations = {"base": baseline, "fine_tuned": final} if final is not None else {}
    return fit, evaluations, loaded


def _write_results(run: Run, fit, evaluations: dict[str, Any], loaded: int | None) -> dict[str, Any]:
    """results.json, the model card and the manifest (last: a run without one did not finish writing)."""
    acc, train_args, output_dir, config = run.acc, run.train_args, run.output_dir, run.config
    trainable, total = run.trainable, run.total
    results = {
        "strategy": run.strategy_name, "task": run.task_name, "model": run.model_args.model_name_or_path,
        "dataset": run.dataset_desc, "artifact_dir": str(output_dir.resolve()),
        "labels": run.task_state.get("labels"), "trainable_params": trainable,
        "trainable_params_without_head": trainable - run.head_params,
        "total_params": total, "trainable_percent": round(100 * trainable / total, 4), **fit_results(fit),
        "num_examples": {s: len(d) for s, d in run.data.items()},
        "peak_memory_bytes": peak_memory_bytes(acc.device), "loaded_memory_bytes": loaded,
        "host_memory_trims": HOST.calls, "device": str(acc.device),
        "peak_memory_reserved_bytes": (int(torch.cuda.max_memory_reserved(acc.device))
                                       if acc.device.type == "cuda" else None),
        "num_processes": acc.num_processes,
        "effective_batch_size": train_args.per_device_train_batch_size * acc.num_processes
        * train_args.gradient_accumulation_steps,
        "base_fingerprint": config["base"]["fingerprint"], "learning_rate": run.lr, "seed": train_args.seed,
        "per_device_train_batch_size": train_args.per_device_train_batch_size,
        "num_train_epochs": train_args.num_train_epochs, "derived": config.get("derived", {}),
        "metric_for_best_model": run.metric,
        "synthetic_weights": run.model_args.random_init,
        "plan": run.plan, "shots": run.shots, "contrastive": run.contrastive,
        "versions": versions(), "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    if evaluations:
        results["final_evaluation"] = evaluations
    if acc.is_main_process:
        try:
            checkpoint.share_files(output_dir)
            atomic_write_text(output_dir / RESULTS_FILE, json.dumps(results, indent=2))
            model_card.write(output_dir, config, results, run.task)
            (output_dir / BASELINE_FILE).unlink(missing_ok=True)
            write_manifest(output_dir)  # last: a run without one did not finish writing
        except Exception as exc:  # noqa: BLE001 - a full disk, however the writer reports it
            (output_dir / RESULTS_FILE).unlink(missing_ok=True)  # so that the run does not look finished
            raise final_write_failure(exc, output_dir) from exc
        if not train_args.keep_checkpoints:  # they only serve to resume, and a finished run is not resumed
            remove_checkpoints(output_dir)
        shutil.rmtree(output_dir / REPLACED_DIR, ignore_errors=True)  # the run this one replaced
        fewshot.finish(output_dir)
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
