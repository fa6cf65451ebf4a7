"""`peftkit train` and every recipe: one training run."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from peftkit.arguments import parse_train_args
from peftkit.commands.common import guard, setup_logging
from peftkit.config import FEWSHOT_DEFAULT
from peftkit.errors import PeftkitError
from peftkit.model_card import training_time


def kept_line(results: dict) -> str:
    """Which evaluation's weights the run kept, and why (results.json "selection")."""
    kept = results.get("selection")
    if not kept:  # no evaluation chose (a run without validation data keeps its last weights)
        return f"Kept the weights of the last step, {results['global_step']}: no validation evaluation chose."
    epoch = f" (epoch {kept['epoch']:g})" if kept.get("epoch") is not None else ""
    return f"Kept the weights of step {kept['step']}{epoch} of {results['global_step']}: {kept['reason']}."


def train_main(argv: Sequence[str] | None = None, *, task: str, strategy: str, prog: str | None = None,
               defaults: dict | None = None, note: str | None = None) -> int:
    """Train one run; what ``peftkit train`` and every recipe execute. ``defaults``: the recipe's flag defaults
    (the command line and --config override them); ``note``: logged once the flags are good (why this strategy)."""
    argv = list(sys.argv[1:] if argv is None else argv)

    def run() -> int:
        model_args, data_args, train_args, strat, task_obj = parse_train_args(argv, strategy, prog, task, defaults)
        setup_logging(train_args.debug)
        if note:
            logging.getLogger("peftkit.train").info(note)
        from peftkit import runner  # torch and accelerate: only once the flags are good (and no --help is asked)
        from peftkit.search import trial  # a trial of `peftkit search` reports to it; None for any other run

        metric = train_args.metric_for_best_model or task_obj.default_metric
        results = runner.train(task, strategy, strat, model_args, data_args, train_args, task_obj,
                               should_stop=trial.pruning_hook(metric))
        from accelerate import PartialState

        if PartialState().is_main_process:
            print(f"\n{strategy} on {results['dataset']}: {task_obj.headline(results)}"
                  + f" | trainable {results['trainable_params']:,} of {results['total_params']:,}"
                  f" ({results['trainable_percent']:.2f}%) | {training_time(results)}"
                  f"\n{kept_line(results)}"
                  + ("\nSynthetic weights (--random_init): the metrics above mean nothing; memory and speed do."
                     if results.get("synthetic_weights") else "")
                  + f"\nSaved to {results['artifact_dir']} (results.json, peftkit_config.json, weights)")
        return 0

    return guard(run, argv)


def run(ns, rest: list[str]) -> int:
    """`peftkit train`: a config file (e.g. a search's best.yaml) names its strategy and task; the command line
    still wins."""
    chosen = {}
    if ns.config:
        try:
            from peftkit.config import load_config_file

            chosen = load_config_file(ns.config)
        except PeftkitError:
            pass  # reported by the run itself, with the rest of the flags
    strategy, task = ns.strategy or chosen.get("strategy"), str(ns.task or chosen.get("task") or "text_cls")
    defaults = note = None
    if not strategy and (shots := asked_shots(rest, chosen)) and has_pair_stage(task):
        strategy, defaults = FEWSHOT_DEFAULT
        flags = " ".join(f"--{name}" for name in defaults)
        note = (f"--shots {shots} and no --strategy: the few-shot default, --strategy {strategy} {flags} (the path "
                "peftkit's few-shot benchmark measures; docs/benchmarks/fewshot.md); pass --strategy to choose.")
    return train_main(rest + (["--config", ns.config] if ns.config else []), task=task,
                      strategy=str(strategy or "lora"), prog="peftkit train", defaults=defaults, note=note)


def has_pair_stage(task: str) -> bool:
    """Whether task ``task`` can run --contrastive (an unknown task is refused by the run itself)."""
    from peftkit.tasks import get_task

    try:
        return bool(get_task(task).cls.pairs_stage)
    except PeftkitError:
        return False


def asked_shots(argv: list[str], chosen: dict) -> int | None:
    """The --shots of a command line (or else of its --config file), if any and well formed (a malformed one is
    refused by the run's own parser, with the rest of the flags)."""
    ap = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    ap.add_argument("--shots", default=None)
    value = ap.parse_known_args(argv)[0].shots or chosen.get("shots")
    try:
        return int(value) if value is not None and int(value) > 0 else None
    except (TypeError, ValueError):
        return None


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="fine-tune a model (see `peftkit train --task T --strategy S --help`)",
                       add_help=False)
    t.add_argument("--strategy", default=None)
    t.add_argument("--task", default=None)
    t.add_argument("--config", default=None)
