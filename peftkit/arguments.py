"""Flags and config files onto the config schema: the parser of `peftkit train` and every recipe (the shared
dataclasses plus the chosen strategy's and task's), shared by the commands and by `peftkit search`, which builds
its search space from the same parser."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from peftkit import hf_flags
from peftkit.errors import PeftkitError, check


def _one_line_error(message: str):
    raise PeftkitError(f"{message}. See --help for every flag.")


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
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
    parser.set_defaults(**task_spec.flag_class.defaults.training, **task_spec.preset, **spec.preset,
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
