"""The ``peftkit`` command: ``train``, ``eval`` and ``predict``; recipes call :func:`train_main`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence

from peftkit import hf_flags
from peftkit.errors import PeftkitError, check, require

DEBUG_FLAG = "--debug"


def _setup_logging(debug: bool) -> None:
    import transformers

    main_rank = int(os.environ.get("RANK", "0")) == 0  # under several processes, one speaks
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO if main_rank or debug else logging.WARNING, force=True)
    # Library chatter (load reports, telemetry notices) drowns the run's own lines unless debugging.
    transformers.logging.set_verbosity_info() if debug else transformers.logging.set_verbosity_error()
    for name in ("datasets", "accelerate", "httpx", "urllib3"):
        logging.getLogger(name).setLevel(logging.INFO if debug else logging.WARNING)


def _guard(fn: Callable[[], int], argv: Sequence[str]) -> int:
    """Run ``fn``; user mistakes become one clear line on stderr and a non-zero exit (traceback with --debug)."""
    debug = DEBUG_FLAG in argv
    from peftkit.console import protect_standard_streams, quiet_known_noise

    protect_standard_streams()  # before logging and progress bars take hold of the streams
    if not debug:
        quiet_known_noise()
    try:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - a mismatched torchvision is the user's to fix: say how
            check_torchvision(exc)
            raise
    except PeftkitError as exc:
        if debug:
            raise
        interrupted = type(exc).__name__ == "TrainingInterrupted"
        if not interrupted or os.environ.get("RANK", "0") == "0":  # every process stops; one says so
            print(f"peftkit: {'stopped' if interrupted else 'error'}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("peftkit: interrupted.", file=sys.stderr)
        return 130


def check_torchvision(failure: BaseException | None = None) -> None:
    """transformers imports torchvision whenever it is installed, and a torchvision built for another torch fails
    to load (``operator torchvision::nms does not exist``), which breaks every task: say so, with the fix.

    Asked after a command failed (``failure``), not before every command: importing torchvision to check costs
    seconds, and a failure it does not explain is re-raised as it was."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        return
    if failure is not None and "torchvision" not in _chain_text(failure):
        return
    try:
        import torchvision  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any failure to load is the mismatch described
        import importlib.metadata

        versions = {n: importlib.metadata.version(n) for n in ("torch", "torchvision")}
        raise PeftkitError(f"torchvision {versions['torchvision']} does not load beside torch {versions['torch']} "
                           f"({str(exc).splitlines()[0][:150]}), and transformers imports it whenever it is "
                           "installed. Install the pair built together, e.g. pip install torch==2.14.1 "
                           "torchvision==0.29.1, or pip uninstall torchvision (text tasks do not need it).") from exc


