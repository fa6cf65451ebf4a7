"""Defaults derived from the data: what a run that leaves batch size, epochs, evaluation spacing or learning rate to
peftkit gets, and why (the reason is logged and saved in the run). The policy's constants are documented beside the
flags they set, in config.py."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from peftkit.config import (
    AUTO_BATCH_SIZES,
    DEFAULT_EPOCHS,
    EVAL_COST_RATIO,
    MAX_AUTO_EPOCHS,
    MAX_CLASS_EPOCHS,
    MIN_CLASS_VISITS,
    MIN_STEPS,
    TrainingArguments,
)


def _optimizer_steps(train_args: TrainingArguments, num_train: int, num_processes: int, size: int,
                     epochs: float) -> int:
    batches = math.ceil(num_train / (size * num_processes))
    return math.ceil(epochs * math.ceil(batches / train_args.gradient_accumulation_steps))


def epochs_for_classes(num_train: int, num_classes: int) -> float:
    """The fewest epochs (from DEFAULT_EPOCHS to MAX_CLASS_EPOCHS) that show each of ``num_classes`` classes
    MIN_CLASS_VISITS times on average; DEFAULT_EPOCHS when the task has no classes (0)."""
    if num_classes < 2 or not num_train:
        return DEFAULT_EPOCHS
    return float(min(MAX_CLASS_EPOCHS, max(DEFAULT_EPOCHS, math.ceil(MIN_CLASS_VISITS * num_classes / num_train))))


def derive_batch_size(train_args: TrainingArguments, num_train: int, num_processes: int,
                      base_epochs: float = DEFAULT_EPOCHS, min_steps: int = MIN_STEPS) -> tuple[int, str] | None:
    """The per-process batch size of a run that did not set one, and why; None if it was set.

    Small data at batch 32 gets few optimizer steps: 2,000 examples for one epoch are 63 steps, over which
    LoRA on the built-in data learned on some seeds and not on others (test accuracy 0.63 to 0.75 over
    seeds 0-4); at batch 16 (125 steps) all five reached 0.75 or more (2026-11-26). So: the largest of
    32, 16, 8 that gives at least ``min_steps`` optimizer steps over the run (MIN_STEPS unless the task asks for
    more), else 8. ``base_epochs``: the epochs a run that did not set them starts from (``epochs_for_classes``)."""
    if train_args.per_device_train_batch_size is not None:
        return None
    if train_args.max_steps > 0:
        return AUTO_BATCH_SIZES[0], f"--max_steps {train_args.max_steps} fixes the number of steps"
    epochs = train_args.num_train_epochs or base_epochs

    def steps(size: int) -> int:
        return _optimizer_steps(train_args, num_train, num_processes, size, epochs)

    size = next((b for b in AUTO_BATCH_SIZES if steps(b) >= min_steps), AUTO_BATCH_SIZES[-1])
    why = (f"{num_train:,} training examples, {epochs:g} epoch(s), {num_processes} process(es): {steps(size)} "
           "optimizer steps")
    if size != AUTO_BATCH_SIZES[0]:
        why += (f" (batch {AUTO_BATCH_SIZES[0]} would give {steps(AUTO_BATCH_SIZES[0])}; small data needs enough "
                f"steps to learn, at least {min_steps} where the batch size allows)")
    return size, why


def derive_epochs(train_args: TrainingArguments, num_train: int, num_processes: int, num_classes: int = 0,
                  min_steps: int = MIN_STEPS) -> tuple[float, str] | None:
    """The number of epochs of a run that did not set one (after its batch size is known), and why.

    DEFAULT_EPOCHS, or more for a classification task whose classes would each be seen fewer than
    MIN_CLASS_VISITS times (``epochs_for_classes``), or more again if the run would stay under ``min_steps``
    optimizer steps (100 examples at batch 8 are 13 steps an epoch), at most MAX_AUTO_EPOCHS. The best
    validation epoch is what is kept, so the extra epochs cannot make the saved model worse on validation.
    Where even MAX_AUTO_EPOCHS stay under ``min_steps``, the reason says so (``too_few_steps`` warns)."""
    if train_args.num_train_epochs is not None:
        return None
    if train_args.max_steps > 0:
        return DEFAULT_EPOCHS, f"--max_steps {train_args.max_steps} fixes the number of steps"
    size = train_args.per_device_train_batch_size
    per_epoch = _optimizer_steps(train_args, num_train, num_processes, size, 1)
    for_classes = epochs_for_classes(num_train, num_classes)
    epochs = float(min(MAX_AUTO_EPOCHS, max(for_classes, math.ceil(min_steps / per_epoch))))
    why = f"{per_epoch} optimizer steps per epoch at batch {size} x {num_processes} process(es)"
    if for_classes > DEFAULT_EPOCHS:
        why += (f"; {num_train:,} examples in {num_classes} classes: {for_classes:g} epochs show each class about "
                f"{MIN_CLASS_VISITS} times on average ({DEFAULT_EPOCHS:g} would show it "
                f"{DEFAULT_EPOCHS * num_train / num_classes:.0f})")
    if epochs > for_classes:
        why += (f"; {for_classes:g} epochs would give {math.ceil(for_classes * per_epoch)} steps, and small data "
                f"needs at least {min_steps} to learn")
    if epochs == MAX_AUTO_EPOCHS and epochs * per_epoch < min_steps:
        why += f" (at most {MAX_AUTO_EPOCHS} epochs)"
    return epochs, why + f": {math.ceil(epochs * per_epoch)} steps"


def too_few_steps(train_args: TrainingArguments, num_train: int, num_processes: int, min_steps: int = MIN_STEPS
                  ) -> str | None:
    """The warning for a run whose derived schedule (after ``derive_defaults``) still gives fewer than
    ``min_steps`` optimizer steps: data too small even for MAX_AUTO_EPOCHS at the smallest batch. None where
    the run has its steps, or where the user chose the epochs or steps."""
    if train_args.max_steps > 0 or not num_train:
        return None
    steps = _optimizer_steps(train_args, num_train, num_processes, train_args.per_device_train_batch_size,
                             train_args.num_train_epochs)
    if steps >= min_steps:
        return None
    return (f"Only {num_train:,} training examples: {train_args.num_train_epochs:g} epochs at batch "
            f"{train_args.per_device_train_batch_size} give {steps} optimizer steps, under the {min_steps} this "
            "task needs to learn reliably. Expect weak results: label more examples, or set --num_train_epochs or "
            "--max_steps yourself.")


def derive_eval_every_epochs(train_args: TrainingArguments, num_train: int, num_validation: int
                             ) -> tuple[int, str] | None:
    """Every how many epochs a run that did not say evaluates (after its epochs are known), and why.

    Every epoch, unless the validation set is so much larger than the training data that evaluating after each
    epoch would cost more than training (EVAL_COST_RATIO): 100 training examples for 8 epochs against 1,258
    validation ones are evaluated every 4 epochs, twice (each evaluation there costs about 3x an epoch)."""
    if train_args.eval_every_epochs is not None or not num_validation:
        return None
    epochs = math.ceil(train_args.num_train_epochs or DEFAULT_EPOCHS)
    affordable = math.ceil(EVAL_COST_RATIO * num_train * epochs / num_validation)
    every = math.ceil(epochs / max(1, min(epochs, affordable)))
    why = f"{num_train:,} training examples for {epochs} epoch(s), {num_validation:,} validation examples"
    if every == 1:
        return 1, why + ": every epoch"
    cost = num_validation / EVAL_COST_RATIO / num_train
    return every, (why + f": an evaluation after each epoch would cost about {cost:.1f}x the epoch, so every {every} "
                   f"epochs and at the end ({math.ceil(epochs / every)} evaluations)")


def derive_learning_rate(train_args: TrainingArguments, num_processes: int, default: float,
                         reference_batch: int | None) -> tuple[float, str] | None:
    """The learning rate of a run that left both its batch size and its learning rate to peftkit, where the batch
    derived for small data is smaller than the one the strategy's default rate was chosen at; and why. None
    where the default stands (called after the batch size is derived, and only if it was).

    A strategy's ``lr_reference_batch`` is the global batch its ``default_learning_rate`` was chosen at. A smaller
    derived global batch takes that rate x sqrt(batch / reference): the square-root rule for Adam (Malladi et al.
    2022, "On the SDEs and scaling rules for adaptive gradient algorithms"). The runner asks for it only where
    the task says its data wants it (``lr_follows_batch``): with LoRA on 300 WNUT-16 sentences at batch 8
    (2026-11-27, seeds 42/43/44, entity F1) 2e-3 gave 0.256 / 0.087 / 0.314 and 1e-3 = 2e-3 x sqrt(8/32) gave
    0.280 / 0.317 / 0.329 (on the whole data at batch 32, 2e-3 stays ahead of 1e-3: 0.401 against 0.366); on
    300 built-in reviews at batch 8, 1e-3 learned too slowly in the 152 steps (test accuracy 0.720 against 0.742
    at 2e-3). A batch the user (or the task's defaults) chose keeps the strategy's rate. Only for Adam-type
    optimizers."""
    if train_args.learning_rate is not None or not reference_batch or train_args.optimizer not in ("adamw", "adam"):
        return None
    batch = train_args.per_device_train_batch_size * num_processes * train_args.gradient_accumulation_steps
    if batch >= reference_batch:
        return None
    lr = float(f"{default * math.sqrt(batch / reference_batch):.3g}")
    return lr, (f"the strategy's default {default:g} is for a batch of {reference_batch}; the batch of {batch} "
                f"derived for this data takes it x sqrt({batch}/{reference_batch}) (square-root scaling for Adam)")


def derive_defaults(train_args: TrainingArguments, num_train: int, num_validation: int,
                    num_processes: int, num_classes: int = 0, min_steps: int = MIN_STEPS,
                    default_learning_rate: float = 0.0, lr_reference_batch: int | None = None
                    ) -> tuple[TrainingArguments, dict[str, dict[str, Any]]]:
    """The settings a run left to peftkit, filled in: batch size, then epochs, then evaluation spacing, then the
    learning rate (each may depend on the ones before). Returns new arguments (``train_args`` is not changed) and
    ``{flag: {"value", "why"}}`` for each one derived. ``num_classes``: a classification task's label
    count (0: none); ``min_steps``: the optimizer steps the task needs at least (its ``min_steps``, else
    MIN_STEPS); ``default_learning_rate`` and ``lr_reference_batch``: the strategy's (``derive_learning_rate``).
    """
    derived: dict[str, dict[str, Any]] = {}
    base = epochs_for_classes(num_train, num_classes)

    def take(name: str, result: tuple[Any, str] | None) -> None:
        nonlocal train_args
        if result:
            train_args = dataclasses.replace(train_args, **{name: result[0]})
            derived[name] = {"value": result[0], "why": result[1]}

    take("per_device_train_batch_size", derive_batch_size(train_args, num_train, num_processes, base, min_steps))
    take("num_train_epochs", derive_epochs(train_args, num_train, num_processes, num_classes, min_steps))
    take("eval_every_epochs", derive_eval_every_epochs(train_args, num_train, num_validation))
    if "per_device_train_batch_size" in derived:  # the rate follows a derived batch only
        take("learning_rate", derive_learning_rate(train_args, num_processes, default_learning_rate,
                                                   lr_reference_batch))
    return train_args, derived
