"""The devices a run uses: the Accelerator (precision, trackers, several CPU processes), and the CPU's threads."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration

from peftkit.config import TrainingArguments
from peftkit.errors import PeftkitError, check

logger = logging.getLogger(__name__)


def make_accelerator(args: TrainingArguments, output_dir: Path) -> Accelerator:
    log_with = args.report_to
    if log_with == "auto":
        try:
            import tensorboard  # noqa: F401

            log_with = "tensorboard"
        except ImportError:
            log_with = "none"
    # Several processes on a machine without CUDA (torchrun, or `accelerate launch` with a MULTI_GPU +
    # use_cpu config) must be told they are CPU processes, or each runs alone as if it were the only one.
    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    mixed_precision = resolve_mixed_precision(args.mixed_precision)
    try:
        acc = Accelerator(
            cpu=multi_cpu,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            mixed_precision=mixed_precision,
            log_with=None if log_with == "none" else log_with,
            # Trackers write to logging_dir's parent / its name (see init_trackers below).
            project_config=ProjectConfiguration(project_dir=str(output_dir),
                                                logging_dir=str(logging_dir(args, output_dir).parent)),
        )
    except ValueError as exc:  # e.g. fp8 without its kernels, or a precision this device lacks
        raise PeftkitError(f"Accelerate cannot set up this run: {str(exc).splitlines()[0][:300]} Check "
                           "--mixed_precision (no, fp16, bf16, fp8, auto) and your `accelerate config`.") from exc
    if acc.device.type == "cpu" and acc.mixed_precision == "bf16":
        warn_slow_cpu_bf16(cpu_bf16_instructions())
    return acc


def cpu_bf16_instructions() -> str | None:
    """How this CPU computes bf16: "amx" (matrix tiles), "avx512_bf16" (vector dot products), or None (PyTorch
    emulates it)."""
    try:
        if torch.cpu._is_amx_tile_supported():
            return "amx"
        return "avx512_bf16" if torch.cpu._is_avx512_bf16_supported() else None
    except (AttributeError, RuntimeError):
        return None


def warn_slow_cpu_bf16(instructions: str | None) -> None:
    """bf16 autocast on a CPU is slower than float32 unless the CPU has AMX (measured: README, bf16 on a CPU)."""
    if instructions is None:
        logger.warning("bf16 on a CPU without bf16 instructions (avx512_bf16 or AMX): PyTorch emulates it, and one "
                       "MiniLM training step took about 20x as long as in float32 on such a CPU. Use "
                       "--mixed_precision no (or auto, which keeps float32 on a CPU).")
    elif instructions == "avx512_bf16":
        logger.warning("bf16 on a CPU with avx512_bf16 but no AMX: measured slower than float32 here (a MiniLM "
                       "training step 1.5x as long for full fine-tuning, 2.2x for LoRA: autocast re-casts every "
                       "weight each step). Use --mixed_precision no unless you need bf16's memory savings.")


def resolve_mixed_precision(requested: str | None) -> str | None:
    """``auto``: bf16 on a CUDA GPU that has it, fp16 on an older CUDA GPU, float32 on a CPU (bf16 autocast was
    measured slower than float32 on CPUs with avx512_bf16 and emulated on those without; CPUs with AMX are not
    measured yet, so bf16 there stays a choice: --mixed_precision bf16). Anything else is passed to Accelerate
    as given (None: what `accelerate config` or `accelerate launch --mixed_precision` chose)."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true"):
        chosen = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    else:
        chosen = "no"
    logger.info("--mixed_precision auto: %s on this machine.", chosen)
    return chosen


def logging_dir(args: TrainingArguments, output_dir: Path) -> Path:
    return Path(args.logging_dir) if args.logging_dir else output_dir / "logs"


def use_idle_cores(acc: Accelerator) -> None:
    """`accelerate launch` sets OMP_NUM_THREADS=1 in its child unless given --num_cpu_threads_per_process: right
    for N processes sharing a machine, but a lone CPU process then leaves every other core idle. Give it them
    back (PEFTKIT_CPU_THREADS sets the number; an OMP_NUM_THREADS other than 1 is respected)."""
    if acc.device.type != "cpu" or acc.num_processes != 1:
        return
    wanted = os.environ.get("PEFTKIT_CPU_THREADS") or None
    launched_by_accelerate = "ACCELERATE_DYNAMO_BACKEND" in os.environ and os.environ.get("OMP_NUM_THREADS") == "1"
    if wanted is None and not launched_by_accelerate:
        return
    check(wanted is None or (wanted.isdigit() and int(wanted) > 0),
          f"PEFTKIT_CPU_THREADS must be a positive integer, got {wanted!r}.")
    threads = int(wanted) if wanted else len(os.sched_getaffinity(0))
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
        logger.info("Using %d CPU threads (accelerate launch set OMP_NUM_THREADS=1; set PEFTKIT_CPU_THREADS to "
                    "choose).", threads)