def _chain_text(exc: BaseException) -> str:
    """The messages of ``exc`` and of the exceptions it was raised from or during."""
    texts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        texts.append(f"{type(exc).__module__} {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(texts)


def _one_line_error(message: str):
    raise PeftkitError(f"{message}. See --help for every flag.")


def _one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``parser`` answering a bad value or a missing argument with one line and exit 2, not its usage block."""
    def error(message: str):
        print(f"peftkit: error: {message}. See `{parser.prog} --help`.", file=sys.stderr)
        sys.exit(2)

    parser.error = error
    return parser


def build_train_parser(strategy_name: str, prog: str | None = None, task_name: str = "text_cls",
                       defaults: dict | None = None):
    """HfArgumentParser over the shared dataclasses plus the strategy's own, with its preset applied."""
    from transformers import HfArgumentParser

    from peftkit.config import ARGUMENT_CLASSES
    from peftkit.strategies import available, get_strategy
    from peftkit.tasks import available as available_tasks
    from peftkit.tasks import get_task

    spec, task_spec = get_strategy(strategy_name), get_task(task_name)
    parser = HfArgumentParser((*ARGUMENT_CLASSES, spec.flag_class, task_spec.flag_class), prog=prog, allow_abbrev=False,
                              description=f"Fine-tune for task {task_name!r} with the {strategy_name!r} strategy. "
                              "Trainer habits also work: --fp16/--bf16, --optim, --eval_strategy, --save_strategy, "
                              "--do_train/--do_eval.")
    parser.add_argument("--config", default=None, help="YAML or JSON file of flag values; flags given on "
                        "the command line override it.")
    if prog == "peftkit train":  # chosen by `peftkit train` before this parser runs; listed for --help
        parser.add_argument("--strategy", default=strategy_name, help=f"how the model is adapted: "
                            f"{', '.join(available())} (each adds its own flags to this list)")
        parser.add_argument("--task", default=task_name, help=f"what is learned: {', '.join(available_tasks())} "
                            "(each sets its own defaults and adds its own flags)")
    parser.set_defaults(**getattr(task_spec.flag_class, "training_defaults", {}), **task_spec.preset, **spec.preset,
                        **(defaults or {}))
    parser.error = _one_line_error  # a bad value gets its one line, not the 60-line usage block first
    for action in parser._actions:  # HfArgumentParser's --no_X flags show the default of X, which misleads
        if action.option_strings and action.option_strings[0].startswith("--no_"):
            action.help = f"turn off --{action.option_strings[0][5:]} (on by default)"
            action.default = argparse.SUPPRESS
    return parser, spec


def parse_train_args(argv: Sequence[str], strategy_name: str, prog: str | None = None, task_name: str = "text_cls",
                     defaults: dict | None = None):
    """``(model_args, data_args, train_args, strategy, task)`` from flags and an optional config file; ``defaults``:
    a recipe's own flag defaults."""
    from peftkit.config import load_config_file
    from peftkit.tasks import get_task

    parser, spec = build_train_parser(strategy_name, prog, task_name, defaults)
    argv = hf_flags.rewrite_argv(list(argv))
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        values = hf_flags.rewrite_config(load_config_file(pre.config))
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - known - {"strategy", "task"})
        check(not unknown, f"Unknown key(s) in {pre.config}: {', '.join(unknown)}. Keys are flag names "
              "without dashes; see --help.")
        chosen = values.get("strategy", strategy_name)
        check(chosen == strategy_name, f"{pre.config} sets strategy {chosen!r}, but this run is "
              f"{strategy_name!r}. Use the {chosen} recipe (or `peftkit train --strategy {chosen}`).")
        chosen = values.get("task", task_name)
        check(chosen == task_name, f"{pre.config} sets task {chosen!r}, but this run is {task_name!r}. Use a "
              f"{chosen} recipe (or `peftkit train --task {chosen}`).")
        on_command_line = any(a.split("=")[0] in ("--trust_remote_code", "--trust-remote-code") for a in argv)
        check(not values.get("trust_remote_code") or on_command_line,
              f"{pre.config} sets trust_remote_code, which lets transformers run Python code from the model's files. "
              "peftkit takes that permission only from the command line: add --trust_remote_code to this command "
              "if you trust that code.")
        # The file's values go through the parser as flags before the command line's (which win): the same types,
        # choices and checks, and a wrong one named with the file.
        tokens = _config_tokens(values, parser, pre.config)
        try:
            parser.parse_known_args(tokens)
        except PeftkitError as exc:
            raise PeftkitError(f"In {pre.config}: {exc}") from None
        argv = tokens + argv
    *outputs, rest = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    flags = [a.option_strings[0][2:] for a in parser._actions if a.option_strings]
    check(not rest, f"Unrecognised arguments: {' '.join(rest)}.{hf_flags.suggest(rest, flags)} See --help for "
          "every flag.")
    model_args, data_args, train_args, strategy, task = outputs[:5]  # the last holds --config
    # The parser filled the plug-ins' flags classes; the classes that do the work are built from them (and check
    # their values) now that no --help is left to print.
    strategy, task = _build(spec, strategy), _build(get_task(task_name), task)
    task.data = data_args
    return model_args, data_args, train_args, strategy, task


