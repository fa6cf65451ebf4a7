"""What every subcommand shares: logging set-up, the guard that turns a user's mistake into one line on stderr and
a non-zero exit (:func:`guard`), and, for the commands that load a trained run (eval, predict, merge, analyze),
their common options (:func:`add_run_options`) and set-up (:func:`with_run`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from peftkit.arguments import one_line_errors
from peftkit.errors import PeftkitError

DEBUG_FLAG = "--debug"


def setup_logging(debug: bool) -> None:
    import transformers

    main_rank = int(os.environ.get("RANK", "0")) == 0  # under several processes, one speaks
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO if main_rank or debug else logging.WARNING, force=True)
    # Library chatter (load reports, telemetry notices) drowns the run's own lines unless debugging.
    transformers.logging.set_verbosity_info() if debug else transformers.logging.set_verbosity_error()
    for name in ("datasets", "accelerate", "httpx", "urllib3"):
        logging.getLogger(name).setLevel(logging.INFO if debug else logging.WARNING)


def guard(fn: Callable[[], int], argv: Sequence[str]) -> int:
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


def given(ns: argparse.Namespace, *names: str) -> dict:
    """The options among ``names`` that the user set (the run's own values stand for the rest)."""
    return {k: getattr(ns, k) for k in names if getattr(ns, k) is not None}


def add_run_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of every command that loads a trained run (eval, predict, merge, analyze), and one-line errors."""
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument(
        "--trust_remote_code", action="store_true", help="let transformers run the Python code of the run's "
        "base model (its auto_map), as training with --trust_remote_code did; never taken from the run's files")
    parser.add_argument(
        "--skip_base_check", action="store_true", help="load an adapter whose run records no fingerprint of its "
        "base model (peftkit cannot then check that the base is the one it was trained on)")
    return one_line_errors(parser)


def with_run(ns: argparse.Namespace, work: Callable[..., int]) -> int:
    """``work(trust)`` for a command that loads a trained run, with logging set up and mistakes as one line
    (a traceback with --debug)."""
    def run() -> int:
        from transformers.utils import logging as hf_logging

        from peftkit.run_dir import Trust

        setup_logging(ns.debug)
        if not ns.debug:  # a trained run's model loads in seconds: its per-tensor "Loading weights" bar is noise
            hf_logging.disable_progress_bar()
        return work(Trust(remote_code=ns.trust_remote_code, unverified_base=ns.skip_base_check))

    return guard(run, [DEBUG_FLAG] if ns.debug else [])
