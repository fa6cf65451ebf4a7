"""`peftkit search`: hyper-parameters and strategies, on Optuna."""

from __future__ import annotations

import argparse
import sys

from peftkit.arguments import one_line_errors
from peftkit.commands.common import guard, setup_logging
from peftkit.errors import check, require


def search_parser() -> argparse.ArgumentParser:
    from peftkit.search.space import METHODS

    p = argparse.ArgumentParser(
        prog="peftkit search", allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Search hyper-parameters, strategies included, on Optuna. Every other --flag is a `peftkit train` "
        "flag with its values: several values are choices, low:high (or low:high:log) a range, one value is kept "
        "in every trial.\n\n  peftkit search --strategy lora full --learning_rate 1e-4:3e-3:log --lora_r 4 8 16 \\\n"
        "      --max_train_samples 500 --n_trials 6 --output_dir runs/search\n\nEach trial is a run directory "
        "(OUTPUT_DIR/trial_NNN); selection reads the validation split only, and the chosen configuration alone is "
        "evaluated on the test split. Rerun the same command after an interruption to finish the remaining trials.")
    p.add_argument("--task", default="text_cls", help="what is learned (one task per search)")
    p.add_argument("--output_dir", default="runs/search", help="the study, its trials and the leaderboard")
    p.add_argument("--method", default="tpe", choices=METHODS, help="tpe (Optuna's default Bayesian sampler), random, "
                   "or grid (every combination of listed values)")
    p.add_argument("--n_trials", type=int, default=None, help="trials in the study, those of earlier runs of this "
                   "command included (default: the grid's size, else 10)")
    p.add_argument("--timeout", type=float, default=None, help="start no trial after this many seconds")
    p.add_argument("--pruner", default="median", choices=("median", "hyperband", "none"), help="stop hopeless trials "
                   "at their validation evaluations (median: worse than the median of finished trials at that step, "
                   "once 2 have finished; add --eval_steps N for more chances)")
    p.add_argument("--space", default=None, help="YAML file of flags and values (name: value | [choices] | {low, "
                   "high, log}); command-line flags override it")
    p.add_argument("--launcher", default=None, help="command that starts each trial's Python, e.g. \"accelerate "
                   "launch --num_processes 2\" (default: this Python, one process)")
    p.add_argument("--sampler_seed", type=int, default=42, help="seed of the sampler (and of the grid's order)")
    p.add_argument("--no_test", action="store_true", help="do not evaluate the chosen configuration on the test split")
    p.add_argument("--overwrite_output_dir", action="store_true", help="discard a study in --output_dir and start over")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


def run(_ns, argv: list[str]) -> int:
    """``argv``: everything after `search` (its own flags and the `peftkit train` flags of the space)."""
    parser = one_line_errors(search_parser())
    ns, rest = parser.parse_known_args(argv)

    def search() -> int:
        from pathlib import Path

        from peftkit.config import load_config_file
        from peftkit.search import report, study
        from peftkit.search.space import build_space

        setup_logging(ns.debug)
        check(ns.n_trials is None or ns.n_trials > 0, f"--n_trials must be positive, got {ns.n_trials}.")
        require("peftkit search", {"optuna": "optuna>=4.0"}, extra="search")
        space = build_space(ns.task, rest, load_config_file(ns.space) if ns.space else None)
        opts = study.Options(Path(ns.output_dir), ns.method, ns.n_trials, ns.timeout, ns.pruner, ns.sampler_seed,
                             ns.launcher, ns.overwrite_output_dir, test=not ns.no_test)
        summary = study.run(space, opts)
        best, out = summary.get("best"), Path(ns.output_dir)
        print(f"\nLeaderboard: {out / 'search.md'} (search.json, search.png)")
        if best is None:
            print("No trial completed: see the errors in search.md and each trial's train.log.", file=sys.stderr)
            return 1
        test = best.get("test") or {}
        metric = summary["metric"]
        print(f"Best: trial {best['trial']} ({best['strategy']}"
              + "".join(f", {k}={report.show(v)}" for k, v in best["params"].items())
              + f"): validation {metric} {best['validation']:.4f}"
              + (f", test {metric} {test[metric]:.4f}" if metric in test else "")
              + f"\nTrain it: peftkit train --config {out / 'best.yaml'} --output_dir runs/best")
        if "error" in test:
            print(f"peftkit: error: the test evaluation of trial {best['trial']} failed: {test['error']}",
                  file=sys.stderr)
            return 1
        return 0

    return guard(search, argv)


def add_parser(sub) -> None:
    sub.add_parser("search", help="search hyper-parameters and strategies (see `peftkit search --help`)",
                   add_help=False)
