"""Turn the suite's runs into results.md (ratios to full fine-tuning) and a plot."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

SMOKE_NOTE = ("**Smoke run.** --quick trains on 64 examples (or the --train_sizes asked) for a few steps and tests "
              "on 32: it checks that every strategy runs end to end and that the report is made. Its accuracies are "
              "near chance and its times are dominated by start-up; compare nothing here. Run without --quick for "
              "figures.")
MARKERS = "osD^vP*Xh<>p"
# What the accuracy and f1 columns hold for each task (see suite.SCORES), as table and axis labels.
NAMES = {"text_cls": ("test acc", "macro F1", "test accuracy (%)"),
         "causal_lm": ("exact match", "token F1", "held-out exact match (%)"),
         "token_cls": ("entity F1", "word acc", "test entity F1 (%)"),
         "image_cls": ("test acc", "macro F1", "test accuracy (%)"),
         "preference": ("reward acc", "pref acc", "held-out reward accuracy (%)")}
# Rows trained without peftkit (suite.SCRIPTS): always one process, never in the scaling table.
WITHOUT_PEFTKIT = ("reference", "bare_loop")
METRICS = ("accuracy", "f1", "base_accuracy", "eval_loss", "peak_memory_bytes", "train_runtime_s", "samples_per_s",
           "tokens_per_s", "step_time_median_s", "trainable_params", "trainable_params_without_head", "artifact_bytes",
           "merge_time_s", "memory_over_loaded_bytes", "real_token_share", "reward_margin")


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per strategy: mean and spread (sample stdev) of each metric over its successful seeds."""
    out: dict[str, dict[str, Any]] = {}
    for row in runs:
        entry = out.setdefault(row["strategy"], {"ok": 0, "failed": 0, "errors": [], "values": {}})
        if row["status"] != "ok":
            entry["failed"] += 1
            entry["errors"].append(row.get("error", ""))
            continue
        entry["ok"] += 1
        if row.get("loaded_memory_bytes") is not None:  # CPU: what training added to the loaded process
            row = row | {"memory_over_loaded_bytes": row["peak_memory_bytes"] - row["loaded_memory_bytes"]}
        for key in METRICS:
            if row.get(key) is not None:
                entry["values"].setdefault(key, []).append(row[key])
    for entry in out.values():
        entry["mean"] = {k: statistics.fmean(v) for k, v in entry["values"].items()}
        entry["std"] = {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in entry["values"].items()}
    return out


def process_counts(results: dict[str, Any]) -> list[int]:
    counts = results["config"]["num_processes"]
    return counts if isinstance(counts, list) else [counts]  # older results.json: one count


def train_sizes(results: dict[str, Any]) -> list[str]:
    """The learning curve's sizes; ["all"] for a run of the whole split with fixed settings (no curve)."""
    return results["config"].get("train_sizes") or ["all"]


def size_unit(results: dict[str, Any], flag: bool = False) -> str:
    """What a learning curve's sizes count: training examples, or examples per class (--shots)."""
    if results["config"].get("shots"):
        return "examples per class" + (" (--shots)" if flag else "")
    return "training examples"


def is_curve(results: dict[str, Any]) -> bool:
    return bool(results["config"].get("train_sizes"))


def main_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs the strategy table compares: those at the smallest process count (and the reference), at the
    largest training size of a learning curve."""
    base, largest = min(process_counts(results)), train_sizes(results)[-1]
    return [r for r in results["runs"] if (r.get("num_processes", 1) == base or r["strategy"] in WITHOUT_PEFTKIT)
            and r.get("train_size", "all") == largest]


def curve_cells(results: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """strategy -> training size -> that cell's summary (mean and spread over seeds)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for size in train_sizes(results):
        for strategy, entry in summarize([r for r in results["runs"] if r.get("train_size") == size]).items():
            out.setdefault(strategy, {})[size] = entry
    return out


