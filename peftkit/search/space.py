"""A search space over `peftkit train` flags: read from the command line or a YAML file, checked against the flags
each strategy's run accepts, and turned into Optuna suggestions and into each trial's command line.

On the command line, after the search's own options, every ``--flag`` takes its values::

    --strategy lora full            choices (strategies too)
    --learning_rate 1e-4:3e-3:log   a range: low:high, optionally :log; integers when both ends are integers
    --max_train_samples 500         one value: the same in every trial
    --gradient_checkpointing        no value: passed as given
    --learning_rate lora=5e-4:5e-3:log full=2e-5,5e-5   per strategy (choices separated by commas)

A YAML file (``--space``) holds the same: ``name: value`` (fixed), ``name: [a, b]`` (choices),
``name: {low: 1e-4, high: 3e-3, log: true}`` (range), ``name: {lora: ..., full: ...}`` (per strategy). The command
line overrides the file. A value drawn for one strategy is an Optuna parameter of its own (``learning_rate@lora``).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Any

from peftkit import hf_flags
from peftkit.errors import PeftkitError, check

METHODS = ("tpe", "random", "grid")  # samplers of `peftkit search --method`

# Set by the search for every trial, never by the space.
RESERVED = {"output_dir": "each trial writes to OUTPUT_DIR/trial_NNN", "overwrite_output_dir": "see --help",
            "resume_from_checkpoint": "rerun the same search command to resume", "use_test_split":
            "trials never see the test split", "config": "put its keys in the --space file", "task": None}


def parse_number(text: Any) -> Any:
    """``"8"`` -> 8, ``"1e-4"`` -> 0.0001; anything else unchanged."""
    if not isinstance(text, str):
        return text
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@dataclass
class Param:
    """One searched flag: ``choices``, or a ``low``..``high`` range (``log`` scale; ``integer`` values)."""

    name: str
    choices: list | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    strategy: str | None = None  # drawn only for this strategy (the name is then flag@strategy)

    def suggest(self, trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, self.choices)
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def sample_values(self) -> list:
        """Values that stand for the whole space when the flags are checked before any trial."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]

    def describe(self) -> str:
        if self.choices is not None:
            return " | ".join(str(c) for c in self.choices)
        return f"{self.low:g} .. {self.high:g}{' (log)' if self.log else ''}{' (integers)' if self.integer else ''}"

    def as_dict(self) -> dict[str, Any]:
        only = {"strategy": self.strategy} if self.strategy else {}
        if self.choices is not None:
            return {"choices": self.choices} | only
        return {"low": self.low, "high": self.high, "log": self.log, "integer": self.integer} | only


def flag_of(key: str) -> str:
    """The train flag of a space entry: ``learning_rate@lora`` -> ``learning_rate``."""
    return key.split("@", 1)[0]


def parse_range(name: str, text: str) -> Param | None:
    """``low:high[:log]`` as a Param, or None when ``text`` is not a range."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("log", "linear")):
        return None
    low, high = parse_number(parts[0]), parse_number(parts[1])
    if not all(isinstance(v, int | float) for v in (low, high)):
        return None
    return make_range(name, low, high, log=len(parts) == 3 and parts[2] == "log")


def make_range(name: str, low: Any, high: Any, log: bool = False) -> Param:
    low, high = parse_number(low), parse_number(high)
    check(all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)),
          f"--{name}: a range needs two numbers, got {low!r} and {high!r}.")
    check(low < high, f"--{name} {low}:{high}: the low end must be below the high end.")
    check(not log or low > 0, f"--{name} {low}:{high}:log: a log range needs a positive low end.")
    integer = isinstance(low, int) and isinstance(high, int)
    return Param(name, low=low, high=high, log=log, integer=integer)


def per_strategy(name: str, value: Any) -> dict[str, Any] | None:
    """``{strategy: entry}`` for a per-strategy entry (a YAML mapping of strategies, or command-line values
    ``lora=1e-3:1e-2:log full=1e-5,5e-5``), else None."""
    if isinstance(value, dict) and not set(value) & {"low", "high", "log"}:
        return {str(k): entry(name, v) for k, v in value.items()}
    values = value if isinstance(value, list) else [value]
    if values and all(isinstance(v, str) and "=" in v for v in values):
        out = {}
        for v in values:
            strategy, spec = v.split("=", 1)
            check(strategy not in out, f"--{name}: strategy {strategy!r} is given twice.")
            out[strategy] = entry(name, spec.split(",") if "," in spec else spec)
        return out
    return None


def entry(name: str, value: Any) -> Param | Any:
    """A YAML or command-line entry: a Param (choices, range) or a fixed value (None: a flag without value)."""
    if isinstance(value, dict):
        unknown = set(value) - {"low", "high", "log"}
        check(not unknown and {"low", "high"} <= set(value), f"{name}: a range is {{low: A, high: B, log: true}}, "
              f"got {value}.")
        return make_range(name, value["low"], value["high"], bool(value.get("log", False)))
    if isinstance(value, list):
        check(len(value) > 0, f"{name}: an empty list of choices.")
        values = [parse_number(v) for v in value]
        return Param(name, choices=values) if len(set(map(str, values))) > 1 else values[0]
    if isinstance(value, str):
        return parse_range(name, value) or parse_number(value)
    return value


def split_flags(tokens: list[str]) -> dict[str, list[str]]:
    """``--a 1 2 --b=3 --c`` -> ``{"a": ["1", "2"], "b": ["3"], "c": []}``."""
    out: dict[str, list[str]] = {}
    name = None
    for token in tokens:
        if token.startswith("--") and len(token) > 2:
            name, _, value = token[2:].partition("=")
            check(name not in out, f"--{name} is given twice; list all its values after one --{name}.")
            out[name] = [value] if value else []
        else:
            check(name is not None, f"{token!r} is not a flag: every value follows the --flag it belongs to.")
            out[name].append(token)
    return out


@dataclass
class Space:
    """What a search varies (``params``, strategy included) and keeps fixed (``fixed``: flag -> value)."""

    task: str
    strategies: list[str]
    params: dict[str, Param]
    fixed: dict[str, Any]
    known: dict[str, set[str]]  # strategy -> the flags its runs accept

    def applies(self, key: str, strategy: str) -> bool:
        """Whether entry ``key`` (a flag, or flag@strategy) takes part in a trial of ``strategy``."""
        param = self.params.get(key)
        if param is not None and param.strategy not in (None, strategy):
            return False
        return flag_of(key) in self.known[strategy]

    def suggest(self, trial) -> dict[str, Any]:
        """The trial's settings, strategy first; flags the chosen strategy has no use for are not drawn."""
        strategy = trial.suggest_categorical("strategy", self.strategies)
        return {"strategy": strategy} | {name: p.suggest(trial) for name, p in self.params.items()
                                         if self.applies(name, strategy)}

    def grid(self, seed: int) -> list[dict[str, Any]]:
        """Every combination (flags a strategy does not take are left out, not multiplied), in a seeded order."""
        ranges = [p.name for p in self.params.values() if p.choices is None]
        check(not ranges, f"--method grid needs a list of values for every searched flag; {', '.join(ranges)} "
              "is a range. Give values (e.g. --learning_rate 1e-4 3e-4 1e-3), or use --method random or tpe.")
        points = []
        for strategy in self.strategies:
            names = [n for n in self.params if self.applies(n, strategy)]
            for values in itertools.product(*(self.params[n].choices for n in names)):
                points.append({"strategy": strategy, **dict(zip(names, values, strict=True))})
        random.Random(seed).shuffle(points)
        return points

    def trial_argv(self, settings: dict[str, Any]) -> list[str]:
        """The flags of one trial's run (strategy and task excepted): the fixed ones it takes, then its draws."""
        strategy, argv = settings["strategy"], []
        for name, value in [*self.fixed.items(), *((k, v) for k, v in settings.items() if k != "strategy")]:
            if self.applies(name, strategy):
                flag = f"--{flag_of(name)}"
                argv += [flag] if value is None else [flag, flag_value(value)]
        return argv

    def as_dict(self) -> dict[str, Any]:
        return {"task": self.task, "strategy": self.strategies,
                "params": {n: p.as_dict() for n, p in self.params.items()}, "fixed": self.fixed}


