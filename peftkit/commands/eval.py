"""`peftkit eval`: the metrics of a trained run on its own data or on another labelled file."""

from __future__ import annotations

import json

from peftkit.commands.common import add_run_options, given, with_run


def add_parser(sub) -> None:
    e = sub.add_parser("eval", help="evaluate a trained run")
    e.add_argument("run_dir", help="the --output_dir of a finished run")
    e.add_argument("--text_column", default=None, help="text column of a CSV/JSON input (default: the run's)")
    e.add_argument("--text_pair_column", default=None,
                   help="second text column, for a sentence-pair run (default: the run's)")
    e.add_argument("--split", default=None, help="split of the run's data to evaluate: test or validation (default: "
                   "test where the run has one; a run trained on own files without --test_file has validation only)")
    e.add_argument("--eval_file", default=None, help="evaluate on this file instead of the run's data")
    e.add_argument("--test_dir", default=None, help="image_cls: evaluate on this folder of class sub-folders instead")
    e.add_argument("--label_column", default=None)
    e.add_argument("--max_eval_samples", type=int, default=None)
    e.add_argument("--output_file", default=None, help="also write the metrics here as JSON")
    add_run_options(e)


def run(ns, argv: list[str]) -> int:
    def work(trust) -> int:
        from peftkit import run_dir

        overrides = given(ns, "text_column", "label_column", "text_pair_column", "max_eval_samples")
        metrics = run_dir.evaluate_run(ns.run_dir, overrides, ns.split, ns.eval_file, ns.test_dir, trust)
        text = json.dumps(metrics, indent=2)
        if ns.output_file:
            with open(ns.output_file, "w") as fh:
                fh.write(text + "\n")
        print(text)
        return 0

    return with_run(ns, work)
