"""A run's progress, as the engine keeps it and a checkpoint saves it, and the best evaluation's weights.

``TrainState`` is the one schema of ``trainer_state.json``: the engine updates it step by step, the
checkpoint writes and reads it. ``BestWeights`` is the one owner of ``best_trainable.safetensors``, the
trainable weights of the best evaluation so far, which the engine writes, a checkpoint carries, a resumed
run puts back, and the end of training loads and removes.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from peftkit.layout import BEST_FILE


@dataclass
class TrainState:
    """Where training stands. Every field but those marked ``saved=False`` goes into a checkpoint."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # epochs completed
    batches_in_epoch: int = 0  # micro-batches consumed in the current epoch
    best_step: int | None = None  # the step whose evaluation's weights are kept so far (selection.py)
    bad_evals: int = 0  # evaluations since the selection metric last improved (early stopping)
    samples: int = 0  # training examples seen, all processes
    tokens: int = 0  # real (non-padding) training tokens seen, all processes
    positions: int = 0  # token positions computed for them, padding included (--group_by_length cuts these)
    history: list[dict] = field(default_factory=list)  # one row per evaluation
    train_history: list[dict] = field(default_factory=list)  # one row per logged step
    skipped_steps: int = 0  # updates dropped for a non-finite loss (--on_nonfinite skip)
    train_runtime_s: float = 0.0  # training time before this process started (resumed runs)
    stop: bool = field(default=False, metadata={"saved": False})  # early stopping decided
    resumed_from: int | None = field(default=None, metadata={"saved": False})

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("saved", True)}

    @classmethod
    def from_json(cls, saved: dict[str, Any], metric: str | None = None) -> TrainState:
        """The state saved in a checkpoint. ``metric``: the run's selection metric, which locates the kept step in
        a checkpoint written before 2026-12-06 (it saved the best value, not its step)."""
        names = {f.name for f in dataclasses.fields(cls) if f.metadata.get("saved", True)}
        state = cls(**{k: v for k, v in saved.items() if k in names}, resumed_from=saved["step"])
        if "best_step" not in saved and saved.get("best") is not None and metric:
            # the strict "better than" of then kept the first evaluation that reached the best value
            state.best_step = next((row["step"] for row in state.history if row.get(metric) == saved["best"]), None)
        return state


def atomic_save_file(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write safetensors to a temporary name, then rename: readers see the old file or the new, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(tensors, str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass
class BestWeights:
    """``output_dir/best_trainable.safetensors`` (written by the main process only)."""

    output_dir: Path

    @property
    def path(self) -> Path:
        return Path(self.output_dir) / BEST_FILE

    def save(self, tensors: dict[str, torch.Tensor]) -> None:
        atomic_save_file(tensors, self.path)

    def load(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.path))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def copy_into(self, directory: Path) -> None:
        """Into a checkpoint being written: a hard link where the disk allows (the file is only ever replaced
        by rename, so the link keeps this version)."""
        if self.path.is_file():
            try:
                os.link(self.path, directory / BEST_FILE)
            except OSError:
                shutil.copy2(self.path, directory / BEST_FILE)

    @staticmethod
    def read_from(directory: Path) -> dict[str, torch.Tensor] | None:
        path = Path(directory) / BEST_FILE
        return load_file(str(path)) if path.is_file() else None

    def restore(self, tensors: dict[str, torch.Tensor] | None) -> None:
        """As it was at a checkpoint: what it held then, or nothing."""
        if tensors is not None:
            self.save(tensors)
        else:
            self.remove()
