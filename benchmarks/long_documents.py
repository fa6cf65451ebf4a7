"""A user's own data: a few hundred long documents in several classes, trained with default flags.

The documents are this machine's manual pages (``/usr/share/man``), rendered to plain text, each labelled by
its section: user command (1), system call (2), library function (3), file format (5), administration
command (8). They are long (median several thousand characters: far past --max_seq_length), written for
people, and the classes are close in places (a system call and the library function wrapping it; a user and
an administration command). The header and footer lines, which name the section, are removed.

    python -m benchmarks.long_documents --output_dir runs/long_documents            # lora, full, head
    python -m benchmarks.long_documents --per_class 120 --strategies lora --seeds 0 1 2
    python -m benchmarks.long_documents --strategies lora --set pooling=mean --output_dir runs/long_docs_mean

Writes data/train.csv and data/test.csv (columns text, section), one run directory per strategy and seed, and
results.md / results.json with test accuracy and macro F1 against the majority class and a TF-IDF + logistic
regression baseline (scikit-learn, where installed). Which pages exist depends on the machine's installed
packages: the file list is saved with its checksum, so a figure can be tied to its data.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import random
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

SECTIONS = {"1": "user command", "2": "system call", "3": "library function", "5": "file format",
            "8": "administration command"}
MAN = Path("/usr/share/man")


def render(page: Path) -> str:
    """The page as plain text, without the header and footer lines (they name the section)."""
    out = subprocess.run(["man", "-l", str(page)], capture_output=True, text=True, timeout=60,
                         env={"MANWIDTH": "100", "MAN_KEEP_FORMATTING": "0", "PATH": "/usr/bin:/bin"}).stdout
    lines = [line for line in subprocess.run(["col", "-b"], input=out, capture_output=True, text=True).stdout
             .splitlines() if line.strip()]
    return "\n".join(line.strip() for line in lines[1:-1])


def build(output_dir: Path, per_class: int, test_fraction: float, seed: int) -> dict:
    rng = random.Random(seed)
    rows, files = [], []
    for number, name in SECTIONS.items():
        pages = sorted((MAN / f"man{number}").glob(f"*.{number}.gz"))  # e.g. ls.1.gz, not .1ssl or .3pm
        if len(pages) < per_class:
            raise SystemExit(f"Only {len(pages)} pages in {MAN}/man{number}; lower --per_class.")
        for page in rng.sample(pages, per_class):
            text = render(page)
            if len(text) > 200:  # a few pages only point to another one (".so")
                rows.append({"text": text, "section": name})
                files.append(str(page))
    rng.shuffle(rows)
    data = output_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    n_test = int(len(rows) * test_fraction)
    for split, part in (("test", rows[:n_test]), ("train", rows[n_test:])):
        with open(data / f"{split}.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["text", "section"])
            writer.writeheader()
            writer.writerows(part)
    (data / "files.txt").write_text("\n".join(files) + "\n")
    lengths = sorted(len(r["text"]) for r in rows)
    return {"documents": len(rows), "train": len(rows) - n_test, "test": n_test,
            "classes": dict(Counter(r["section"] for r in rows)), "median_chars": lengths[len(lengths) // 2],
            "files_sha256": hashlib.sha256((data / "files.txt").read_bytes()).hexdigest()[:16]}


def baselines(data: Path) -> dict:
    csv.field_size_limit(sys.maxsize)  # some pages (bash, perlfunc) run past csv's 128 KiB default

    def read(split):
        with open(data / f"{split}.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        return [r["text"] for r in rows], [r["section"] for r in rows]

    (x_train, y_train), (x_test, y_test) = read("train"), read("test")
    majority = Counter(y_train).most_common(1)[0][0]
    out = {"majority class": {"accuracy": sum(y == majority for y in y_test) / len(y_test)}}
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import accuracy_score, f1_score
        from sklearn.pipeline import make_pipeline
    except ImportError:
        return out
    def first_tokens(texts: list[str]) -> list[str]:  # what a run with --max_seq_length 128 reads
        from transformers import AutoTokenizer

        from peftkit.assets import builtin_model_path

        tok = AutoTokenizer.from_pretrained(str(builtin_model_path()))
        return [tok.convert_tokens_to_string(tok.tokenize(t)[:126]) for t in texts]

    for name, cut in (("whole documents", lambda xs: xs), ("first 128 tokens", first_tokens)):
        model = make_pipeline(TfidfVectorizer(sublinear_tf=True, min_df=2),
                              LogisticRegression(max_iter=2000, C=10))
        predicted = model.fit(cut(x_train), y_train).predict(cut(x_test))
        out[f"TF-IDF + logistic regression ({name})"] = {
            "accuracy": accuracy_score(y_test, predicted), "f1": f1_score(y_test, predicted, average="macro")}
    return out


def main(argv: list[str] | None = None) -> int:
    from benchmarks.suite import SET_HELP, BenchConfig, hardware, parse_set, stamp, train_strategy
    from peftkit.runner import versions

    ap = argparse.ArgumentParser(prog="python -m benchmarks.long_documents", description=__doc__.splitlines()[0])
    ap.add_argument("--output_dir", default="runs/long_documents")
    ap.add_argument("--strategies", nargs="+", default=["lora", "full", "head"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[42])
    ap.add_argument("--per_class", type=int, default=120, help="pages drawn from each section")
    ap.add_argument("--test_fraction", type=float, default=0.2)
    ap.add_argument("--set", nargs="+", default=[], metavar="FLAG=VALUE", help=SET_HELP)
    ap.add_argument("--resume", action="store_true", help="keep the runs a stopped invocation finished")
    args = ap.parse_args(argv)
    extra = parse_set(ap, args.set)
    out = Path(args.output_dir).resolve()
    info = build(out, args.per_class, args.test_fraction, seed=0)
    print(f"Data: {info}", flush=True)
    reference = baselines(out / "data")
    settings = {"train_file": out / "data" / "train.csv", "test_file": out / "data" / "test.csv",
                "label_column": "section", **extra}
    # The benchmark suite's runs: a fresh process each, the adapters merged with a parity check, --resume.
    cfg = BenchConfig(strategies=args.strategies, output_dir=out, reference=False, settings=settings,
                      derived_defaults=True, resume=args.resume)
    runs = []
    for seed in args.seeds:
        for strategy in args.strategies:
            print(f"{strategy} (seed {seed}) ...", flush=True)
            row = train_strategy(cfg, strategy, seed)
            print(f"  {strategy}: {row.get('accuracy', row.get('error'))}", flush=True)
            runs.append(row)
    results = {"data": info, "baselines": reference, "settings": {k: str(v) for k, v in extra.items()},
               "runs": runs, **stamp(), "hardware": hardware(), "versions": versions(),
               "command": ["python", "-m", "benchmarks.long_documents", *(sys.argv[1:] if argv is None else argv)]}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(report(results, args.strategies, out))
    return 0 if all(r["status"] == "ok" for r in runs) else 1


def report(results: dict, strategies: list[str], out: Path) -> str:
    """Write results.md (a title and the table) and return it."""
    extra = " ".join(f"--{k} {v}" for k, v in results.get("settings", {}).items())
    lines = [f"# Long documents, default flags{' and ' + extra if extra else ''}", "", *table(results, strategies)]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


def table(results: dict, strategies: list[str] | None = None) -> list[str]:
    """The data and the table of baselines and peftkit runs, as Markdown lines: what results.md and the docs
    site's page (docs/gen_benchmarks.py) both show."""
    info, reference, runs = results["data"], results["baselines"], results["runs"]
    lines = [f"Data: {info}", "", "| model | test accuracy | macro F1 | "
             "train time (s) | batch x epochs = steps |", "|---|---|---|---|---|"]
    for name, scores in reference.items():
        f1 = f"{scores['f1']:.4f}" if "f1" in scores else "-"
        lines.append(f"| {name} | {scores['accuracy']:.4f} | {f1} | | |")
    for strategy in strategies or dict.fromkeys(r["strategy"] for r in runs):
        ok = [r for r in runs if r["strategy"] == strategy and r["status"] == "ok"]
        if not ok:
            lines.append(f"| peftkit {strategy} | FAILED | | | |")
            continue
        acc = [r["accuracy"] for r in ok]
        spread = f" +- {statistics.stdev(acc):.4f} [{' '.join(f'{a:.3f}' for a in acc)}]" if len(acc) > 1 else ""
        steps = ok[0].get("global_step", ok[0].get("steps"))  # "steps" in the first results.json (2026-11-26)
        lines.append(f"| peftkit {strategy} | {statistics.fmean(acc):.4f}{spread} | "
                     f"{statistics.fmean(r['f1'] for r in ok):.4f} | "
                     f"{statistics.fmean(r['train_runtime_s'] for r in ok):.1f} | "
                     f"{ok[0]['batch_size']} x {ok[0]['epochs']:g} = {steps} |")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