def _config_tokens(values: dict, parser: argparse.ArgumentParser, source: str) -> list[str]:
    """A config file's ``{flag: value}`` as command-line tokens: a list only for a flag that takes several
    values, ``true``/``false`` for booleans, null for the flag's default."""
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    tokens: list[str] = []
    for key, value in values.items():
        action = actions.get(key)
        if action is None or value is None:  # strategy and task are checked above; null: the default
            continue
        flag = action.option_strings[0]
        check(not isinstance(value, dict), f"In {source}: {key} must be a value, not a mapping ({value!r}).")
        if action.nargs == 0:  # a switch
            check(isinstance(value, bool), f"In {source}: {key} is a switch: true or false, not {value!r}.")
            tokens += [flag] if value else []
        elif isinstance(value, list):
            check(action.nargs in ("+", "*"), f"In {source}: {key} takes one value, not a list ({value!r}).")
            tokens += [flag, *(_config_token(v) for v in value)]
        else:
            tokens.append(f"{flag}={_config_token(value)}")
    return tokens


def _config_token(value) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _build(spec, parsed):
    """The plug-in's working class from its parsed flags; a plug-in that is its own flags class (no ``flags`` at
    registration) is used as parsed, not built twice."""
    if spec.flags is None or isinstance(parsed, spec.cls):
        return parsed
    return spec.cls(**{f.name: getattr(parsed, f.name) for f in dataclasses.fields(parsed) if f.init})


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
        _setup_logging(train_args.debug)
        from peftkit import runner  # torch and accelerate: only once the flags are good (and no --help is asked)

        results = runner.train(task, strategy, strat, model_args, data_args, train_args, task_obj)
        from accelerate import PartialState

        if PartialState().is_main_process:
            print(f"\n{strategy} on {results['dataset']}: {task_obj.headline(results)}"
                  + f" | trainable {results['trainable_params']:,} of {results['total_params']:,}"
                  f" ({results['trainable_percent']:.2f}%) | {results['train_runtime_s']:.0f} s"
                  f"\n{kept_line(results)}"
                  f"\nSaved to {results['artifact_dir']} (results.json, peftkit_config.json, weights)")
        return 0

    return _guard(run, argv)


def _bench(argv: list[str]) -> int:
    """The suite lives in the repository's benchmarks/ (it compares against a stock-Trainer script there).

    peftkit never imports it: this runs `python -m benchmarks` of the checkout peftkit is installed from.
    """
    import subprocess
    from pathlib import Path

    checkout = Path(__file__).resolve().parent.parent
    if not (checkout / "benchmarks" / "__main__.py").is_file():
        print("peftkit: error: the benchmark suite runs from a peftkit source checkout (its benchmarks/ folder); "
              "install peftkit with `pip install -e .` from a clone.", file=sys.stderr)
        return 2
    # From the user's directory (relative paths mean what they typed), with the checkout importable.
    path = os.pathsep.join(filter(None, [str(checkout), os.environ.get("PYTHONPATH")]))
    return subprocess.call([sys.executable, "-m", "benchmarks", *argv], env={**os.environ, "PYTHONPATH": path})


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


def _search(argv: list[str]) -> int:
    parser = _one_line_errors(search_parser())
    ns, rest = parser.parse_known_args(argv)

    def run() -> int:
        from pathlib import Path

        from peftkit.config import load_config_file
        from peftkit.search import report, study
        from peftkit.search.space import build_space

        _setup_logging(ns.debug)
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

    return _guard(run, argv)