def learning_curve(results: dict[str, Any]) -> list[str]:
    """Test score by number of training examples: which strategy to pick for the data one has."""
    sizes = train_sizes(results)
    if not is_curve(results):
        return []
    task = results["config"].get("task", "text_cls")
    cells = curve_cells(results)
    n_train = {size: sorted({r["train_examples"] for r in results["runs"]
                             if r.get("train_size") == size and r.get("train_examples")}) for size in sizes}
    header = [f"{size} ({', '.join(f'{n:,}' for n in n_train[size]) or '?'})" if size == "all" else size
              for size in sizes]
    unit = size_unit(results, flag=True)
    lines = ["", "## Learning curve", "",
             f"{NAMES[task][2].split(' (')[0].capitalize()} by number of {unit}: mean +- sample standard "
             f"deviation over seeds (each seed also draws its own training subset), the seed count where some "
             "failed. Every run uses peftkit's defaults, which derive the batch size and the number of epochs from "
             "the data (below the table); validation and test sets are the same at every size.", "",
             "| strategy | " + " | ".join(header) + " |", "|---|" + "---|" * len(sizes)]
    for strategy, per_size in cells.items():
        row = []
        for size in sizes:
            entry = per_size.get(size)
            if not entry or not entry["ok"]:
                row.append("FAILED" if entry else "-")
                continue
            acc = entry["values"]["accuracy"]
            row.append(f"{100 * entry['mean']['accuracy']:.1f} +- {100 * entry['std']['accuracy']:.1f}"
                       + (f" ({entry['ok']} of {entry['ok'] + entry['failed']})" if entry["failed"] else "")
                       + f" [{' '.join(f'{100 * a:.1f}' for a in acc)}]")
        lines.append(f"| {strategy} | " + " | ".join(row) + " |")
    lines += ["", "Each cell lists the seeds' own scores in brackets. Training time (s) and the derived "
              "settings, per size (mean over seeds):", "",
              "| strategy | " + " | ".join(header) + " |", "|---|" + "---|" * len(sizes)]
    for strategy in cells:
        row = []
        for size in sizes:
            runs = [r for r in results["runs"] if r["strategy"] == strategy and r.get("train_size") == size
                    and r["status"] == "ok"]
            if not runs:
                row.append("-")
                continue
            settings = sorted({(r.get("batch_size"), r.get("epochs"), r.get("global_step"), r.get("learning_rate"))
                               for r in runs if r.get("batch_size")}, key=str)
            row.append(f"{statistics.fmean(r['train_runtime_s'] for r in runs):.1f} s; "
                       + ", ".join(f"batch {b} x {_fmt(e, 'g')} ep = {st} steps" + (f", lr {lr:g}" if lr else "")
                                   for b, e, st, lr in settings))
        lines.append(f"| {strategy} | " + " | ".join(row) + " |")
    return lines


def scaling(results: dict[str, Any]) -> list[str]:
    """Training throughput per process count, against the smallest count, for each strategy."""
    counts = process_counts(results)
    if len(counts) < 2:
        return []
    lines = ["", "## Throughput scaling", "",
             f"Training samples/s with N processes against {counts[0]} (speedup), and per process (efficiency = "
             "speedup / (N / that count)). The per-device batch is fixed, so the global batch grows with N and an "
             "epoch takes N times fewer optimizer steps: test accuracy at equal epochs is not comparable across "
             "rows.", "",
             "| strategy | processes | global batch x | samples/s | speedup | efficiency | test acc |",
             "|---|---|---|---|---|---|---|"]
    for strategy in dict.fromkeys(r["strategy"] for r in results["runs"] if r["strategy"] not in WITHOUT_PEFTKIT):
        per_count = {n: summarize([r for r in results["runs"] if r["strategy"] == strategy
                                   and r.get("num_processes") == n]).get(strategy) for n in counts}
        base = per_count[counts[0]]
        for n, entry in per_count.items():
            if not entry or not entry["ok"]:
                lines.append(f"| {strategy} | {n} | FAILED |  |  |  |  |")
                continue
            speed = entry["mean"]["samples_per_s"]
            speedup = speed / base["mean"]["samples_per_s"] if base and base["ok"] else None
            eff = speedup / (n / counts[0]) if speedup is not None else None
            lines.append(f"| {strategy} | {n} | {n / counts[0]:g} | {speed:.1f} | {_fmt(speedup, '.2f')} | "
                         f"{_fmt(eff, '.2f')} | {entry['mean']['accuracy']:.4f} |")
    return lines


