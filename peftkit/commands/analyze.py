"""`peftkit analyze`: what a trained classifier gets wrong (per-class scores, confusion, calibration, mistakes)."""

from __future__ import annotations

from pathlib import Path

from peftkit.commands.common import add_run_options, given, with_run


def add_parser(sub) -> None:
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
    add_run_options(a)


def run(ns, argv: list[str]) -> int:
    def work(trust) -> int:
        from peftkit.analysis import analyze

        overrides = given(ns, "text_column", "label_column", "text_pair_column")
        result = analyze(ns.run_dir, ns.split, ns.eval_file, ns.test_dir, ns.output_dir, ns.top_k, ns.bins,
                         overrides, trust)
        out = result["output_dir"]
        files = ", ".join(sorted(p.name for p in Path(out).iterdir()))
        print(f"{result['examples']} examples of {result['data']}: {result['headline']}\nWritten to {out}: "
              f"{files}")
        return 0

    return with_run(ns, work)
