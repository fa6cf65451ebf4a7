"""`peftkit predict`: a trained run on new inputs (labels, tags, generated answers), as JSON lines."""

from __future__ import annotations

import json
import sys

from peftkit.commands.common import add_run_options, given, with_run
from peftkit.errors import check


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="use a trained run on new inputs (labels; generated answers for causal_lm "
                       "and preference)")
    p.add_argument("run_dir", help="the --output_dir of a finished run")
    p.add_argument("--text_column", default=None, help="text column of a CSV/JSON input (default: the run's)")
    p.add_argument("--text_pair_column", default=None,
                   help="second text column, for a sentence-pair run (default: the run's)")
    add_run_options(p)
    p.add_argument("--input_file", default=None, help=".txt (one text or prompt per line; for a sentence-pair "
                   "run `text<TAB>second text`), CSV/JSON/JSONL/parquet (for causal_lm: a messages or prompt column); "
                   "default: stdin, read like .txt")
    p.add_argument("--output_file", default=None, help="write JSON lines here instead of stdout")


def run(ns, argv: list[str]) -> int:
    def work(trust) -> int:
        from peftkit import run_dir
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

    return with_run(ns, work)
