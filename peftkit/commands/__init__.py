"""The ``peftkit`` command: one module per subcommand (``add_parser(sub)`` and ``run(ns, rest)``), dispatched
from one table."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Each is the module peftkit.commands.<name>; the modules are light (what a command needs heavy, it imports in
# its run()), so that building the parser, --help and a mistyped flag load no torch.
COMMANDS = ("train", "plan", "eval", "predict", "bench", "search", "merge", "analyze")
OWN_FLAGS = ("train", "plan", "bench", "search")  # they read the flags after the subcommand themselves


def command(name: str):
    return importlib.import_module(f"peftkit.commands.{name}")


def command_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peftkit", description="Parameter-efficient fine-tuning.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        command(name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = command_parser()
    ns, rest = parser.parse_known_args(argv)
    if rest and ns.command not in OWN_FLAGS:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    return command(ns.command).run(ns, rest)