def against_the_stock_route(summary: dict[str, dict[str, Any]], score: str) -> list[str]:
    """peftkit's LoRA as ratios to the stock route (same job, same hyper-parameters) and to a bare torch loop on
    the same batches (the engine's overhead)."""
    lora = summary.get("lora")
    if not lora or not lora["ok"]:
        return []
    lines = []
    for name, what in (("reference", "the stock route (transformers Trainer + peft)"),
                       ("bare_loop", "a bare torch loop on peftkit's batches")):
        other = summary.get(name)
        if not other or not other["ok"]:
            continue
        a, b = lora["mean"], other["mean"]
        step = (f"{a['step_time_median_s'] / b['step_time_median_s']:.2f}x" if a.get("step_time_median_s")
                and b.get("step_time_median_s") else "-")
        lines.append(f"| {what} | {a['train_runtime_s'] / b['train_runtime_s']:.2f}x | {step} | "
                     f"{a['peak_memory_bytes'] / b['peak_memory_bytes']:.2f}x | "
                     f"{100 * (a['accuracy'] - b['accuracy']):+.2f} |")
    if not lines:
        return []
    return ["", "## peftkit LoRA against the routes without peftkit", "",
            f"peftkit's lora row divided by the other's (means over seeds; lower time and memory is better), and the "
            f"difference in {score} in points.", "",
            "| against | train time x | median step x | peak memory x | delta (pt) |", "|---|---|---|---|---|",
            *lines]


PHASES = ("data", "forward", "backward", "optimizer", "evaluation", "checkpoint", "feature cache",
          "host memory release", "other")


def time_breakdown(rows: list[dict[str, Any]]) -> list[str]:
    """Where each peftkit strategy's training time went (the engine's phase clock, mean seconds over seeds)."""
    per: dict[str, list[dict[str, float]]] = {}
    for row in rows:
        if row["status"] == "ok" and row.get("time_breakdown_s"):
            per.setdefault(row["strategy"], []).append(row["time_breakdown_s"])
    if not per:
        return []
    lines = ["", "## Where the training time goes", "",
             "Seconds per phase of peftkit's training loop, mean over seeds, and the share of the training time. "
             "Evaluation is the per-epoch validation; data is waiting for the next batch (collation, copy to the "
             "device); other is logging, the progress bar and bookkeeping. On a GPU, kernels run asynchronously: "
             "their time lands where the host next waits (the loss check that ends each backward pass).", "",
             "| strategy | " + " | ".join(PHASES) + " |", "|---" * (len(PHASES) + 1) + "|"]
    for strategy, runs in per.items():
        means = {p: statistics.fmean(r.get(p, 0.0) for r in runs) for p in PHASES}
        total = sum(means.values()) or 1.0
        lines.append(f"| {strategy} | " + " | ".join(f"{means[p]:.1f} ({100 * means[p] / total:.0f}%)" if means[p]
                                                       else "-" for p in PHASES) + " |")
    return lines


def _spread(entry: dict[str, Any], key: str, unit: float, spec: str) -> str:
    """Mean (+- sample standard deviation when there are several seeds) of ``key`` in ``unit``."""
    if key not in entry["mean"]:
        return "-"
    text = format(entry["mean"][key] / unit, spec)
    return text + (f" +- {format(entry['std'][key] / unit, spec)}" if len(entry["values"][key]) > 1 else "")


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(results: dict[str, Any]) -> str:
    """results.md: a title, what was run on which hardware, the tables, the command and any notes."""
    smoke = results["config"]["quick"]
    lines = ["# peftkit benchmark" + (" - SMOKE RUN (--quick): not results" if smoke else ""), "",
             *([SMOKE_NOTE, ""] if smoke else []),
             f"{setup(results)} Hardware: {results['hardware']}.", "",
             *tables(results),
             "", f"Command: `{' '.join(results['command'])}`", ""]
    lines += [f"Note: {note}\n" for note in results.get("notes", [])]  # added by hand to a committed result
    return "\n".join(lines)


