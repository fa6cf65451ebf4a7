"""`peftkit merge`: adapters into the base weights, a plain transformers model, with a parity report."""

from __future__ import annotations

from pathlib import Path

from peftkit.commands.common import add_run_options, with_run


def add_parser(sub) -> None:
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
    add_run_options(m)


def run(ns, argv: list[str]) -> int:
    def work(trust) -> int:
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

    return with_run(ns, work)
