"""The trial's side of `peftkit search`: report each validation evaluation to the study and ask whether to stop.

A trial is an ordinary ``peftkit train`` process. The search tells it, through one environment variable, which
study and trial it belongs to; nothing else in a run changes, and a run started by hand never imports Optuna.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable

logger = logging.getLogger(__name__)
ENV = "PEFTKIT_SEARCH_TRIAL"  # JSON: {"journal", "study", "trial_id", "pruner"}
STUDY_NAME = "peftkit"


def make_pruner(name: str):
    """Optuna pruner ``name``: median (stop a trial whose metric at an evaluation is worse than the median of the
    finished trials' at the same step, once 2 have finished), hyperband, or none."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def open_storage(journal: str):
    """The study's journal file as Optuna storage, safe for the search and its trial processes at once."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    # The open-lock works on every filesystem, where the default symlink lock needs symlinks.
    return optuna.storages.JournalStorage(JournalFileBackend(journal, lock_obj=JournalFileOpenLock(journal)))


def pruning_hook(metric: str) -> Callable[[int, dict[str, float]], bool] | None:
    """``hook(step, metrics) -> stop?`` for a run started by `peftkit search` (None otherwise): reports
    ``metrics[metric]`` at ``step`` to the trial and returns the pruner's verdict. Opens the study on first use, so
    that only the process that asks (the main one) touches it."""
    spec = os.environ.get(ENV)
    if not spec:
        return None
    settings = json.loads(spec)
    state: dict = {}

    def hook(step: int, metrics: dict[str, float]) -> bool:
        import optuna

        if "trial" not in state:
            study = optuna.load_study(study_name=settings.get("study", STUDY_NAME),
                                      storage=open_storage(settings["journal"]),
                                      pruner=make_pruner(settings.get("pruner", "median")))
            state["trial"] = optuna.Trial(study, settings["trial_id"])
        trial = state["trial"]
        trial.report(float(metrics[metric]), step)
        return trial.should_prune()

    return hook
