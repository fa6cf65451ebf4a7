"""Compare every strategy's accuracy, peak memory and speed against full fine-tuning.

    python -m benchmarks --quick                      # a tiny subset: a smoke run of every strategy
    python -m benchmarks --output_dir benchmarks/results/full_mode_$(date +%F) --repeats 3   # a dated folder each
    python -m benchmarks --strategies lora qlora full --num_processes 2
    python -m benchmarks --strategies lora --num_processes 1 2 4 --no_reference   # throughput scaling
    python -m benchmarks --task causal_lm             # SFT of SmolLM2-135M: full, lora, qlora, dora + TRL
    python -m benchmarks --task preference            # DPO of SmolLM2-135M: full, lora, qlora + TRL's DPOTrainer
    python -m benchmarks --train_sizes 100 300 1000 all --repeats 3   # learning curves: what to use for how much data
    python -m benchmarks --shots 8 16 32 64 --repeats 5   # few-shot: peftkit's few-shot default, SetFit, TF-IDF
    python -m benchmarks --strategies lora --repeats 3 --set group_by_length=false   # a variant of every run

Writes results.json, results.md and results.png in --output_dir (per-run directories under runs/).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.report import markdown, plot
from benchmarks.suite import BenchConfig, run_suite


def build_parser() -> argparse.ArgumentParser:
    """The suite's flags (the docs' reference page reads them too)."""
    from benchmarks.suite import SET_HELP, STRATEGIES
    from peftkit.strategies import available

    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="text_cls", choices=sorted(STRATEGIES), help="what the strategies learn")
    ap.add_argument("--strategies", nargs="+", default=None,
                    help=f"strategies to run, or `all` for every registered one ({', '.join(available())}); default: "
                    + "; ".join(f"{t}: {' '.join(s)}" for t, s in STRATEGIES.items()))
    ap.add_argument("--output_dir", default="runs/bench", help="where results.json/.md/.png go")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: a tiny subset (64 training examples; 32 for causal_lm), 1 epoch")
    ap.add_argument("--repeats", type=int, default=1, help="seeds per strategy, for mean and spread")
    ap.add_argument("--seed", type=int, default=42, help="first seed; repeats use seed, seed+1, ...")
    ap.add_argument("--num_processes", type=int, nargs="+", default=[1],
                    help="processes per run (Accelerate); several counts add a throughput scaling table")
    ap.add_argument("--no_reference", action="store_true",
                    help="skip the stock reference (transformers Trainer + peft; TRL's SFTTrainer for causal_lm, its "
                    "DPOTrainer for preference)")
    ap.add_argument("--model_name_or_path", default=None, help="default: the built-in MiniLM (SmolLM2 for "
                    "causal_lm and preference)")
    ap.add_argument("--max_train_samples", type=int, default=None)
    ap.add_argument("--num_train_epochs", type=float, default=None)
    ap.add_argument("--set", nargs="+", default=[], metavar="FLAG=VALUE", help=SET_HELP)
    ap.add_argument("--train_sizes", nargs="+", default=None, metavar="N|all",
                    help="a learning curve: train every strategy on the first N training examples (each seed draws "
                    "its own), for each N, with peftkit's defaults (batch size and epochs derived from the data); "
                    "no reference row")
    ap.add_argument("--shots", nargs="+", type=int, default=None, metavar="K",
                    help="a few-shot curve (text_cls): K examples per class drawn by peftkit's --shots with each "
                    "seed, for each K; rows: peftkit's few-shot default (full --contrastive), head, lora, full, and "
                    "the setfit library and TF-IDF + logistic regression on the same examples (pip install setfit)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the runs a stopped suite finished in --output_dir (run the same command again) and "
                    "run only the rest; each row records the peftkit commit that made it. A run whose directory is "
                    "gone (a fresh clone: runs/ is not committed) is reused from the committed results.json or "
                    "results.partial.json in --output_dir")
    ap.add_argument("--report_only", action="store_true",
                    help="train nothing: write the report from the runs already finished in --output_dir (as "
                    "--resume would reuse them) and list the ones still missing")
    return ap


def parse(argv: list[str]) -> BenchConfig:
    from benchmarks.suite import FEWSHOT_ROWS, FEWSHOT_STRATEGIES, STRATEGIES, parse_set
    from peftkit.strategies import available

    ap = build_parser()
    args = ap.parse_args(argv)
    sizes: list[int | None] | None = None
    if args.train_sizes:
        try:
            sizes = sorted({None if n == "all" else int(n) for n in args.train_sizes}, key=lambda n: n or 2**62)
        except ValueError:
            ap.error(f"--train_sizes takes positive whole numbers or `all`, got {' '.join(args.train_sizes)}")
        if any(n is not None and n < 1 for n in sizes):
            ap.error("--train_sizes must be positive")
        if args.max_train_samples is not None:
            ap.error("--train_sizes sets the number of training examples: leave out --max_train_samples")
    if args.shots:
        if args.train_sizes or args.max_train_samples is not None or args.task != "text_cls":
            ap.error("--shots is a curve of its own, for text_cls: leave out --train_sizes and --max_train_samples")
        if min(args.shots) < 1:
            ap.error("--shots must be positive")
        args.strategies = args.strategies or FEWSHOT_STRATEGIES
    args.strategies = args.strategies or STRATEGIES[args.task]
    if args.strategies == ["all"]:
        args.strategies = available()  # built-ins and installed plug-ins alike
    unknown = sorted(set(args.strategies) - set(available()) - (set(FEWSHOT_ROWS) if args.shots else set()))
    if unknown:
        ap.error(f"unknown strategies {unknown}; registered: {', '.join(available())}")
    if args.repeats < 1 or min(args.num_processes) < 1:
        ap.error("--repeats and --num_processes must be >= 1")
    settings = {k: v for k in ("max_train_samples", "num_train_epochs") if (v := getattr(args, k)) is not None}
    settings |= parse_set(ap, args.set)
    # Resolved against the directory the user ran from: the runs themselves start in the checkout.
    return BenchConfig(strategies=args.strategies, output_dir=Path(args.output_dir).resolve(), quick=args.quick,
                       repeats=args.repeats, seed=args.seed, num_processes=sorted(set(args.num_processes)),
                       reference=not args.no_reference, model_name_or_path=args.model_name_or_path,
                       settings=settings, task=args.task, train_sizes=sizes,
                       shots=sorted(set(args.shots or [])) or None,
                       resume=args.resume, report_only=args.report_only)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg = parse(argv)
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    results = run_suite(cfg, ["python", "-m", "benchmarks", *argv])
    (cfg.output_dir / "results.json").write_text(json.dumps(results, indent=2))
    table = markdown(results)
    (cfg.output_dir / "results.md").write_text(table)
    print("\n" + table)
    try:
        plot(results, cfg.output_dir / "results.png")
    except ImportError:
        print("The plot needs matplotlib: pip install 'peftkit[bench]'. results.json and results.md are written.",
              file=sys.stderr)
        return 1
    print(f"Wrote {cfg.output_dir}/results.json, results.md and results.png")
    return 0 if all(r["status"] == "ok" for r in results["runs"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