def flag_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value) if isinstance(value, float) else str(value)


def build_space(task: str, tokens: list[str], space_file: dict[str, Any] | None) -> Space:
    """The space from a YAML file's entries and the command line's flags (which win), checked against every
    strategy's flags: an unknown flag or a value a run would refuse is an error before any trial starts."""
    from peftkit.arguments import build_train_parser, parse_train_args
    from peftkit.strategies import available

    raw = dict(space_file or {})
    for name, values in split_flags(tokens).items():
        raw[name] = values if len(values) > 1 else values[0] if values else None
    entries, by_strategy = {}, {}
    for name, value in raw.items():
        split = per_strategy(name, value) if name != "strategy" else None
        if split is not None:
            by_strategy[name] = split
        else:
            entries[name] = entry(name, value) if name != "strategy" or not isinstance(value, list) else \
                Param(name, choices=[str(v) for v in value])
    strategy = entries.pop("strategy", "lora")
    strategies = [str(s) for s in (strategy.choices if isinstance(strategy, Param) else [strategy])]
    check(all(s in available() for s in strategies), f"Unknown strategy among {', '.join(strategies)}. Choose from: "
          f"{', '.join(available())}.")
    check(isinstance(strategy, Param) or strategy is not None, "--strategy needs a value.")
    for name in [*entries, *by_strategy]:
        if name in RESERVED:
            raise PeftkitError(f"--{name} cannot be part of a search space ({RESERVED[name] or 'one per search'}).")
    known = {}
    for s in strategies:
        parser, _ = build_train_parser(s, task_name=task)
        known[s] = {a.option_strings[0][2:] for a in parser._actions if a.option_strings} | hf_flags.HF_FLAGS
    for name, split in by_strategy.items():
        unknown = sorted(set(split) - set(strategies))
        check(not unknown, f"--{name} gives values for {', '.join(unknown)}, which this search does not try "
              f"(--strategy {' '.join(strategies)}).")
        for s, value in split.items():
            param = value if isinstance(value, Param) else Param(name, choices=[value])
            entries[f"{name}@{s}"] = Param(f"{name}@{s}", param.choices, param.low, param.high, param.log,
                                           param.integer, strategy=s)
    every = set().union(*known.values())
    for key in entries:
        name = flag_of(key)
        if name not in every:
            raise PeftkitError(f"--{name} is not a flag of `peftkit train --task {task}` with strategy "
                               f"{' or '.join(strategies)}.{hf_flags.suggest([f'--{name}'], sorted(every))} See "
                               f"`peftkit train --task {task} --strategy {strategies[0]} --help`.")
    space = Space(task, strategies, {n: v for n, v in entries.items() if isinstance(v, Param)},
                  {n: v for n, v in entries.items() if not isinstance(v, Param)}, known)
    for s in strategies:  # every value once, on each strategy that takes it: a typo fails now, not in trial 5
        base = {n: p.sample_values()[0] for n, p in space.params.items()}
        for name, param in space.params.items():
            for value in param.sample_values():
                if space.applies(name, s):
                    parse_train_args(space.trial_argv({"strategy": s, **base, name: value}), s, task_name=task)
    return space