def setup(results: dict[str, Any]) -> str:
    """One sentence: the task, data, model, score, settings, seeds and processes of a suite run."""
    cfg = results["config"]
    return (f"Task: {cfg.get('task', 'text_cls')} on {cfg['dataset']} with {cfg['model_name_or_path']}, scored by "
            f"{cfg.get('score', 'test accuracy and macro F1')}; settings "
            f"{cfg['settings'] or 'peftkit defaults'}; {cfg['repeats']} seed(s) from {cfg['seed']}; "
            f"{process_counts(results)[0]} process(es)"
            + (" (the rows without peftkit always 1); " if any(r["strategy"] in WITHOUT_PEFTKIT
                                                               for r in results["runs"]) else "; ")
            + f"{'quick' if cfg['quick'] else 'full'} mode.")


def tables(results: dict[str, Any]) -> list[str]:
    """The strategy table (ratios to full fine-tuning) and the sections under it, as Markdown lines: what
    results.md and the docs site's benchmark pages (docs/gen_benchmarks.py) both show."""
    summary = summarize(main_rows(results))
    full = summary.get("full", {}).get("mean", {})
    task = results["config"].get("task", "text_cls")
    score, f1, _ = NAMES[task]
    lm = task in ("causal_lm", "preference")
    lines = [
        *([f"A learning curve over {', '.join(train_sizes(results))} {size_unit(results)} (section below); the "
           f"strategy table is at {train_sizes(results)[-1]} of them.", ""] if is_curve(results) else []),
        "Ratios are against full fine-tuning on the same data, epochs and seeds: memory x = peak memory / full's "
        f"(lower is lighter), speed x = full's training time / this one's (higher is faster), delta in points of "
        f"{score}. Values are means over seeds (+- sample standard deviation). Over loaded (CPU) = peak resident "
        "memory less the process's resident memory when training starts, model loaded: what training itself adds "
        "over the interpreter, libraries and weights."
        + (" base = the same score of the model before training; val loss = validation loss per supervised token."
           if task == "causal_lm" else "")
        + (" pref acc = how often the model finds the chosen answer the more likely; base = that of the model "
           "before training (it is its own reference, so its rewards are all 0); val loss = validation loss per "
           "pair." if task == "preference" else ""),
        "",
        f"| strategy | {score} | {f1} | delta vs full (pt) | " + ("base | val loss | " if lm else "")
        + "peak mem (MiB) | over loaded (MiB) | memory x | train time (s) | "
        "speed x | samples/s | tokens/s | median step (s) | trainable | trainable w/o head | artefact (MiB) | "
        "merge (s) |",
        "|---|---|---|---|" + ("---|---|" if lm else "") + "---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for strategy, entry in summary.items():
        lines.append(_strategy_row(strategy, entry, full, lm))
    lines += against_the_stock_route(summary, score)
    lines += time_breakdown(main_rows(results))
    lines += scaling(results)
    lines += learning_curve(results)
    if results.get("missing"):
        lines += ["", f"**Incomplete:** {len(results['missing'])} of "
                  f"{len(results['missing']) + len(results['runs'])} runs have not been made yet: "
                  + ", ".join(results["missing"]) + ". The same command with --resume runs them."]
    return lines


def _strategy_row(strategy: str, entry: dict[str, Any], full: dict[str, float], lm: bool) -> str:
    """One strategy's row of the main table."""
    if not entry["ok"]:
        return f"| {strategy} | FAILED: {entry['errors'][-1][:120]} |" + " |" * (16 if lm else 14)
    m, sd = entry["mean"], entry["std"]
    acc_delta = 100 * (m["accuracy"] - full["accuracy"]) if "accuracy" in full else None
    mem_x = m["peak_memory_bytes"] / full["peak_memory_bytes"] if "peak_memory_bytes" in full else None
    speed_x = full["train_runtime_s"] / m["train_runtime_s"] if "train_runtime_s" in full else None
    return (
        f"| {strategy} | {m['accuracy']:.4f} +- {sd['accuracy']:.4f} | {_fmt(m.get('f1'), '.4f')} | "
        f"{_fmt(acc_delta, '+.2f')} | "
        + (f"{_fmt(m.get('base_accuracy'), '.4f')} | {_fmt(m.get('eval_loss'), '.4f')} | " if lm else "")
        + f"{_spread(entry, 'peak_memory_bytes', 2**20, '.0f')} | "
        f"{_spread(entry, 'memory_over_loaded_bytes', 2**20, '.0f')} | {_fmt(mem_x, '.2f')} | "
        f"{_spread(entry, 'train_runtime_s', 1, '.1f')} | "
        f"{_fmt(speed_x, '.2f')} | {_fmt(m.get('samples_per_s'), '.1f')} | {_fmt(m.get('tokens_per_s'), '.0f')} | "
        f"{_fmt(m.get('step_time_median_s'), '.4f')} | "
        f"{_fmt(m.get('trainable_params'), ',.0f')} | {_fmt(m.get('trainable_params_without_head'), ',.0f')} | "
        f"{_fmt(m.get('artifact_bytes') and m['artifact_bytes'] / 2**20, '.1f')} | "
        f"{_fmt(m.get('merge_time_s'), '.1f')} |"
        + (f" ({entry['failed']} failed)" if entry["failed"] else ""))


def plot(results: dict[str, Any], path: Path) -> None:
    """Accuracy against peak memory and against training time, one point per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = {k: v for k, v in summarize(main_rows(results)).items() if v["ok"]}
    smoke = results["config"]["quick"]
    curve = is_curve(results)
    fig, axes = plt.subplots(1, 3 if curve else 2, figsize=(16.5 if curve else 11, 4.6))
    for ax, key, label in ((axes[0], "peak_memory_bytes", "peak memory (MiB)"),
                           (axes[1], "train_runtime_s", "training time (s)")):
        for i, (strategy, entry) in enumerate(summary.items()):
            unit = 2**20 if key == "peak_memory_bytes" else 1
            x, y = entry["mean"][key] / unit, 100 * entry["mean"]["accuracy"]
            # A legend, not labels beside the points: strategies often sit on top of each other.
            ax.errorbar(x, y, xerr=entry["std"][key] / unit, yerr=100 * entry["std"]["accuracy"],
                        fmt=MARKERS[i % len(MARKERS)], capsize=3,
                        markersize=7, label=strategy, color=f"C{i}")
        ax.set_xlabel(label)
        ax.set_ylabel(NAMES[results["config"].get("task", "text_cls")][2])
        ax.grid(alpha=0.3)
        if smoke:  # a smoke run's accuracies are noise: show them on the whole scale, marked as such
            ax.set_ylim(0, 100)
            ax.text(0.5, 0.5, "SMOKE RUN\nnot results", transform=ax.transAxes, ha="center", va="center",
                    fontsize=22, color="grey", alpha=0.35, rotation=20)
    if curve:
        _plot_curve(axes[2], results)
    # The curve has every strategy; the other panels only those finished at the largest size.
    handles, names = axes[2 if curve else 0].get_legend_handles_labels()
    if names:  # nothing to show when every strategy failed
        fig.legend(handles, names, loc="lower center", ncol=len(names), frameon=False)
    title = f"peftkit strategies on {results['config']['dataset']}"
    if curve:
        title += f" (left, middle: {train_sizes(results)[-1]} training examples)"
    fig.suptitle(title + (" - smoke run (--quick): accuracies near chance, not results" if smoke else
                          " (full mode)"))
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_curve(ax: Any, results: dict[str, Any]) -> None:
    """Score against training examples (log scale), mean and spread over seeds, one line per strategy."""
    order = list(summarize(main_rows(results)))  # the other panels' colours and markers
    ticks: set[float] = set()
    for strategy, per_size in curve_cells(results).items():
        i = order.index(strategy) if strategy in order else len(order)
        points = []
        for size, entry in per_size.items():
            if entry["ok"]:
                n = statistics.fmean(r["train_examples"] for r in results["runs"] if r["strategy"] == strategy
                                     and r.get("train_size") == size and r["status"] == "ok")
                points.append((n, 100 * entry["mean"]["accuracy"], 100 * entry["std"]["accuracy"]))
        if points:
            x, y, err = zip(*sorted(points), strict=True)
            ticks.update(x)
            ax.errorbar(x, y, yerr=err, fmt="-" + MARKERS[i % len(MARKERS)], capsize=3, markersize=6, color=f"C{i}",
                        label=strategy)
    ax.set_xscale("log")
    ax.set_xticks(sorted(ticks), [f"{t:,.0f}" for t in sorted(ticks)])
    ax.minorticks_off()
    ax.set_xlabel("training examples (log scale)")
    ax.set_ylabel(NAMES[results["config"].get("task", "text_cls")][2])
    ax.set_title("learning curve (mean +- sd over seeds)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
