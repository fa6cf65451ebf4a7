"""How far to trust `peftkit plan`: predicted against measured peak memory and step time.

    python -m benchmarks.planner                       # every row, into benchmarks/results/planner_cpu/
    python -m benchmarks.planner --only 0 3 --out DIR  # some rows

Each row is one training configuration (model shape, strategy, micro-batch x sequence length, activation
checkpointing). The planner predicts it from the model's config.json alone; a fresh process then loads the model
as `peftkit train` does (the built-in SmolLM2-135M's weights; for the larger shapes random weights from the
catalogue, --random_init), prepares it with the strategy, builds the engine's optimizer and trains a few steps on
random tokens. Measured peak: on CPU the process's peak resident memory over its resident memory before the model
was built (the libraries loaded); on a GPU torch.cuda.max_memory_allocated (and reserved). Measured step time: the
mean of the timed steps after a warm-up step. The planner's step time comes from a calibration in the same
process at a quarter and a half of the row's length (never the row's own shape), as `peftkit plan --calibrate`
does. Beside each row: the weights-only figure (the model in its dtype), and accelerate's `estimate-memory`
training rule (4x that: weights, gradients and Adam's two states, activations left out), so that a reader sees
what the plan adds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

OUT = Path("benchmarks/results/planner_cpu")
SMOLLM = "builtin:SmolLM2-135M-Instruct"


@dataclass
class Row:
    model: str
    strategy: str
    batch: int
    length: int
    checkpointing: bool = False

    @property
    def label(self) -> str:
        name = self.model.removeprefix("builtin:").removeprefix("catalogue:")
        return (f"{name} {self.strategy} {self.batch}x{self.length}"
                + (" ckpt" if self.checkpointing else ""))


# Three sizes (135M, 0.5B, 1.2B), full / LoRA / QLoRA, 128 to 1024 tokens, with and without checkpointing; full
# fine-tuning of the 1.2B shape is left out (weights, gradients and AdamW in float32 are 19 GiB, above what a
# 24 GiB machine can measure beside its own use).
ROWS = [
    Row(SMOLLM, "lora", 8, 128),
    Row(SMOLLM, "full", 4, 256),
    Row(SMOLLM, "qlora", 4, 512),
    Row(SMOLLM, "lora", 2, 1024, True),
    Row(SMOLLM, "full", 4, 512, True),
    Row("catalogue:qwen2.5-0.5b", "lora", 2, 256),
    Row("catalogue:qwen2.5-0.5b", "full", 1, 256),
    Row("catalogue:qwen2.5-0.5b", "qlora", 2, 512, True),
    Row("catalogue:llama-3.2-1b", "lora", 1, 512),
    Row("catalogue:llama-3.2-1b", "qlora", 1, 1024, True),
]
TIMED_STEPS = 2
# Configurations that set the planner's CPU allocator overhead (--fit_overhead), none of them a row of the table.
CALIBRATION_ROWS = [
    Row(SMOLLM, "lora", 4, 384),
    Row(SMOLLM, "full", 2, 384),
    Row(SMOLLM, "lora", 8, 256, True),
]


def _objects(row: Row):
    from peftkit.arguments import parse_train_args

    argv = ["--model_name_or_path", row.model, "--per_device_train_batch_size", str(row.batch),
            "--max_seq_length", str(row.length)]
    if row.checkpointing:
        argv.append("--gradient_checkpointing")
    if row.model.startswith("catalogue:"):
        argv.append("--random_init")
    return parse_train_args(argv, row.strategy, "benchmark", "causal_lm")


def predict(row: Row) -> dict[str, Any]:
    """The plan of ``row`` (no weights loaded) and how long planning took."""
    from peftkit import planner, preflight

    model_args, _, train_args, strategy, task = _objects(row)
    start = time.perf_counter()
    setup = planner.Setup(micro_batch=row.batch, length=row.length, gradient_checkpointing=row.checkpointing,
                          device=_device(), optimizer=train_args.optimizer)
    plan = preflight.plan_candidate(task, row.strategy, strategy, model_args, setup)
    return plan.as_dict() | {"plan_seconds": round(time.perf_counter() - start, 2)}


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def measure(row: Row) -> dict[str, Any]:
    """Train ``row`` for real in this (fresh) process: peak memory over the loaded baseline, seconds per step,
    then the calibration steps at a quarter and a half of the length."""
    import torch

    from peftkit import planner, preflight
    from peftkit.engine import build_optimizer
    from peftkit.memory import peak_memory_bytes, resident_bytes
    from peftkit.modeling import enable_activation_checkpointing, load_model

    model_args, _, train_args, strategy, task = _objects(row)
    device = torch.device(_device())
    baseline = resident_bytes() if device.type == "cpu" else 0
    torch.manual_seed(0)
    config = preflight.model_config(task, model_args)
    model, head_names = load_model(task, strategy, model_args, None)
    model.config.use_cache = False
    if row.checkpointing:
        enable_activation_checkpointing(model)
    model = strategy.prepare(model, task, head_names).to(device)
    loaded = (resident_bytes() if device.type == "cpu" else torch.cuda.memory_allocated()) - baseline
    optimizer = build_optimizer(model, train_args, 1e-4)

    def batch(length: int):
        return preflight.real_batch(task.example_batch(row.batch, length, config), config, device, True)

    load_peak = peak_memory_bytes(device) - baseline
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:  # training's own peak: Linux resets the process's peak resident memory to its current one
        Path("/proc/self/clear_refs").write_text("5")
    seconds = planner.time_steps(model, batch(row.length), optimizer, TIMED_STEPS)
    peak = (peak_memory_bytes(device) if device.type == "cuda" else high_water_mark()) - baseline
    reserved = int(torch.cuda.max_memory_reserved()) if device.type == "cuda" else None
    lengths = sorted({max(8, row.length // 4), max(16, row.length // 2)})
    calibration = [planner.time_steps(model, batch(n), optimizer, TIMED_STEPS) for n in lengths]
    return {"peak": peak, "reserved": reserved, "loaded": loaded, "load_peak": load_peak, "step_seconds": seconds,
            "calibration_lengths": lengths, "calibration_seconds": calibration}


def high_water_mark() -> int:
    """The process's peak resident memory since the last reset (VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def predicted_time(row: Row, measured: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """The planner's step time for the row from the calibration steps (FLOPs of each length on the meta
    device, a line through the calibration's (FLOPs, seconds))."""
    from peftkit import planner, preflight

    model_args, _, train_args, strategy, task = _objects(row)
    flops = {}
    for n in [*measured["calibration_lengths"], row.length]:
        setup = planner.Setup(micro_batch=row.batch, length=n, gradient_checkpointing=row.checkpointing,
                              device=_device(), optimizer=train_args.optimizer)
        flops[n] = preflight.plan_candidate(task, row.strategy, strategy, model_args, setup).flops_per_step
    fit = planner.fit_step_time([(flops[n], s) for n, s in zip(measured["calibration_lengths"],
                                                                measured["calibration_seconds"], strict=True)])
    return planner.step_seconds(flops[row.length], fit), {"fixed_seconds": fit[0], "flops_per_second": fit[1],
                                                           "flops": flops}


def run_row(index: int, row: Row, log: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"row": index, "label": row.label, **asdict(row)}
    code = [sys.executable, "-m", "benchmarks.planner", "--measure", json.dumps(asdict(row))]
    with log.open("w") as fh:
        measured = subprocess.run(code, stdout=subprocess.PIPE, stderr=fh, text=True)
    if measured.returncode != 0:
        return out | {"error": f"measurement failed (exit {measured.returncode}); see {log.name}"}
    out["measured"] = json.loads(measured.stdout.strip().splitlines()[-1])
    predicted = subprocess.run([sys.executable, "-m", "benchmarks.planner", "--predict", json.dumps(asdict(row))],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=True)
    out["plan"] = json.loads(predicted.stdout.strip().splitlines()[-1])
    seconds, fit = predicted_time(row, out["measured"])
    out["plan"]["step_seconds"], out["plan"]["calibration"] = seconds, fit
    plan, meas = out["plan"], out["measured"]
    out["memory_ratio"] = plan["peak"] / meas["peak"]
    out["time_ratio"] = seconds / meas["step_seconds"]
    out["weights_only"] = plan["weights_only"]
    out["accelerate_training_rule"] = 4 * plan["weights_only"]
    return out


def fit_overhead(log_dir: Path) -> dict[str, Any]:
    """The share of the per-step working memory (activations and temporaries) that a CPU run holds beyond its
    live tensors, from CALIBRATION_ROWS: for each, (measured peak - the plan's tensors - the fixed part - the
    long-lived share) / working memory; the median is what peftkit.planner.CPU_OVERHEAD_FRACTION should be."""
    from peftkit import planner

    shares = []
    for index, row in enumerate(CALIBRATION_ROWS):
        out = run_row(index, row, log_dir / f"calibration{index}.log")
        if "error" in out:
            raise SystemExit(f"calibration row {row.label}: {out['error']}")
        p = out["plan"]
        working = p["activations"] + p["temporaries"]
        tensors = p["peak"] - p["overhead"]
        extra = (out["measured"]["peak"] - tensors - planner.CPU_OVERHEAD_BYTES
                 - planner.CPU_LONG_LIVED_FRACTION * (p["gradients"] + p["optimizer"]))
        shares.append({"row": row.label, "working": working, "measured": out["measured"]["peak"],
                       "share": extra / working})
    ordered = sorted(s["share"] for s in shares)
    return {"rows": shares, "median_share": ordered[len(ordered) // 2],
            "in_use": planner.CPU_OVERHEAD_FRACTION}


def table(data: dict[str, Any]) -> list[str]:
    """The results as Markdown: predicted and measured memory (MiB) and step time (s), and their ratios."""
    lines = ["| configuration | trainable | predicted peak | measured peak | predicted / measured | weights only | "
             "4x weights (accelerate) | predicted step (s) | measured step (s) | predicted / measured |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    mib = 2**20
    for r in data["planner_rows"]:
        if "error" in r:
            lines.append(f"| {r['label']} | {r['error']} | | | | | | | | |")
            continue
        p, m = r["plan"], r["measured"]
        miss_m = "" if abs(r["memory_ratio"] - 1) <= 0.15 else " (miss)"
        miss_t = "" if abs(r["time_ratio"] - 1) <= 0.25 else " (miss)"
        lines.append(f"| {r['label']} | {p['trainable']:,} | {p['peak'] / mib:,.0f} | {m['peak'] / mib:,.0f} | "
                     f"{r['memory_ratio']:.2f}{miss_m} | {r['weights_only'] / mib:,.0f} | "
                     f"{r['accelerate_training_rule'] / mib:,.0f} | {p['step_seconds']:.2f} | "
                     f"{m['step_seconds']:.2f} | {r['time_ratio']:.2f}{miss_t} |")
    ok = [r for r in data["planner_rows"] if "error" not in r]
    if ok:
        mem = [abs(r["memory_ratio"] - 1) for r in ok]
        tim = [abs(r["time_ratio"] - 1) for r in ok]
        lines += ["", f"Memory: within {100 * max(mem):.0f}% on every row (mean absolute error "
                  f"{100 * sum(mem) / len(mem):.1f}%). Step time after calibration: within {100 * max(tim):.0f}% "
                  f"(mean {100 * sum(tim) / len(tim):.1f}%). Planning took "
                  f"{max(r['plan']['plan_seconds'] for r in ok):.1f} s at most per row."]
    return lines


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in data["planner_rows"] if "error" not in r]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8))
    gib = 2**30
    for ax, key, scale, unit, band in ((left, "peak", gib, "GiB", 0.15), (right, "step_seconds", 1, "s", 0.25)):
        measured = [r["measured"][key] / scale for r in rows]
        predicted = [r["plan"][key] / scale for r in rows]
        top = max(measured + predicted) * 1.1
        ax.plot([0, top], [0, top], color="gray", linestyle="--", label="predicted = measured")
        ax.fill_between([0, top], [0, top * (1 - band)], [0, top * (1 + band)], color="gray", alpha=0.15,
                        label=f"within {band:.0%}")
        if key == "peak":
            ax.scatter(measured, [r["weights_only"] / gib for r in rows], marker="x", color="tab:red",
                       label="weights only")
        ax.scatter(measured, predicted, color="tab:blue", label="peftkit plan")
        for r, x, y in zip(rows, measured, predicted, strict=True):
            ax.annotate(str(r["row"]), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.set_xlabel(f"measured ({unit})")
        ax.set_ylabel(f"predicted ({unit})")
        ax.set_title("peak memory per process" if key == "peak" else "seconds per optimizer step", fontsize=10)
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.planner", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--only", type=int, nargs="*", default=None, help="row numbers (0-based) to run")
    parser.add_argument("--fit_overhead", action="store_true",
                        help="measure the calibration configurations and print the CPU overhead share they give")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--predict", default=None, help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    if ns.measure or ns.predict:
        from peftkit.commands.common import setup_logging
        from peftkit.console import quiet_known_noise

        quiet_known_noise()
        setup_logging(False)
        row = Row(**json.loads(ns.measure or ns.predict))
        print(json.dumps(measure(row) if ns.measure else predict(row)))
        return 0
    from benchmarks.suite import hardware, stamp
    from peftkit.runner import versions

    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    if ns.fit_overhead:
        fit = fit_overhead(out)
        (out / "overhead_fit.json").write_text(json.dumps(fit, indent=2) + "\n")
        print(json.dumps(fit, indent=2))
        return 0
    rows = []
    for index, row in enumerate(ROWS):
        if ns.only is not None and index not in ns.only:
            continue
        print(f"[{index}] {row.label} ...", flush=True)
        start = time.perf_counter()
        result = run_row(index, row, out / f"row{index}.log")
        rows.append(result)
        if "error" in result:
            print(f"    {result['error']}", flush=True)
        else:
            print(f"    memory {result['memory_ratio']:.2f}x, time {result['time_ratio']:.2f}x of measured "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    fitted = out / "overhead_fit.json"
    data = {"planner_rows": rows, "overhead_fit": json.loads(fitted.read_text()) if fitted.is_file() else None,
            **stamp(), "hardware": hardware(), "versions": versions(),
            "command": " ".join(["python -m benchmarks.planner", *(argv if argv is not None else sys.argv[1:])])}
    (out / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / "results.md").write_text("# Planner: predicted against measured\n\n" + "\n".join(table(data)) + "\n")
    plot(data, out / "planner.png")
    print("\n".join(table(data)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
