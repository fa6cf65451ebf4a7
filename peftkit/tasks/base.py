"""The task contract: what a task plug-in must write (the abstract methods of :class:`Task`) and what it may
(documented hooks whose defaults do nothing, or the general thing).

A task is a dataclass whose fields are its own flags. Built-in tasks keep those fields in a light class of their
own (``tasks/flags.py``, a :class:`TaskFlags`) so that ``--help`` loads no torch, and subclass it together with
:class:`Task`; a plug-in may put its flags on the task class itself::

    @dataclass
    class MyTask(Task):
        my_flag: int = field(default=3, metadata={"help": "..."})
        name: ClassVar[str] = "my_task"
        ...

This module imports neither torch nor transformers: the argument parser reads :class:`TaskDefaults` from it.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from peftkit.config import MIN_STEPS, DataArguments
from peftkit.errors import PeftkitError, check

if TYPE_CHECKING:  # only in method signatures: a plug-in's flags are read from its class annotations, which must
    import torch  # resolve without them (transformers' HfArgumentParser reads them, ClassVars included)
    from datasets import DatasetDict


@dataclass(frozen=True)
class TaskDefaults:
    """A task's training policy where it differs from the general one."""

    min_steps: int = MIN_STEPS
    """Optimizer steps a run with derived defaults gets at least (token_cls: 300)."""
    learning_rates: Mapping[str, float] = field(default_factory=dict)
    """Default rates of some strategies for this task, where they differ from the strategy's own (image_cls: full
    and partial 3e-4, for CNNs)."""
    lr_follows_batch: bool = False
    """A batch derived for small data under the one a strategy's default rate was chosen at scales that rate by
    sqrt(batch / reference) (``derive_learning_rate``; token_cls)."""
    training: Mapping[str, Any] = field(default_factory=dict)
    """Defaults of general flags for this task (causal_lm: the built-in LM, batch 8, 512 tokens, 1 epoch)."""


class TaskFlags:
    """Base of a task's flags dataclass: its fields are the task's flags, ``defaults`` its training policy."""

    defaults: ClassVar[TaskDefaults] = TaskDefaults()


