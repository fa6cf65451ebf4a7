"""The plan of a run from its flags: what `peftkit plan` prints and what `peftkit train` checks before it loads
the model. The memory model itself is :mod:`peftkit.planner`; this module reads the run's settings (batch,
sequence length of its data, precision, processes and sharding), asks it per strategy, checks the result against
the memory there is, and, where a run does not fit, tries the changes that would make it fit, cheapest first."""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from peftkit import planner
from peftkit.config import ModelArguments, TrainingArguments
from peftkit.errors import PeftkitError
from peftkit.modeling import enable_activation_checkpointing, load_config
from peftkit.units import human_size, parse_size

logger = logging.getLogger(__name__)


@dataclass
class Candidate:
    """One strategy of one run, as planned."""

    name: str
    strategy: Any
    plan: planner.Plan
    fits: bool | None
    advice: list[dict[str, Any]] = field(default_factory=list)
    stage: planner.Plan | None = None  # --contrastive's pair stage, planned apart (its own batch of texts)

    @property
    def peak(self) -> int:
        """The run's peak: the classifier's training or, when larger, the contrastive stage's."""
        return max(self.plan.peak, self.stage.peak if self.stage else 0)

    def as_dict(self) -> dict[str, Any]:
        return {"strategy": self.name, "fits": self.fits, **self.plan.as_dict(), "advice": self.advice,
                **({"contrastive_stage": self.stage.as_dict(), "run_peak": self.peak} if self.stage else {})}


def model_config(task: Any, model_args: ModelArguments):
    """The transformers config the run's model would have (the task's head settings applied)."""
    kwargs = {k: v for k, v in task.model_kwargs().items() if k != "ignore_mismatched_sizes"}
    return load_config(model_args, **kwargs)


def storage_dtype(model_args: ModelArguments) -> torch.dtype:
    # "auto" is the checkpoint's own: most LLM checkpoints are bfloat16 (the config says where it says anything)
    return torch.float32 if model_args.torch_dtype == "auto" else getattr(torch, model_args.torch_dtype)


def sharding_of_environment() -> tuple[int, str]:
    """(processes, sharding) of the `accelerate launch` this process runs under; (1, "none") outside one."""
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if processes <= 1:
        return 1, "none"
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true"):
        return processes, "fsdp"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true"):
        stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
        return processes, "zero3" if stage == "3" else "zero2"
    return processes, "ddp"


def accelerate_config(path: str) -> dict[str, Any]:
    """What a plan needs from an Accelerate config file (`accelerate launch --config_file`): processes, sharding,
    mixed precision and the device type."""
    import yaml

    from peftkit.errors import check

    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise PeftkitError(f"Cannot read the Accelerate config {path}: {exc}") from exc
    check(isinstance(values, dict), f"{path} is not an Accelerate config (a YAML mapping).")
    kind = str(values.get("distributed_type", "NO")).upper()
    processes = int(values.get("num_processes", 1) or 1)
    sharding = {"FSDP": "fsdp", "MULTI_GPU": "ddp", "MULTI_CPU": "ddp", "MULTI_XPU": "ddp"}.get(kind, "none")
    if kind == "DEEPSPEED":
        stage = int((values.get("deepspeed_config") or {}).get("zero_stage", 2))
        sharding = "zero3" if stage == 3 else "zero2" if stage == 2 else "ddp"
    precision = values.get("mixed_precision")
    device = "cpu" if values.get("use_cpu") or kind == "MULTI_CPU" else "cuda" if kind != "NO" else None
    return {"processes": processes, "sharding": sharding if processes > 1 else "none",
            "mixed_precision": None if precision in (None, "no") else precision, "device": device}


def memory_limit(train_args: TrainingArguments, device: str, processes_here: int = 1) -> tuple[int | None, str]:
    """Bytes one process may use, and where the figure comes from."""
    if train_args.memory:
        return parse_size(train_args.memory), f"--memory {train_args.memory}"
    free = planner.available_memory(device)
    if free is None:
        return None, "unknown (pass --memory)"
    if device == "cuda":
        return free, f"free on {torch.cuda.get_device_name()}"
    return free // max(1, processes_here), ("the host's available memory"
                                            + (f" / {processes_here} processes" if processes_here > 1 else ""))


