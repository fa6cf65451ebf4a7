"""`peftkit bench`: the benchmark suite of the checkout peftkit is installed from."""

from __future__ import annotations

import os
import sys


def run(ns, argv: list[str]) -> int:
    """The suite lives in the repository's benchmarks/ (it compares against a stock-Trainer script there).

    peftkit never imports it: this runs `python -m benchmarks` of the checkout peftkit is installed from.
    """
    import subprocess
    from pathlib import Path

    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / "benchmarks" / "__main__.py").is_file():
        print("peftkit: error: the benchmark suite runs from a peftkit source checkout (its benchmarks/ folder); "
              "install peftkit with `pip install -e .` from a clone.", file=sys.stderr)
        return 2
    # From the user's directory (relative paths mean what they typed), with the checkout importable.
    path = os.pathsep.join(filter(None, [str(checkout), os.environ.get("PYTHONPATH")]))
    return subprocess.call([sys.executable, "-m", "benchmarks", *argv], env={**os.environ, "PYTHONPATH": path})


def add_parser(sub) -> None:
    sub.add_parser("bench", help="run the benchmark suite (from a source checkout; see --help)", add_help=False)