class Task(TaskFlags, ABC):
    """What is learned: model class, processor, batches, evaluation, prediction. Nothing outside ``tasks/``
    knows which task runs: the engine, the runner, ``load_run``, ``eval``/``predict``, merge parity and the
    benchmark suite go through this contract.

    Every task sets the four class attributes ``name``, ``auto_class``, ``metrics`` and ``default_metric`` and
    writes the abstract methods. ``self.data`` is the run's DataArguments (set by ``TaskSpec.build``)."""

    name: ClassVar[str]
    auto_class: ClassVar[type]
    """The transformers Auto class the model is loaded with (``AutoModelForSequenceClassification``, ...)."""
    metrics: ClassVar[dict[str, str]]
    """Every metric ``compute_metrics`` returns -> ``"max"`` or ``"min"`` (which is better)."""
    default_metric: ClassVar[str]
    """What selects the best checkpoint unless --metric_for_best_model says."""
    parity_metric: ClassVar[str | None] = None
    """The metric `peftkit merge` reports for the adapter and the merged model (default: ``default_metric``)."""
    peft_task_type: ClassVar[str | None] = None
    """peft's TaskType name (``SEQ_CLS``, ``CAUSAL_LM``, ...); None: a plain PeftModel."""
    pipeline_tag: ClassVar[str | None] = None
    """transformers' pipeline for the saved model (named in the model card)."""
    kind: ClassVar[str] = ""
    """What the Auto class builds, for messages ("sequence-classification head")."""
    builtin_dataset: ClassVar[Callable[[], Any] | None] = None
    """The data when none is named (a function returning a DatasetDict); None: the user must name data."""
    builtin_datasets: ClassVar[tuple[Callable[[], Any], ...]] = ()
    """More built-in data, read when --dataset_name names one (each function's ``dataset_name``)."""
    labels: Sequence[str] = ()
    """The run's label names, in id order (empty for tasks without labels)."""
    draws_per_class: ClassVar[bool] = False
    """One label per example in ``--label_column``: --shots can draw K examples of each class."""
    pairs_stage: ClassVar[bool] = False
    """The contrastive stage (--contrastive) applies: the model's backbone gives one pooled vector per example that
    the head reads, and :meth:`train_embeddings` makes it the vector the stage trains."""
    data: DataArguments

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if inspect.isabstract(cls):
            return
        missing = [a for a in ("name", "auto_class", "metrics", "default_metric") if not hasattr(cls, a)]
        if missing:
            raise TypeError(f"Task {cls.__name__} must set the class attribute(s) {', '.join(missing)}.")
        if cls.default_metric not in cls.metrics:
            raise TypeError(f"Task {cls.__name__}: default_metric {cls.default_metric!r} is not one of its metrics "
                            f"({', '.join(cls.metrics)}).")

    # -- required -------------------------------------------------------------------------------------
    @abstractmethod
    def load_processor(self, source):
        """The tokenizer / image processor, from the model (``ModelArguments``) or a run directory (a path)."""

    @abstractmethod
    def discover(self, raw: DatasetDict) -> dict[str, Any]:
        """Check the columns and find the label space of ``raw``; return it as the state saved in the run (JSON),
        which :meth:`restore` puts back."""

    @abstractmethod
    def restore(self, state: dict[str, Any]) -> None:
        """Put a saved state (what :meth:`discover` and :meth:`prepare_model` returned) back, loading a run."""

    @abstractmethod
    def preprocess(self, raw: DatasetDict, processor) -> DatasetDict:
        """Every split of ``raw`` as model inputs (unpadded; the collator pads each batch). Training passes train,
        validation and test; evaluating a run passes only the split evaluated."""

    @abstractmethod
    def collator(self, processor) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
        """Turns a list of preprocessed rows into a batch."""

    @abstractmethod
    def loss_units(self, batch: dict[str, torch.Tensor]) -> int:
        """What the model's own loss averages over in ``batch`` (examples, tokens): gradient accumulation weighs
        each batch by it."""

    @abstractmethod
    def eval_rows(self, outputs, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Small per-example rows (prediction, label, summed loss, ...), gathered across processes."""

    @abstractmethod
    def compute_metrics(self, rows: dict[str, torch.Tensor]) -> dict[str, float]:
        """Every metric of ``metrics``, once, from all examples' rows."""

    @abstractmethod
    def read_inputs(self, path: str | None, columns: dict[str, str | None]) -> list[dict[str, Any]]:
        """What ``peftkit predict`` reads from ``path`` (None or ``-``: stdin); ``columns``: the column flags
        given."""

    @abstractmethod
    def predict(self, model, processor, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One output row per input (label and probabilities, tags, generated text, ...)."""

    # -- optional hooks ----------------------------------------------------------------------------------
    def model_kwargs(self) -> dict[str, Any]:
        """Model-config overrides (``num_labels``, ``id2label``, ...)."""
        return {}

    def new_modules(self, model) -> list[str]:
        """Modules the task creates and trains fully (a classifier head); none for a language model."""
        return []

    def prepare_model(self, model, model_dir: str | None = None) -> dict[str, Any]:
        """Change what the model computes, after the strategy prepared it (``model_dir`` given) and on every load
        of a run (text_cls: --pooling); returns state to save in the run."""
        return {}

    def not_plain_reason(self) -> str | None:
        """Why plain transformers would run the saved model differently (merge then refuses, the model card says
        so); None: it would not."""
        return None

    def check_known_labels(self, raw: DatasetDict) -> None:
        """Check evaluation data against the run's label space (labels training never saw, missing columns)."""
        return None

    def load_raw(self, data_args: DataArguments) -> tuple[DatasetDict, str] | None:
        """The task's own data source (image_cls: folders) and its description; None: data files, the Hub or
        the built-in data, as for every task."""
        return None

    def forward(self, model, batch: dict[str, torch.Tensor]):
        """The outputs that training (their ``loss``; ``logits`` for a batch without loss units), :meth:`eval_rows`
        and :meth:`parity_logits` read. Default: the model's own forward on the batch's model inputs. A task whose
        loss takes more than one pass (preference: both answers of a pair, and the reference model) runs them here.
        """
        from peftkit.evaluation import model_inputs

        return model(**model_inputs(batch))

    def loss_inputs(self, outputs, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and labels, one row per predicted label, for --loss, --label_smoothing and --class_weights."""
        raise PeftkitError(f"--loss, --class_weights and --label_smoothing need logits and labels from the task, "
                           f"and task {self.name!r} does not provide them.")

    def has_loss_inputs(self) -> bool:
        """Whether this task writes :meth:`loss_inputs` (the contract's default refuses): asked before any work,
        so that --loss and the like are refused at once."""
        return type(self).loss_inputs is not Task.loss_inputs

    def class_counts(self, train) -> torch.Tensor | None:
        """Training examples per class in label order (--class_weights balanced); None: no classes."""
        return None

    def parity_logits(self, outputs, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The logits a merged model must reproduce, as (n, classes)."""
        logits = outputs.logits.float()
        return logits.reshape(-1, logits.shape[-1])

    def final_evaluation(self, acc, model, processor, raw: DatasetDict, output_dir: Path | None,
                         stage: str) -> dict[str, Any] | None:
        """An evaluation after training, and of the base before it (``stage`` "base"/"fine_tuned"), beyond the
        loop's metrics (causal_lm: generation on held-out prompts). Every process takes part. None: none."""
        return None

    def check_inputs(self, inputs: list[dict[str, Any]]) -> None:
        """Check what ``predict`` will read, before any model is loaded."""
        check(bool(inputs), "Nothing to predict: the input was empty.")

    def headline(self, results: dict[str, Any]) -> str:
        """The line the CLI prints at the end of a run."""
        test = results.get("test") or {}
        metric = self.default_metric
        return (f"validation {metric} {results['eval'][metric]:.4f}"
                + (f", test {metric} {test[metric]:.4f}" if metric in test else ""))

    def features_fixed(self) -> bool:
        """False when the training inputs change each epoch (augmentation): a frozen backbone's features then
        cannot be cached."""
        return True

    def train_embeddings(self) -> None:
        """Called before :meth:`prepare_model` when the contrastive stage will train the pooled embedding (tasks
        with ``pairs_stage``): the head must read that embedding. Default: nothing."""
        return None

    def start_epoch(self, collator, epoch: int, seed: int) -> None:
        """Called before each training epoch (image_cls: each example's augmentation follows run seed, epoch and
        example, so that resumption and N processes stay exact)."""
        return None

    def example_batch(self, batch_size: int, length: int, config) -> dict[str, torch.Tensor]:
        """A training batch of this shape (``batch_size`` examples of ``length`` tokens) on the meta device, for
        the planner, which runs it through the model without data. Default: token ids and one label per
        example."""
        import torch

        ids = torch.zeros(batch_size, length, dtype=torch.long, device="meta")
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                "labels": torch.zeros(batch_size, dtype=torch.long, device="meta")}

    def lora_targets(self, model, head_names: list[str]) -> list[str] | None:
        """What LoRA adapts when the user names nothing; None: peft's default for the architecture."""
        return None

    def analyze_split(self, model, processor, raw: DatasetDict, data: DatasetDict, batch_size: int, out: Path,
                      top_k: int) -> dict[str, Any] | None:
        """The task's own ``peftkit analyze`` (token_cls: entity types; causal_lm: worst generations). None: the
        general analysis of one label per example (``peftkit/analysis.py``)."""
        return None
