"""Task registry: what is learned (model class, processor, batches, evaluation, prediction).

A task is a small dataclass whose fields are its own flags (none for text_cls; the column names and
generation settings for causal_lm), registered by name like a strategy, with presets for variants.
Third-party packages add tasks through the entry-point group ``peftkit.tasks``. Nothing outside
``peftkit/tasks/`` knows which task runs: the engine, the runner, ``load_run``, ``eval``/``predict``, merge
parity and the benchmark suite go through the contract below.

Class attributes::

    name, auto_class, peft_task_type, pipeline_tag
    metrics: dict[str, str]      # every metric compute_metrics returns -> "max" or "min" (which is better)
    default_metric: str          # what selects the best checkpoint unless --metric_for_best_model says
    min_steps: int               # optional: optimizer steps a run with derived defaults gets at least
                                 # (config.MIN_STEPS = 100 unless the task needs more; token_cls: 300)
    learning_rates: dict[str, float]   # optional: default rates of some strategies for this task, where they differ
                                 # from the strategy's own (image_cls: full 3e-4, for CNNs)
    lr_follows_batch: bool       # optional (default False): a batch derived for small data under the one a
                                 # strategy's default rate was chosen at scales that rate by sqrt(batch /
                                 # reference) (config.derive_learning_rate; token_cls: True)

Methods (``self.data`` is the run's DataArguments, set by :meth:`TaskSpec.build`)::

    load_processor(model_args or run_dir)   # tokenizer / image processor; saved beside the weights
    discover(raw) -> dict                   # check columns, find the label space; saved in the run
    restore(state)                          # put a saved label space back (loading a run)
    model_kwargs() -> dict                  # config overrides (num_labels, id2label, ...)
    new_modules(model) -> list[str]         # modules created for the task and trained fully (none for an LM)
    prepare_model(model, model_dir=None) -> dict   # optional: change what the model computes (text_cls:
                                            # --pooling) after the strategy prepared it (model_dir given) and
                                            # on every load of a run; returns state to save in the run
    not_plain_reason() -> str | None        # optional: why plain transformers would run the saved model
                                            # differently (then merge refuses, the model card says so)
    preprocess(raw, processor) -> DatasetDict ; collator(processor)
    loss_units(batch) -> int                # what the model's own loss averages over (examples, tokens)
    loss_inputs(outputs, batch) -> (logits, labels)  # optional: one row per predicted label, for --loss,
                                            # --label_smoothing, --class_weights (peftkit/losses.py)
    class_counts(train) -> Tensor           # optional: examples per class (--class_weights balanced)
    eval_rows(outputs, batch) -> dict[str, Tensor]   # small per-example rows, gathered across processes
    compute_metrics(rows) -> dict[str, float]        # once, from every example's rows
    parity_logits(outputs, batch) -> Tensor          # the logits a merge must reproduce, as (n, classes)
    final_evaluation(acc, model, processor, raw, output_dir, stage) -> dict | None
                                            # after training, and of the base before it (e.g. generation)
    read_inputs(path, columns) -> list[dict] ; check_inputs(inputs)   # what `peftkit predict` reads
    predict(model, processor, inputs) -> list[dict]
    headline(results) -> str                # the line the CLI prints at the end of a run

Optional, used where present::

    load_raw(data_args) -> (DatasetDict, description) | None   # the task's own data source (image_cls: folders)
    features_fixed() -> bool                # False when the training inputs change each epoch (augmentation):
                                            # the head strategy's feature cache is then not used
    lora_targets(model, head_names) -> list[str] | None   # what LoRA adapts when the user names nothing
                                            # (image_cls: a CNN's convolutions, where peft has no default)
    analyze_split(model, processor, raw, data, batch_size, out_dir, top_k) -> dict   # the task's own `peftkit
                                            # analyze` (token_cls: entity types; causal_lm: worst generations);
                                            # without it, analysis reads one label per example (peftkit/analysis.py)

A collator may have ``set_epoch(epoch, seed=...)``: the engine calls it before each training epoch (image_cls
seeds each example's augmentation from run seed, epoch and example, so resumption and N processes stay exact).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from peftkit.registry import Registry, Spec

ENTRY_POINT_GROUP = "peftkit.tasks"


@dataclass(frozen=True)
class TaskSpec(Spec):
    """A registered task: its class and the field values its name presets."""

    def build(self, data_args, **overrides: Any):
        """The task with its flags (preset, then ``overrides``) and the run's data arguments."""
        fields = {f.name for f in dataclasses.fields(self.cls)} if dataclasses.is_dataclass(self.cls) else set()
        task = self.cls(**{k: v for k, v in {**self.preset, **overrides}.items() if k in fields})
        task.data = data_args
        return task


REGISTRY = Registry("task", ENTRY_POINT_GROUP, spec=TaskSpec)


def register(name: str, cls: type | str, flags: type | None = None, **preset: Any) -> None:
    """Register task class ``cls`` (or ``"module:Class"``, imported on first use) under ``name``, with ``preset``
    field values as its defaults; ``flags``: the dataclass of its flags, when not ``cls`` itself."""
    REGISTRY.register(name, cls, flags, **preset)


def get_task(name: str) -> TaskSpec:
    """The registered task ``name`` (built-in or plug-in)."""
    return REGISTRY.get(name)


def available() -> list[str]:
    return REGISTRY.available()


def task_fields(task) -> dict[str, Any]:
    """A task's flag values, as saved in the run's config."""
    return dataclasses.asdict(task) if dataclasses.is_dataclass(task) else {}


def build_from_config(cfg: dict[str, Any], data_args):
    """The task of a saved run, its label space restored."""
    task = get_task(cfg["task"]).build(data_args, **cfg.get("task_args", {}))
    state = cfg.get("task_state")
    if state is None:  # runs from before task_state was recorded (text_cls only)
        state = {"labels": cfg.get("labels"), "label_type": cfg.get("label_type", "str")}
    task.restore(state)
    return task


def prepare_model(task, model, model_dir: str | None = None) -> dict[str, Any]:
    """The task's optional model change (see the contract above); what it returns joins the run's task_state."""
    fn = getattr(task, "prepare_model", None)
    return (fn(model, model_dir) or {}) if fn else {}


def not_plain_reason(task) -> str | None:
    fn = getattr(task, "not_plain_reason", None)
    return fn() if fn else None


from peftkit.tasks.flags import CausalLMFlags, ImageClsFlags, TextClsFlags, TokenClsFlags  # noqa: E402

register("text_cls", "peftkit.tasks.text_cls:TextClassification", TextClsFlags)
register("causal_lm", "peftkit.tasks.causal_lm:CausalLM", CausalLMFlags)
register("token_cls", "peftkit.tasks.token_cls:TokenClassification", TokenClsFlags)
register("image_cls", "peftkit.tasks.image_cls:ImageClassification", ImageClsFlags)

_CLASSES = {"TextClassification": "text_cls", "CausalLM": "causal_lm", "TokenClassification": "token_cls",
            "ImageClassification": "image_cls"}


def __getattr__(name: str) -> Any:
    """``from peftkit.tasks import TextClassification`` still works: the classes load on first use (PEP 562)."""
    if name in _CLASSES:
        import importlib

        return getattr(importlib.import_module(f"peftkit.tasks.{_CLASSES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