def _command_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peftkit", description="Parameter-efficient fine-tuning.")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="fine-tune a model (see `peftkit train --task T --strategy S --help`)",
                       add_help=False)
    t.add_argument("--strategy", default=None)
    t.add_argument("--task", default=None)
    t.add_argument("--config", default=None)
    uses = (("eval", "evaluate a trained run"),
            ("predict", "use a trained run on new inputs (labels; generated answers for causal_lm)"))
    for name, help_text in uses:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("run_dir", help="the --output_dir of a finished run")
        p.add_argument("--text_column", default=None, help="text column of a CSV/JSON input (default: the run's)")
        p.add_argument("--text_pair_column", default=None,
                       help="second text column, for a sentence-pair run (default: the run's)")
        p.add_argument("--debug", action="store_true", help="show full tracebacks")
    e = sub.choices["eval"]
    e.add_argument("--split", default=None, help="split of the run's data to evaluate: test or validation (default: "
                   "test where the run has one; a run trained on own files without --test_file has validation only)")
    e.add_argument("--eval_file", default=None, help="evaluate on this file instead of the run's data")
    e.add_argument("--test_dir", default=None, help="image_cls: evaluate on this folder of class sub-folders instead")
    e.add_argument("--label_column", default=None)
    e.add_argument("--max_eval_samples", type=int, default=None)
    e.add_argument("--output_file", default=None, help="also write the metrics here as JSON")
    sub.add_parser("bench", help="run the benchmark suite (from a source checkout; see --help)", add_help=False)
    sub.add_parser("search", help="search hyper-parameters and strategies (see `peftkit search --help`)",
                   add_help=False)
    m = sub.add_parser("merge", help="merge adapters into the base weights, with a parity report")
    m.add_argument("run_dirs", nargs="+", help="one run, or several adapter runs on one base to combine")
    m.add_argument("--output_dir", required=True, help="where the plain transformers model goes")
    m.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    m.add_argument("--parity_samples", type=int, default=None, help="compare on at most N validation examples")
    m.add_argument("--weights", type=float, nargs="+", default=None, help="one weight per run (default: equal)")
    m.add_argument("--combination", default="linear", help="linear, cat, ties, dare_ties or dare_linear")
    m.add_argument("--density", type=float, default=0.5, help="ties/dare: fraction of weights kept")
    m.add_argument("--base_model_name_or_path", default=None, help="the base, if it moved since training")
    m.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    m.add_argument("--debug", action="store_true", help="show full tracebacks")
    a = sub.add_parser("analyze", help="what a trained classifier gets wrong: per-class scores, confusion matrix, "
                       "calibration, the most confident mistakes")
    a.add_argument("run_dir", help="the --output_dir of a finished run")
    a.add_argument("--split", default=None, help="split of the run's data: test or validation (default: test where "
                   "the run has one, else validation)")
    a.add_argument("--eval_file", default=None, help="analyse this data file instead of the run's data")
    a.add_argument("--test_dir", default=None, help="image_cls: analyse this folder of class sub-folders instead")
    a.add_argument("--output_dir", default=None, help="where the files go (default: RUN_DIR/analysis_<split>)")
    a.add_argument("--top_k", type=int, default=20, help="mistakes (and unsure correct answers) in errors.csv")
    a.add_argument("--bins", type=int, default=10, help="confidence bins of the calibration")
    for flag in ("--text_column", "--text_pair_column", "--label_column"):
        a.add_argument(flag, default=None, help="column of --eval_file (default: the run's)")
    a.add_argument("--debug", action="store_true", help="show full tracebacks")
    for command in ("eval", "predict", "merge", "analyze"):
        _one_line_errors(sub.choices[command])
        sub.choices[command].add_argument(
            "--trust_remote_code", action="store_true", help="let transformers run the Python code of the run's "
            "base model (its auto_map), as training with --trust_remote_code did; never taken from the run's files")
        sub.choices[command].add_argument(
            "--skip_base_check", action="store_true", help="load an adapter whose run records no fingerprint of its "
            "base model (peftkit cannot then check that the base is the one it was trained on)")
    p = sub.choices["predict"]
    p.add_argument("--input_file", default=None, help=".txt (one text or prompt per line; for a sentence-pair "
                   "run `text<TAB>second text`), CSV/JSON/JSONL/parquet (for causal_lm: a messages or prompt column); "
                   "default: stdin, read like .txt")
    p.add_argument("--output_file", default=None, help="write JSON lines here instead of stdout")
    return parser