def strategy_like(strategy: Any, name: str) -> Any | None:
    """Strategy ``name`` with the same-named flags as ``strategy`` (QLoRA advice for a LoRA run keeps its rank);
    None where there is no such strategy."""
    from peftkit.strategies import get_strategy

    try:
        spec = get_strategy(name)
    except PeftkitError:
        return None
    flags = spec.flag_class
    fields = {f.name for f in dataclasses.fields(flags)} if dataclasses.is_dataclass(flags) else set()
    own = {k: v for k, v in vars(strategy).items() if k in fields and k not in spec.preset}
    return spec.build(**own)


def plan_candidate(task: Any, name: str, strategy: Any, model_args: ModelArguments, setup: planner.Setup,
                   config=None) -> planner.Plan:
    config = config if config is not None else model_config(task, model_args)
    try:  # on a copy: a strategy may keep state from prepare() (PiSSA's initial adapter)
        return planner.plan(task, copy.deepcopy(strategy), name, config, setup, storage_dtype(model_args))
    except PeftkitError:
        raise
    except Exception as exc:  # noqa: BLE001 - an architecture the meta device cannot run; say which
        raise PeftkitError(f"Cannot plan {name} on {model_args.model_name_or_path}: the model could not be run "
                           f"on the meta device ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}).") from exc


# What the probe of --auto_batch_size runs on, and the error that means "too large" there (a host that runs out
# of memory kills the process instead of raising; the plan alone decides on a CPU).
PROBED_DEVICES = ("cuda",)
OUT_OF_MEMORY = (torch.cuda.OutOfMemoryError,)


