"""`peftkit train` and every recipe: one training run."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from peftkit.arguments import parse_train_args
from peftkit.commands.common import guard, setup_logging
from peftkit.errors import PeftkitError


def kept_line(results: dict) -> str:
    """Which evaluation's weights the run kept, and why (results.json "selection")."""
    kept = results.get("selection")
    if not kept:  # no evaluation chose (a run without validation data keeps its last weights)
        return f"Kept the weights of the last step, {results['global_step']}: no validation evaluation chose."
    epoch = f" (epoch {kept['epoch']:g})" if kept.get("epoch") is not None else ""
    return f"Kept the weights of step {kept['step']}{epoch} of {results['global_step']}: {kept['reason']}."


def train_main(argv: Sequence[str] | None = None, *, task: str, strategy: str, prog: str | None = None,
               defaults: dict | None = None) -> int:
    """Train one run; what ``peftkit train`` and every recipe execute. ``defaults``: the recipe's flag defaults
    (the command line and --config override them)."""
    argv = list(sys.argv[1:] if argv is None else argv)

    def run() -> int:
        model_args, data_args, train_args, strat, task_obj = parse_train_args(argv, strategy, prog, task, defaults)
        setup_logging(train_args.debug)
        from peftkit import runner  # torch and accelerate: only once the flags are good (and no --help is asked)
        from peftkit.search import trial  # a trial of `peftkit search` reports to it; None for any other run

        metric = train_args.metric_for_best_model or task_obj.default_metric
        results = runner.train(task, strategy, strat, model_args, data_args, train_args, task_obj,
                               should_stop=trial.pruning_hook(metric))
        from accelerate import PartialState

        if PartialState().is_main_process:
            print(f"\n{strategy} on {results['dataset']}: {task_obj.headline(results)}"
                  + f" | trainable {results['trainable_params']:,} of {results['total_params']:,}"
                  f" ({results['trainable_percent']:.2f}%) | {results['train_runtime_s']:.0f} s"
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
    strategy, task = ns.strategy or chosen.get("strategy") or "lora", ns.task or chosen.get("task") or "text_cls"
    return train_main(rest + (["--config", ns.config] if ns.config else []), task=str(task),
                      strategy=str(strategy), prog="peftkit train")


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="fine-tune a model (see `peftkit train --task T --strategy S --help`)",
                       add_help=False)
    t.add_argument("--strategy", default=None)
    t.add_argument("--task", default=None)
    t.add_argument("--config", default=None)
