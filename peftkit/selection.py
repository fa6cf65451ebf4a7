"""Which evaluation's weights a run keeps: the best selection metric, ties broken by validation loss, then by step.

Small validation sets make ties the normal case: 30 examples allow only 31 accuracies, and a run that reaches
1.0 after its first epoch keeps reaching it while its validation loss still falls (0.649 -> 0.101 -> 0.065 on a
user's 300 support tickets). A strict "better than" kept the first, barely confident epoch. So an evaluation
that ties the best one on the metric is kept when its validation loss is lower, and, with the loss tied too (or
absent, or the metric itself), when it is later: more training at equal validation results.
"""

from __future__ import annotations

from typing import Any

LOSS = "loss"
# Relative difference under which two metric values count as equal: they are fractions of the same
# validation examples, summed in another order on another number of processes.
TIE_TOLERANCE = 1e-9


def _lower_is_better(metrics: dict[str, str], name: str) -> bool:
    return metrics.get(name, "max") == "min"


def _tied(a: float, b: float) -> bool:
    return abs(a - b) <= TIE_TOLERANCE * max(1.0, abs(a), abs(b))


def compare(task_metrics: dict[str, str], name: str, current: dict[str, float], best: dict[str, float] | None
            ) -> tuple[bool, bool]:
    """``(keep, improved)`` for evaluation ``current`` against the kept one, ``best`` (its metrics; None before
    the first). ``keep``: these weights replace the kept ones. ``improved``: they are better, not merely later (a
    full tie does not reset early stopping's patience). ``task_metrics``: the task's ``{metric: "max"|"min"}``."""
    if best is None:
        return True, True
    value, kept = current[name], best[name]
    if not _tied(value, kept):
        better = value < kept if _lower_is_better(task_metrics, name) else value > kept
        return better, better
    if name != LOSS and LOSS in current and LOSS in best and not _tied(current[LOSS], best[LOSS]):
        lower = current[LOSS] < best[LOSS]
        return lower, lower
    return True, False  # tied throughout: the later evaluation, trained longer


def _steps_text(steps: list[int], shown: int = 6) -> str:
    """``steps 2, 4, 6`` or, for many, ``100 evaluations (steps 2, 4, 6, ..., 198, 200)``: one readable line."""
    if len(steps) <= shown:
        return "steps " + ", ".join(map(str, steps))
    return f"{len(steps)} evaluations (steps {', '.join(map(str, steps[:3]))}, ..., " \
           f"{', '.join(map(str, steps[-2:]))})"


def describe(history: list[dict[str, Any]], name: str, step: int) -> dict[str, Any]:
    """What results.json and the summary say of the kept evaluation (step ``step`` of ``history``): its step,
    epoch, metric value and why it was kept."""
    kept = next(row for row in history if row["step"] == step)
    ties = [row["step"] for row in history if row["step"] != step and _tied(row[name], kept[name])]
    value = kept[name]
    if not ties:
        reason = f"the best validation {name} ({value:.4f})" if len(history) > 1 else "the only evaluation"
    else:
        at = _steps_text(sorted([*ties, step]))
        loss_broke = name != LOSS and LOSS in kept and any(
            not _tied(row.get(LOSS, float("nan")), kept[LOSS]) for row in history if row["step"] in ties)
        reason = (f"validation {name} {value:.4f} tied at {at}; "
                  + (f"the lowest validation loss ({kept[LOSS]:.4f}) broke the tie" if loss_broke
                     else "the latest of them was kept"))
    return {"step": step, "epoch": kept.get("epoch"), "metric": name, "value": value, "tied_steps": sorted(ties),
            "reason": reason}