def probe_micro_batch(step: Callable[[int], None], micro: int, accumulation: int) -> tuple[int, int]:
    """(micro-batch, accumulation) that a real step takes: ``step(micro)`` (one forward and backward pass on the
    longest training examples) tried at the plan's micro-batch and halved on out-of-memory, with accumulation
    doubled to keep the global batch, down to 1. The plan leaves out what it cannot see (a kernel's workspace,
    fragmentation, another process on the GPU); this catches it before the first step does."""
    while True:
        try:
            step(micro)
            return micro, accumulation
        except OUT_OF_MEMORY as exc:
            why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        # Out of the except block: the traceback, and the activations its frames hold, are released.
        if micro == 1 or micro % 2:
            raise PeftkitError(
                f"--auto_batch_size: micro-batch {micro} ran out of memory on the longest training batch ({why})"
                + (" and it cannot be halved without changing the global batch: an even "
                   "--per_device_train_batch_size, or set the micro-batch and --gradient_accumulation_steps."
                   if micro > 1 else ". Gradient checkpointing (--gradient_checkpointing), a shorter "
                   "--max_seq_length, QLoRA or more GPUs with FSDP would fit it (`peftkit plan` compares them)."))
        logger.info("--auto_batch_size: micro-batch %d ran out of memory on the longest batch (%s); trying %d.",
                    micro, why, micro // 2)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        micro, accumulation = micro // 2, accumulation * 2


def advise(task: Any, name: str, strategy: Any, model_args: ModelArguments, setup: planner.Setup,
           limit: int, build_strategy, config=None) -> list[dict[str, Any]]:
    """Changes that make the run fit ``limit``, cheapest first, each with its predicted peak: a smaller
    micro-batch with accumulation for the same global batch, activation checkpointing, QLoRA's 4-bit base, and
    sharding over more GPUs. ``build_strategy(name)``: the strategy ``name`` with the run's flags."""
    config = config if config is not None else model_config(task, model_args)
    out: list[dict[str, Any]] = []

    def attempt(change: str, flags: str, strat_name: str, strat: Any, new: planner.Setup) -> bool:
        p = plan_candidate(task, strat_name, strat, model_args, new, config)
        fits = p.peak <= limit
        out.append({"change": change, "flags": flags, "peak": p.peak, "fits": fits})
        return fits

    batch, accumulation = setup.micro_batch, setup.accumulation
    smaller = batch // 2
    while smaller >= 1:
        new = dataclasses.replace(setup, micro_batch=smaller, accumulation=accumulation * batch // smaller)
        flags = f"--per_device_train_batch_size {smaller} --gradient_accumulation_steps {new.accumulation}"
        if attempt(f"micro-batch {smaller} x {new.accumulation} accumulation (same global batch)", flags,
                   name, strategy, new) or smaller == 1:
            break
        out.pop()  # only the largest micro-batch that fits (or 1) is worth showing
        smaller //= 2
    if not setup.gradient_checkpointing:
        attempt("activation checkpointing", "--gradient_checkpointing", name, strategy,
                dataclasses.replace(setup, gradient_checkpointing=True))
    if name in ("full", "lora", "dora", "rslora", "loraplus", "partial") and task.peft_task_type is not None:
        qlora = build_strategy("qlora")
        if qlora is not None:
            attempt("QLoRA: LoRA on a 4-bit base", "--strategy qlora", "qlora", qlora, setup)
            attempt("QLoRA with activation checkpointing", "--strategy qlora --gradient_checkpointing", "qlora",
                    qlora, dataclasses.replace(setup, gradient_checkpointing=True))
    if setup.device == "cuda" and name in ("full", "partial", "lora", "qlora"):
        for n in (2, 4, 8):
            if n > setup.processes and attempt(
                    f"FSDP over {n} GPUs", f"accelerate launch --num_processes {n} --config_file "
                    f"recipes/accelerate/{'fsdp_qlora' if name == 'qlora' else 'fsdp_lora'}.yaml",
                    name, strategy, dataclasses.replace(setup, processes=n, sharding="fsdp")):
                break
    return out


def table(candidates: list[Candidate], limit: int | None, where: str) -> str:
    """The plan as a text table: one row per strategy, memory per process in GiB."""
    head = ("strategy", "trainable", "weights", "grads", "optim", "activ.", "overhead", "peak", "fits")
    rows = [head]
    for c in candidates:
        p = c.plan
        gib = [f"{v / 2**30:.2f}" for v in (p.weights, p.gradients, p.optimizer, p.activations + p.temporaries,
                                             p.overhead, p.peak)]
        gib[-1] = f"{c.peak / 2**30:.2f}"  # with the contrastive stage's, where larger (said below)
        rows.append((c.name, f"{p.trainable:,}", *gib, "?" if c.fits is None else "yes" if c.fits else "NO"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True)))
             for r in rows]
    s = candidates[0].plan.setup
    lines.insert(0, f"Per process, GiB; micro-batch {s.micro_batch} x {s.length} tokens, accumulation "
                 f"{s.accumulation}, {s.processes} process(es){', ' + s.sharding if s.sharding != 'none' else ''}, "
                 f"{s.device}{', ' + s.mixed_precision if s.mixed_precision else ''}"
                 f"{', activation checkpointing' if s.gradient_checkpointing else ''}; memory: "
                 + (f"{human_size(limit)} ({where})" if limit else where))
    for c in candidates:
        if c.stage is not None:
            lines.append(f"{c.name}: the contrastive stage ({c.stage.setup.micro_batch} texts a step per process) "
                         f"peaks at {c.stage.peak / 2**30:.2f} GiB, the classifier's training at "
                         f"{c.plan.peak / 2**30:.2f} (the columns before peak); peak and fits count the larger")
        if c.plan.step_seconds is not None:
            lines.append(f"{c.name}: {c.plan.step_seconds:.2f} s per optimizer step "
                         f"({c.plan.flops_per_step / 1e12:.2f} TFLOP)"
                         + (f", about {c.plan.calibration['run_seconds'] / 60:.1f} min for the run's "
                            f"{c.plan.calibration['run_steps']} steps (evaluation not included)"
                            if c.plan.calibration and c.plan.calibration.get("run_seconds") else "")
                         + ("; the contrastive stage's steps not included" if c.stage is not None else ""))
        for note in c.plan.approximate:
            lines.append(f"{c.name}: approximate: {note}")
        if c.fits is False:
            fixes = [a for a in c.advice if a["fits"]]
            lines.append(f"{c.name} does not fit: " + ("; ".join(f"{a['change']} ({human_size(a['peak'])}: "
                                                                f"{a['flags']})" for a in fixes[:3])
                                                      if fixes else "nothing tried fits; a device with more "
                                                      "memory, or a smaller model"))
    return "\n".join(lines)


