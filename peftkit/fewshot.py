"""Few-shot classification (--contrastive, --shots): the pair stage run by the engine before the classifier trains
(peftkit/contrastive.py), what it leaves trainable afterwards, and the seeded per-class draw of training examples."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from accelerate.utils import set_seed
from datasets import DatasetDict, concatenate_datasets
from safetensors.torch import load_file, save_file

from peftkit import checkpoint
from peftkit.config import TrainingArguments
from peftkit.contrastive import PairCollator, PairEncoder, PairObjective, pair_counts, pair_dataset, setfit_count
from peftkit.distributed import on_main, restore_trainable, sharded
from peftkit.engine import Engine
from peftkit.errors import check
from peftkit.layout import atomic_write_text, remove_checkpoints
from peftkit.modeling import is_head_parameter

logger = logging.getLogger(__name__)

STAGE_DIR = "peftkit_contrastive"  # the stage's checkpoints, then its weights, until the run has finished
STAGE_WEIGHTS = "weights.safetensors"
STAGE_RECORD = "stage.json"
VALIDATION_PAIRS = 512  # pairs of validation examples the stage is evaluated (and its best epoch chosen) on
# Pairs per training example at least, by default: SetFit's earlier default (num_iterations=20: 20 positive and 20
# negative pairs per example). On 8 built-in reviews of each class (full, 5e-5, seeds 0-2, 2026-12-07), 640 pairs gave
# test accuracy 0.682 / 0.663 / 0.687, where SetFit 1.2's default of every pair of the larger kind (144) gave 0.638 /
# 0.634 / 0.671 here and 0.643 / 0.624 / 0.661 in the setfit library.
PAIRS_PER_EXAMPLE = 40
# ... or SetFit 1.2's count where that is more, up to this many pairs (its count grows with the square of the
# examples). On 64 built-in reviews of each class (seeds 0-4, 2026-12-07), its 8,320 pairs gave test accuracy 73.5
# on average (worst seed 72.4) where 40 per example (5,120) gave 72.6 (worst 70.6); SetFit itself 73.4 (72.4).
SETFIT_PAIRS_CAP = 25_000


GUIDE = Path(__file__).with_name("fewshot_guide.json")  # docs/gen_benchmarks.py writes it from the committed results


def guidance(counts: dict[str, int], strategy: str, contrastive: bool) -> str | None:
    """What peftkit's few-shot benchmark found best for about this many examples per class (the largest size it
    measured at or below the run's smallest class, else its smallest; on the result with the nearest number of
    classes), for the log; None when every class has more examples than the benchmark's largest size, or without
    a readable guide."""
    if not counts or not GUIDE.is_file():
        return None
    try:
        return advice(json.loads(GUIDE.read_text()), counts, strategy, contrastive)
    except (ValueError, KeyError, TypeError, IndexError) as exc:  # a log line: never the reason a run fails
        logger.debug("No few-shot guidance: %s is not as peftkit writes it (%s).", GUIDE, exc)
        return None


def advice(guide: dict[str, Any], counts: dict[str, int], strategy: str, contrastive: bool) -> str | None:
    sets = [s for s in guide["sets"] if s["shots"]]
    if not sets:
        return None
    chosen = min(sets, key=lambda s: abs((s["classes"] or 2) - len(counts)))
    sizes = sorted(int(k) for k in chosen["shots"])
    label, fewest = min(counts.items(), key=lambda kv: kv[1])
    if fewest > sizes[-1]:
        return None
    size = max([k for k in sizes if k <= fewest], default=sizes[0])
    rows = chosen["shots"][str(size)]
    ranked = "; ".join(f"{r['how']} {r['mean']:.1f} +- {r['sd']:.1f} (worst seed {r['worst']:.1f})" for r in rows)
    this = f"--strategy {strategy}" + (" --contrastive" if contrastive else "")
    classes = f", {chosen['classes']} classes" if chosen["classes"] else ""
    at = f"at {size} per class" + (", the smallest size it measured," if size > fewest else "")
    return (f"Few examples per class: {fewest} of {label!r}, the fewest. On peftkit's few-shot benchmark {at} "
            f"({chosen['dataset']}{classes}, {rows[0]['seeds']} seeds; {guide['page']}), test accuracy, best "
            f"first: {ranked}. This run: {this}.")


def stage_arguments(args: TrainingArguments, stage_dir: Path, num_processes: int) -> TrainingArguments:
    """The stage's own run of the engine: SetFit's schedule (--contrastive_batch_size pairs a step, 10% warmup,
    linear decay) over --contrastive_epochs; the classification-only settings off."""
    check(args.contrastive_batch_size % num_processes == 0,
          f"--contrastive_batch_size {args.contrastive_batch_size} does not split evenly over {num_processes} "
          "processes; pass a multiple of the process count.")
    return dataclasses.replace(
        args, output_dir=str(stage_dir), per_device_train_batch_size=args.contrastive_batch_size // num_processes,
        gradient_accumulation_steps=1, num_train_epochs=args.contrastive_epochs, max_steps=-1, warmup_ratio=0.1,
        warmup_steps=0, lr_scheduler_type="linear", loss="cross_entropy", class_weights="none", label_smoothing=0.0,
        group_by_length=False, eval_every_epochs=1, eval_steps=0, early_stopping_patience=0,
        metric_for_best_model=None, resume_from_checkpoint=None, auto_batch_size=False)


def default_pairs(classes: list[int]) -> tuple[int, str]:
    """How many pairs the stage trains on by default, and why: SetFit 1.2's count (every pair of the larger kind, and
    as many of the other), up to SETFIT_PAIRS_CAP, but never fewer than PAIRS_PER_EXAMPLE per training example."""
    positive, negative = pair_counts(classes)
    setfit = setfit_count(classes)
    floor = PAIRS_PER_EXAMPLE * len(classes)
    count = max(floor, min(setfit, SETFIT_PAIRS_CAP))
    rule = (f"{PAIRS_PER_EXAMPLE} per training example" if count == floor else
            "SetFit's count, every pair of the larger kind and as many of the other" if count == setfit else
            f"SetFit's count of {setfit}, capped")
    return count, f"{rule}, half positive: of {positive} positive and {negative} negative pairs"


def contrastive_stage(run) -> dict[str, Any]:
    """Train ``run.model``'s embedding on pairs (the stage's best validation epoch kept); the classifier's head
    stays as it was. A finished stage is saved whole in ``<output_dir>/peftkit_contrastive`` and loaded again
    when the run resumes; an interrupted one resumes from its own checkpoint. The random generators are left as
    they were, so that the classifier's training is the same whether the stage ran or was loaded."""
    acc, model = run.acc, run.model
    check(not sharded(acc), "--contrastive is not supported under FSDP or DeepSpeed yet: train with DDP.")
    stage_dir = run.output_dir / STAGE_DIR
    names = {n for n, p in model.named_parameters() if p.requires_grad and not is_head_parameter(n, run.head_names)}
    check(bool(names), f"--contrastive trains the model below its head, and strategy {run.strategy_name!r} trains "
          "only the head: use full, lora or another strategy that adapts the backbone.")
    # The head takes no part in the stage: frozen meanwhile (under DDP, a trainable parameter that gets no gradient
    # is an error).
    head = [p for n, p in model.named_parameters() if p.requires_grad and is_head_parameter(n, run.head_names)]
    generators = checkpoint.rng_states(None)
    try:
        for param in head:
            param.requires_grad_(False)
        if (stage_dir / STAGE_RECORD).is_file():
            record = json.loads((stage_dir / STAGE_RECORD).read_text())
            tensors = load_file(stage_dir / STAGE_WEIGHTS) if acc.is_main_process else {}
            restore_trainable(acc, model, names, tensors)
            logger.info("Contrastive stage: loaded from %s (it finished before the interruption).", stage_dir)
            return record
        record = _train_stage(run, stage_dir, names)
    finally:
        checkpoint.restore_rng(generators["tensors"], generators["json"])
        for param in head:
            param.requires_grad_(True)
    return record


