"""What a search leaves: search.json and search.md (every trial: settings, validation metric, time, peak memory),
search.png (the metric against trial, training time and peak memory, by strategy) and best.yaml, which
`peftkit train --config best.yaml` trains directly."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from peftkit.search.space import Space, flag_of

logger = logging.getLogger(__name__)
STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "interrupted",
          "WAITING": "waiting"}
GIB = 1024 ** 3


def show(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def trial_rows(study, metric: str) -> list[dict[str, Any]]:
    """One row per trial, in order; the metric is the run's best validation value (a pruned run's too)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        results_file = Path(attrs.get("run_dir", "")) / "results.json"
        results = json.loads(results_file.read_text()) if attrs.get("run_dir") and results_file.is_file() else {}
        rows.append({
            "trial": t.number, "state": STATES.get(t.state.name, t.state.name.lower()),
            "strategy": t.params.get("strategy"),
            "params": {flag_of(k): v for k, v in t.params.items() if k != "strategy"},
            "validation": (results.get("eval") or {}).get(metric),
            "train_runtime_s": attrs.get("train_runtime_s"), "wall_s": attrs.get("wall_s"),
            "peak_memory_bytes": attrs.get("peak_memory_bytes"), "pruned_at_step": attrs.get("pruned_at_step"),
            "global_step": attrs.get("global_step"), "error": attrs.get("error"), "run_dir": attrs.get("run_dir"),
        })
    return rows


def best_config(space: Space, row: dict[str, Any]) -> dict[str, Any]:
    """The flags that train the chosen configuration again: task, strategy, the fixed flags it takes, its draws."""
    fixed = {k: (True if v is None else v) for k, v in space.fixed.items() if space.applies(k, row["strategy"])}
    return {"task": space.task, "strategy": row["strategy"], **fixed, **row["params"]}


def write(out: Path, study, space: Space, metric: str, method: str) -> dict[str, Any]:
    """Write search.json, search.md, search.png and best.yaml; return the summary (search.json's content)."""
    import optuna

    rows = trial_rows(study, metric)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    best = None
    if complete:
        chosen = study.best_trial
        row = next(r for r in rows if r["trial"] == chosen.number)
        best = {"trial": chosen.number, "validation": row["validation"], "strategy": row["strategy"],
                "params": row["params"], "run_dir": row["run_dir"], "config": best_config(space, row)}
    counts = {state: sum(r["state"] == state for r in rows) for state in ("complete", "pruned", "failed",
                                                                         "interrupted")}
    summary = {"task": space.task, "metric": metric, "direction": study.direction.name.lower(), "method": method,
               "space": space.as_dict(), "counts": counts, "best": best, "trials": rows}
    save(out, summary)
    if best is not None:
        write_best_yaml(out / "best.yaml", best, metric)
    try:
        plot(out / "search.png", summary)
    except ImportError:
        logger.warning("matplotlib is not installed: no search.png (pip install matplotlib).")
    return summary


def add_test(out: Path, summary: dict[str, Any], test: dict[str, Any]) -> dict[str, Any]:
    summary["best"]["test"] = test
    save(out, summary)
    return summary


def save(out: Path, summary: dict[str, Any]) -> None:
    (out / "search.json").write_text(json.dumps(summary, indent=2))
    (out / "search.md").write_text(markdown(summary))


def write_best_yaml(path: Path, best: dict[str, Any], metric: str) -> None:
    import yaml

    header = (f"# peftkit search: trial {best['trial']}, validation {metric} {best['validation']:.4f}, chosen on the "
              f"validation split.\n# Train it again: peftkit train --config {path} --output_dir runs/best\n")
    path.write_text(header + yaml.safe_dump(best["config"], sort_keys=False))


def markdown(summary: dict[str, Any]) -> str:
    metric, rows = summary["metric"], summary["trials"]
    names = sorted({k for r in rows for k in r["params"]})
    better_high = summary["direction"] == "maximize"

    def order(r):
        value = r["validation"]
        return (value is None, -(value or 0) if better_high else (value or 0), r["trial"])

    lines = [f"# peftkit search: {summary['task']}, {summary['method']}, {len(rows)} trials", "",
             f"Validation {metric} ({'higher' if better_high else 'lower'} is better); the test split was not read "
             "during the search. " + ", ".join(f"{n} {k}" for k, n in summary["counts"].items() if n) + ".", "",
             "| trial | state | strategy | " + " | ".join(names) + f" | validation {metric} | train s | wall s "
             "| peak memory GiB | note |",
             "|" + "---|" * (8 + len(names))]
    for r in sorted(rows, key=order):
        note = r["error"] or (f"pruned at step {r['pruned_at_step']}" if r["pruned_at_step"] is not None else "")
        cells = [r["trial"], r["state"], r["strategy"], *(show(r["params"].get(n, "")) for n in names),
                 f"{r['validation']:.4f}" if r["validation"] is not None else "",
                 f"{r['train_runtime_s']:.0f}" if r["train_runtime_s"] is not None else "",
                 f"{r['wall_s']:.0f}" if r["wall_s"] is not None else "",
                 f"{r['peak_memory_bytes'] / GIB:.2f}" if r["peak_memory_bytes"] else "", note.replace("|", "/")]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    best = summary.get("best")
    if best:
        lines += ["", f"Best: trial {best['trial']} ({best['strategy']}"
                  + "".join(f", {k}={show(v)}" for k, v in best["params"].items())
                  + f"), validation {metric} {best['validation']:.4f}."]
        test = best.get("test")
        if test is not None and metric in test:
            lines.append(f"Its test split, read once after the choice: {metric} {test[metric]:.4f}.")
        elif test is not None:
            lines.append(f"Not tested: {test['skipped']}." if "skipped" in test else
                         f"Its test evaluation failed: {test.get('error')}")
        lines.append("Train it again: `peftkit train --config best.yaml --output_dir runs/best`.")
    return "\n".join(lines) + "\n"


def plot(path: Path, summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, rows = summary["metric"], [r for r in summary["trials"] if r["validation"] is not None]
    strategies = sorted({r["strategy"] for r in summary["trials"] if r["strategy"]})
    colors = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(strategies)}
    axes_x = (("trial", "trial", 1), ("train_runtime_s", "training time (s)", 1),
              ("peak_memory_bytes", "peak memory (GiB)", GIB))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), sharey=True)
    for ax, (key, label, scale) in zip(axes, axes_x, strict=True):
        for s in strategies:
            for pruned in (False, True):
                pts = [r for r in rows if r["strategy"] == s and (r["state"] == "pruned") == pruned
                       and r[key] is not None]
                if pts:
                    ax.scatter([r[key] / scale for r in pts], [r["validation"] for r in pts], s=46,
                               color=colors[s], facecolors="none" if pruned else colors[s],
                               label=f"{s}{' (pruned)' if pruned else ''}")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"validation {metric}")
    failed = summary["counts"].get("failed", 0)
    fig.suptitle(f"peftkit search: {summary['task']}, {summary['method']}, {len(summary['trials'])} trials"
                 + (f" ({failed} failed, not shown)" if failed else ""))
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)