def summary(plan: planner.Plan, limit: int | None, where: str) -> str:
    """The plan in one log line."""
    parts = ", ".join(f"{k} {human_size(v)}" for k, v in (
        ("weights", plan.weights), ("gradients", plan.gradients), ("optimizer", plan.optimizer),
        ("activations", plan.activations + plan.temporaries), ("overhead", plan.overhead)) if v)
    return (f"Plan: peak {human_size(plan.peak)} per process ({parts}); "
            + (f"{human_size(limit)} available ({where})." if limit else "available memory unknown."))


def calibrate(task: Any, name: str, strategy: Any, model_args: ModelArguments, setup: planner.Setup,
              plan: planner.Plan, data: dict[str, Any], config) -> None:
    """Time real training steps of the run's model on this device at a quarter and a half of the planned length
    (never the planned batch itself: what is predicted is not what was timed), fit seconds = fixed + FLOPs / rate
    over them, and fill ``plan.step_seconds`` and ``plan.calibration`` (the run's time from its data's lengths
    where they are known). The model loads as training loads it: its weights, or random ones with --random_init."""
    from peftkit.modeling import load_model

    lengths = sorted({max(8, setup.length // 4), max(16, setup.length // 2)}) if setup.length else [0]
    one = dataclasses.replace(setup, accumulation=1)
    flops = {n: plan_candidate(task, name, strategy, model_args, dataclasses.replace(one, length=n), config)
             .flops_per_step for n in lengths}
    flops[setup.length] = plan_candidate(task, name, strategy, model_args, one, config).flops_per_step
    device = torch.device("cuda" if setup.device == "cuda" else "cpu")
    torch.manual_seed(0)
    working = copy.deepcopy(strategy)
    model, head_names = load_model(task, working, model_args, None)
    if model_args.random_init is False and getattr(model.config, "use_cache", None):
        model.config.use_cache = False
    if setup.gradient_checkpointing:
        enable_activation_checkpointing(model)
    model = working.prepare(model, task, head_names).to(device)
    optimizer = planner._optimizer(model, setup.optimizer)
    samples = []
    for n in lengths:
        batch = real_batch(task.example_batch(setup.micro_batch, max(n, 1), config), config, device,
                            language_model=task.peft_task_type == "CAUSAL_LM")
        samples.append((flops[n], planner.time_steps(model, batch, optimizer, steps=2)))
    del model, optimizer
    fit = planner.fit_step_time(samples)
    plan.step_seconds = planner.step_seconds(flops[setup.length], fit) * setup.accumulation
    plan.calibration = {"lengths": lengths, "seconds": [s for _, s in samples], "flops": [f for f, _ in samples],
                        "fixed_seconds": fit[0], "flops_per_second": fit[1]}
    plan.calibration |= run_time(data, setup, flops, fit)


def run_time(data: dict[str, Any], setup: planner.Setup, flops: dict[int, float],
             fit: tuple[float, float]) -> dict[str, Any]:
    """The training run's predicted seconds from its data: each micro-batch's FLOPs at its padded length (the
    lengths sorted into micro-batches, as length grouping does, quadratic in the length through the three
    planned points), a fixed cost per optimizer step, over the run's epochs or --max_steps."""
    import math

    if not data.get("num_train"):
        return {}
    points = sorted(flops.items())
    per_step = setup.micro_batch * setup.processes
    lengths = sorted(data.get("lengths") or [setup.length] * data["num_train"], reverse=True)
    padded = [lengths[i] for i in range(0, len(lengths), per_step)]
    steps_per_epoch = math.ceil(len(padded) / setup.accumulation)
    epoch = sum(planner.step_seconds(_interpolate(points, n), (0.0, fit[1])) for n in padded)
    epoch += fit[0] * steps_per_epoch
    if data.get("max_steps", -1) > 0:
        steps = data["max_steps"]
        seconds = epoch * steps / steps_per_epoch
    else:
        epochs = data.get("epochs") or 1.0
        steps, seconds = math.ceil(steps_per_epoch * epochs), epoch * epochs
    return {"run_steps": steps, "run_seconds": seconds}


def _interpolate(points: list[tuple[int, float]], n: int) -> float:
    """FLOPs at length ``n`` from FLOPs planned at three lengths: the quadratic through them (attention grows
    with the square of the length, the rest linearly); a line with two points."""
    if len(points) < 3:
        (x0, y0), (x1, y1) = points[0], points[-1]
        return y0 + (y1 - y0) * (n - x0) / ((x1 - x0) or 1)
    (x0, y0), (x1, y1), (x2, y2) = points[:3]
    return (y0 * (n - x1) * (n - x2) / ((x0 - x1) * (x0 - x2)) + y1 * (n - x0) * (n - x2) / ((x1 - x0) * (x1 - x2))
            + y2 * (n - x0) * (n - x1) / ((x2 - x0) * (x2 - x1)))


def real_batch(batch: dict[str, torch.Tensor], config, device: torch.device,
                language_model: bool) -> dict[str, torch.Tensor]:
    """The planner's meta batch as a real one: random token ids, a mask of ones, noise for pixels, and labels
    that are the ids for a language model (labels of the ids' shape and a vocabulary's range) or random classes."""
    vocab = getattr(config, "vocab_size", None) or 1000
    classes = getattr(config, "num_labels", None) or 2
    out = {}
    for key, meta in batch.items():
        if meta.is_floating_point():
            out[key] = torch.randn(meta.shape, device=device)
        elif key == "attention_mask":
            out[key] = torch.ones(meta.shape, dtype=meta.dtype, device=device)
        elif key == "input_ids":
            out[key] = torch.randint(0, vocab, meta.shape, device=device)
        else:
            out[key] = torch.randint(0, classes, meta.shape, device=device)
    if language_model and "input_ids" in out:
        out["labels"] = out["input_ids"].clone()
    return out


def stage_micro_batch(pairs: int, processes: int) -> int:
    """Texts each process encodes in a step of the contrastive stage: both sides of ``pairs`` pairs (one
    --contrastive_batch_size), split over ``processes``."""
    return max(1, 2 * pairs // processes)


def smaller_stage_batch(pairs: int, limit: int, peak_of: Callable[[int], int]) -> tuple[int, int] | None:
    """The largest --contrastive_batch_size under ``pairs`` (halving) whose stage fits ``limit``, and its peak
    (``peak_of(pairs)``: the stage's planned peak per process); None if none does."""
    pairs //= 2
    while pairs >= 1:
        if (peak := peak_of(pairs)) <= limit:
            return pairs, peak
        pairs //= 2
    return None


def stage_would_not_fit(train_args, classifier_peak: int, stage_peak: int, limit: int, where: str,
                        peak_of: Callable[[int], int]) -> str:
    """The error of a run whose contrastive stage would not fit: the largest --contrastive_batch_size that would
    (``peak_of(pairs)``: the stage's planned peak per process), and whether the classifier's own training fits."""
    smaller = smaller_stage_batch(train_args.contrastive_batch_size, limit, peak_of)
    return (f"This run would not fit: its contrastive stage ({2 * train_args.contrastive_batch_size} texts a step, "
            f"both sides of --contrastive_batch_size {train_args.contrastive_batch_size} pairs) has a planned peak "
            f"of {human_size(stage_peak)} per process, and {human_size(limit)} is available ({where}). Nothing was "
            "loaded. "
            + (f"--contrastive_batch_size {smaller[0]} would need {human_size(smaller[1])}" if smaller else
               "No smaller --contrastive_batch_size fits")
            + f"; the classifier's own training needs {human_size(classifier_peak)}"
            + (", which fits." if classifier_peak <= limit else ", which does not fit either (`peftkit plan` "
               "with the same flags, without --contrastive, says what would).")
            + " --force trains anyway, and --memory sets the limit if the available figure is wrong.")