def given(ns: argparse.Namespace, *names: str) -> dict:
    """The options among ``names`` that the user set (the run's own values stand for the rest)."""
    return {k: getattr(ns, k) for k in names if getattr(ns, k) is not None}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _command_parser()
    ns, rest = parser.parse_known_args(argv)
    if ns.command == "train":
        # A config file (e.g. a search's best.yaml) names its strategy and task; the command line still wins.
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
    if ns.command == "bench":
        return _bench(rest)
    if ns.command == "search":
        return _search(rest)
    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")

    def run() -> int:
        from transformers.utils import logging as hf_logging

        from peftkit import run_dir

        _setup_logging(ns.debug)
        if not ns.debug:  # a trained run's model loads in seconds: its per-tensor "Loading weights" bar is noise
            hf_logging.disable_progress_bar()
        trust = run_dir.Trust(remote_code=ns.trust_remote_code, unverified_base=ns.skip_base_check)
        if ns.command == "merge":
            from pathlib import Path

            from peftkit.merge import REPORT_FILE, merge

            report = merge(ns.run_dirs, ns.output_dir, dtype=ns.dtype, parity_samples=ns.parity_samples,
                           weights=ns.weights, combination=ns.combination, density=ns.density,
                           base_model_name_or_path=ns.base_model_name_or_path, overwrite=ns.overwrite, trust=trust)
            diff = report["adapter_vs_merged_reloaded"]
            print(f"Merged into {ns.output_dir}: parity passed (max |logit difference| "
                  f"{diff['max_abs_logit_diff']:.2e}, prediction agreement {diff['prediction_agreement']:.4f} over "
                  f"{report['parity_rows']} predictions of {report['parity_samples']} examples); {report['metric']} "
                  f"{report[report['metric']]}\n"
                  f"Report: {Path(ns.output_dir) / REPORT_FILE}")
            return 0
        if ns.command == "analyze":
            from pathlib import Path

            from peftkit.analysis import analyze

            overrides = given(ns, "text_column", "label_column", "text_pair_column")
            result = analyze(ns.run_dir, ns.split, ns.eval_file, ns.test_dir, ns.output_dir, ns.top_k, ns.bins,
                             overrides, trust)
            out = result["output_dir"]
            files = ", ".join(sorted(p.name for p in Path(out).iterdir()))
            print(f"{result['examples']} examples of {result['data']}: {result['headline']}\nWritten to {out}: "
                  f"{files}")
            return 0
        if ns.command == "eval":
            overrides = given(ns, "text_column", "label_column", "text_pair_column", "max_eval_samples")
            metrics = run_dir.evaluate_run(ns.run_dir, overrides, ns.split, ns.eval_file, ns.test_dir, trust)
            text = json.dumps(metrics, indent=2)
            if ns.output_file:
                with open(ns.output_file, "w") as fh:
                    fh.write(text + "\n")
            print(text)
            return 0
        from peftkit.config import DataArguments
        from peftkit.tasks import build_from_config

        cfg = run_dir.read_config(ns.run_dir)
        run_dir.model_arguments(ns.run_dir, cfg, trust)  # a refusal comes before stdin is read
        task = build_from_config(cfg, DataArguments(**cfg["data"]))
        inputs = task.read_inputs(ns.input_file, given(ns, "text_column", "text_pair_column"))
        check(bool(inputs), "No inputs: " + ("stdin" if ns.input_file in (None, "-") else ns.input_file)
              + " held none.")
        rows = run_dir.predict(ns.run_dir, inputs, trust)
        lines = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n"
        if ns.output_file:
            with open(ns.output_file, "w") as fh:
                fh.write(lines)
        else:
            sys.stdout.write(lines)
        return 0

    return _guard(run, argv)

