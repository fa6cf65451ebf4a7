"""Same results before and after a change that should not change behaviour (a refactor).

Runs the README's default run, the quick benchmark and one small run per task and strategy family, then keeps
each results.json's figures that a refactor must not move (metrics, selected step, histories, parameter counts,
derived settings) and drops those that vary from run to run (times, memory, versions, paths)::

    python -m benchmarks.parity --out before.json            # on the commit before the change
    python -m benchmarks.parity --out after.json             # on the change
    python -m benchmarks.parity --compare before.json after.json

``--skip_default`` leaves out the default run (about 4.5 minutes on 2 cores); the rest takes about 6.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SMALL = ["--max_train_samples", "96", "--max_eval_samples", "48", "--num_train_epochs", "2", "--report_to", "none"]
RUNS = {
    "default_text_cls_lora": ["recipes/lora_text_cls.py"],
    "text_cls_head": ["recipes/head_text_cls.py", *SMALL],
    "text_cls_partial": ["recipes/partial_text_cls.py", *SMALL],
    "text_cls_full": ["recipes/full_text_cls.py", *SMALL],
    "causal_lm_lora": ["recipes/lora_sft.py", "--max_train_samples", "32", "--max_eval_samples", "8",
                       "--max_generation_samples", "4", "--num_train_epochs", "1", "--report_to", "none"],
    "token_cls_lora": ["recipes/lora_token_cls.py", *SMALL],
    "image_cls_lora": ["recipes/lora_image_cls.py", "--max_train_samples", "64", "--max_eval_samples", "32",
                       "--num_train_epochs", "2", "--report_to", "none"],
}
# Keys whose values differ between two identical runs (clocks, memory, machine, paths) or that only describe the
# invocation.
VOLATILE_PARTS = ("time", "memory")
VOLATILE_KEYS = {"versions", "command", "artifact_dir", "output_dir", "hardware", "logging_dir", "date", "commit",
                 "git_commit"}


def stable(value, key: str = ""):
    """``value`` without the entries that vary between identical runs."""
    if isinstance(value, dict):
        return {k: stable(v, k) for k, v in value.items() if not (
            k in VOLATILE_KEYS or k.endswith("_s") or any(part in k for part in VOLATILE_PARTS))}
    if isinstance(value, list):
        return [stable(v, key) for v in value]
    return value


def run(name: str, argv: list[str], workdir: Path) -> dict:
    out = workdir / name
    cmd = [sys.executable, *argv, "--output_dir", str(out)]
    if name == "quick_bench":
        cmd = [sys.executable, "-m", "benchmarks", "--quick", "--output_dir", str(out)]
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, env=os.environ | {"HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"{name} failed (exit {proc.returncode})")
    return stable(json.loads((out / "results.json").read_text()))


def compare(before: dict, after: dict, path: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        diffs = []
        for k in sorted(set(before) | set(after)):
            if k not in before or k not in after:
                diffs.append(f"{path}/{k}: only in {'after' if k in after else 'before'}")
            else:
                diffs += compare(before[k], after[k], f"{path}/{k}")
        return diffs
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [d for i, (b, a) in enumerate(zip(before, after, strict=True)) for d in compare(b, a, f"{path}[{i}]")]
    return [] if before == after else [f"{path}: {json.dumps(before)[:120]} -> {json.dumps(after)[:120]}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="where to write the figures (JSON)")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--skip_default", action="store_true", help="leave out the 4.5-minute default run")
    parser.add_argument("--only", nargs="*", help=f"run only these (names: {', '.join(RUNS)}, quick_bench)")
    args = parser.parse_args(argv)
    if args.compare:
        before, after = (stable(json.loads(p.read_text())) for p in args.compare)
        diffs = compare(before, after)
        print("\n".join(diffs) if diffs else f"identical: {', '.join(sorted(set(before) & set(after)))}")
        return 1 if diffs else 0
    runs = dict(RUNS) | {"quick_bench": []}
    if args.skip_default:
        runs.pop("default_text_cls_lora")
    if args.only:
        runs = {k: v for k, v in runs.items() if k in args.only}
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, argv_ in runs.items():
            figures[name] = run(name, argv_, Path(tmp))
            if args.out:
                args.out.write_text(json.dumps(figures, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