def _train_stage(run, stage_dir: Path, names: set[str]) -> dict[str, Any]:
    args, acc, model, data = run.train_args, run.acc, run.model, run.data
    classes = list(data["train"]["labels"])
    count, why = (args.contrastive_pairs, "--contrastive_pairs") if args.contrastive_pairs else default_pairs(classes)
    # One table of examples for the collator: the training examples, then the validation ones.
    examples = concatenate_datasets([data["train"], data["validation"]])
    pairs = DatasetDict(train=pair_dataset(data["train"], args.seed, count),
                        validation=pair_dataset(data["validation"], args.seed + 1, VALIDATION_PAIRS,
                                                offset=len(data["train"])))
    stage_args = stage_arguments(args, stage_dir, acc.num_processes)
    lr = (args.contrastive_learning_rate or run.strategy.contrastive_learning_rate
          or run.strategy.default_learning_rate)
    logger.info("Contrastive stage: %d pairs of %d training examples (%s), %g epoch(s) at batch %d, learning rate %g, "
                "%s loss.", len(pairs["train"]), len(classes), why, args.contrastive_epochs,
                args.contrastive_batch_size, lr, args.contrastive_loss)
    if acc.is_main_process:
        stage_dir.mkdir(parents=True, exist_ok=True)
    resume = None
    if run.train_args.resume_from_checkpoint and checkpoint.list_checkpoints(stage_dir):
        resume = on_main(acc, lambda: checkpoint.resolve(stage_dir, "latest"))
    set_seed(args.seed)
    encoder = PairEncoder(model, args.contrastive_loss)
    engine = Engine(acc, PairObjective(), encoder, pairs, PairCollator(examples, run.task.collator(run.processor)),
                    stage_args, lr, stage_dir, use_feature_cache=False)
    fit = engine.fit(resume)
    record = {"pairs": len(pairs["train"]), "pairs_why": why, "epochs": args.contrastive_epochs,
              "batch_size": args.contrastive_batch_size, "learning_rate": lr, "loss": args.contrastive_loss,
              "steps": fit.global_step, "train_runtime_s": round(fit.train_runtime_s, 3), "validation": fit.eval,
              "validation_pairs": len(pairs["validation"])}
    if acc.is_main_process:  # written whole, then the record that says it is there
        tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if n in names}
        save_file(tensors, stage_dir / STAGE_WEIGHTS)
        atomic_write_text(stage_dir / STAGE_RECORD, json.dumps(record, indent=2))
        remove_checkpoints(stage_dir)
    acc.free_memory()  # the stage's prepared wrapper (under DDP, its gradient hooks) goes before the next
    del engine, encoder
    acc.wait_for_everyone()
    return record


def freeze_below_head(model, head_names: list[str]) -> int:
    """After the stage: only the head trains (on cached features); returns the parameters frozen."""
    frozen = 0
    for name, param in model.named_parameters():
        if param.requires_grad and not is_head_parameter(name, head_names):
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen


def finish(output_dir: Path) -> None:
    """Remove the stage's folder once the run has saved its model and results (main process)."""
    shutil.rmtree(output_dir / STAGE_DIR, ignore_errors=True)
