"""The strategy contract: how a model is adapted. A strategy plug-in writes :meth:`Strategy.prepare` and sets
``default_learning_rate``; everything else has a default that does nothing.

A strategy is a dataclass whose fields are its own flags (built-ins keep them in light classes in
``strategies/flags.py`` so that ``--help`` loads no torch). Variants are presets of one class
(``register("qlora", LoRA, quantization="nf4")``). This module imports no torch.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from torch import nn


class Strategy(ABC):
    """How the model is adapted: what trains, what is wrapped, what is saved."""

    default_learning_rate: ClassVar[float]
    """The rate a run gets without --learning_rate (a task may know better for some strategies:
    ``TaskDefaults.learning_rates``)."""
    lr_reference_batch: ClassVar[int | None] = None
    """The global batch ``default_learning_rate`` was chosen at: a run of a task whose data wants it
    (``TaskDefaults.lr_follows_batch``), with a smaller derived batch and no --learning_rate, gets the rate x
    sqrt(batch / reference). None: the rate does not follow the batch."""
    contrastive_learning_rate: ClassVar[float | None] = None
    """The rate of the contrastive stage (--contrastive) without --contrastive_learning_rate; None:
    ``default_learning_rate``."""
    cache_features: bool = False
    """True: nothing below the head trains, so the frozen backbone's features are computed once and cached
    (head's --cache_features)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not inspect.isabstract(cls) and not isinstance(getattr(cls, "default_learning_rate", None), float):
            raise TypeError(f"Strategy {cls.__name__} must set default_learning_rate (a float class attribute).")

    @abstractmethod
    def prepare(self, model: nn.Module, task: Any, head_names: list[str]) -> nn.Module:
        """Freeze what does not train, or wrap the model (peft); return the model to train. ``head_names``: the
        task's new modules, which train fully."""

    def load_kwargs(self, head_names: list[str]) -> dict[str, Any]:
        """Extra ``from_pretrained`` arguments, e.g. a quantization config."""
        return {}

    def lr_scales(self, model: nn.Module) -> dict[str, float]:
        """Per-parameter learning-rate factors, {parameter name: factor} (LoRA+, layer-wise decay)."""
        return {}

    def unfreeze_schedule(self, model: nn.Module) -> dict[str, float]:
        """When each parameter starts to train, {parameter name: fraction of the run} (gradual unfreezing)."""
        return {}

    def finalize_saved(self, output_dir: Path) -> None:
        """Rewrite what was saved, on the main process (PiSSA: an adapter for the original base)."""
        return None

    def plan_model(self, model: nn.Module, task: Any, head_names: list[str]) -> nn.Module:
        """:meth:`prepare` as the planner needs it, on a model on the meta device (no weights, no quantization):
        the same trainable parameters and the same modules in the forward pass. Default: ``prepare``."""
        return self.prepare(model, task, head_names)

    def weight_bits(self, model: nn.Module, head_names: list[str]) -> dict[str, float]:
        """{module name: bits per stored weight} of the layers this strategy quantizes (QLoRA's 4-bit linears,
        with their scales), for the planner; {}: every weight stays in its dtype."""
        return {}
