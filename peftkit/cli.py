"""The public entry points: the ``peftkit`` command (:func:`main`, in ``peftkit.commands``, one module per
subcommand) and :func:`train_main`, which ``peftkit train`` and every recipe run. Flags are parsed in
``peftkit.arguments``."""

from __future__ import annotations

from peftkit.arguments import build_train_parser, parse_train_args
from peftkit.commands import command_parser, main
from peftkit.commands.common import check_torchvision
from peftkit.commands.search import search_parser
from peftkit.commands.train import kept_line, train_main

__all__ = ["build_train_parser", "check_torchvision", "command_parser", "kept_line", "main", "parse_train_args",
           "search_parser", "train_main"]
